"""Issue 11, part 3: a fleet of gates on one broker (docs/fleet.md).

Unit tests pin the signed messages and the versioning with the link left out; the fleet test
runs one authority and three edges as processes of gate's CLI on a real mosquitto with the
ACL file of docs/fleet.md and a password per node.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gate.config import parse_config
from gate.fleet import replica
from gate.fleet.authority import Authority, event_from
from gate.fleet.edge import Edge
from gate.fleet.messages import Refused, Signer, Topics, Verifier, ensure_authority_key
from gate.storage.database import GateDB, Template
from gate.storage.events import AccessEvent, utc_iso
from tests.conftest import ROOT, Mosquitto, _mosquitto_binary

PEOPLE = ROOT / "gate" / "samples" / "people"
EDGES = ("e1", "e2", "e3")


def template(seed: int, crop: bytes | None = None) -> Template:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return Template(vector, "dlib", "1", "space", f"{seed:064x}", f"{seed}.jpg", 120.0, 40.0, crop)


def dump(path: Path) -> dict[str, list]:
    """What the fleet replicates, read from a database file (without template ids or crops)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    hidden = {"id", "face_crop", "crop_face"}
    columns = [r[1] for r in con.execute("pragma table_info(templates)") if r[1] not in hidden]
    try:
        return {
            "people": con.execute("select * from people order by id").fetchall(),
            "templates": con.execute(
                f"select {', '.join(columns)} from templates order by person_id, source_sha256"
            ).fetchall(),
            "groups": con.execute("select * from groups order by id").fetchall(),
            "memberships": con.execute("select * from memberships order by 1, 2").fetchall(),
            "rules": con.execute("select * from rules order by id").fetchall(),
            "doors": con.execute("select * from doors order by name").fetchall(),
        }
    finally:
        con.close()


class Wire:
    """The MQTT link's part the fleet uses, keeping what is published (unit tests only)."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []

    def subscribe(self, topic, handler, raw=False) -> None:
        pass

    def on_connected(self, callback) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False) -> bool:
        self.published.append((topic, payload, retain))
        return True

    def retained(self) -> dict[str, bytes]:
        return {topic: payload for topic, payload, retain in self.published if retain}


@dataclass
class Served:
    """An authority as the unit tests drive it: database, public key, what it published."""

    db: GateDB
    public: str
    wire: Wire
    authority: Authority

    def step(self) -> None:
        self.authority.step(self.db)


@pytest.fixture
def served(tmp_path):
    """An authority's database and key (made here), and its :class:`Authority` on a wire."""
    public, made = ensure_authority_key(tmp_path / "keys")
    assert made and ensure_authority_key(tmp_path / "keys") == (public, False)
    assert (tmp_path / "keys" / "fleet-authority.key").stat().st_mode & 0o777 == 0o600
    db, wire = GateDB(tmp_path / "authority.db"), Wire()
    authority = Authority(wire, Signer.from_folder(tmp_path / "keys"), prefix="gate")
    authority.mark_everything(db)
    yield Served(db, public, wire, authority)
    db.close()


def an_edge(tmp_path: Path, public: str, name: str = "e1") -> tuple[Edge, GateDB]:
    config = parse_config({"fleet": {"role": "edge", "node": name, "authority_key": public}})
    db = GateDB(tmp_path / f"{name}.db")
    return Edge(config, db.path, Wire()), db


def deliver(edge: Edge, db: GateDB, messages) -> None:
    for topic, payload in messages:
        edge.inbox.put((topic, payload))
    edge.step(db)


def test_a_signed_message_opens_only_with_the_authoritys_key_and_unchanged():
    signer = Signer(os.urandom(32).hex())
    sealed = signer.seal({"type": "head", "version": 3, "digest": "d", "objects": 1})
    mine = Verifier(signer.public)
    assert mine.open(sealed, "head")["version"] == 3
    with pytest.raises(Refused, match="bad signature: not signed by the authority's key"):
        Verifier(Signer(os.urandom(32).hex()).public).open(sealed, "head")
    with pytest.raises(Refused, match="a 'head' message where a 'object' belongs"):
        mine.open(sealed, "object")
    tampered = sealed.replace(b'"version":3', b'"version":9')
    for payload in (tampered, b'{"type":"head","version":9}', sealed[:-3] + b'"}'):
        with pytest.raises(Refused):
            mine.open(payload, "head")


def test_each_change_gets_the_next_version_and_a_removal_a_signed_tombstone(served):
    db = served.db
    db.enroll("ada", [template(1, crop=b"jpeg")])
    db.add_group("staff")
    served.step()
    versions = dict(db.db.execute("select kind || '/' || key, version from fleet_objects"))
    assert versions == {"person/1": 1, "group/1": 2}
    db.set_person("ada", enabled=True)  # no change: no version
    db.rename_person("ada", "ada lovelace")
    served.step()
    db.remove_person("ada lovelace")
    served.step()
    opened = Verifier(served.public).open
    retained = served.wire.retained()
    tombstone = opened(retained["gate/fleet/person/1"], "object")
    assert (tombstone["version"], tombstone["data"]) == (4, None)
    head = opened(retained["gate/fleet/head"], "head")
    assert (head["version"], head["objects"]) == (4, 1)
    feed = [opened(p, "object") for t, p, _ in served.wire.published if t.endswith("/changes")]
    assert [m["version"] for m in feed] == [1, 2, 3, 4]
    assert feed[2]["data"]["name"] == "ada lovelace"
    assert set(feed[0]["data"]["templates"][0]) & {"id", "face_crop", "crop_face"} == set()


def test_an_edge_converges_from_retained_messages_in_any_order(served, tmp_path):
    db = served.db
    db.enroll("ada", [template(1), template(2)])
    db.enroll("bob", [template(3)])
    db.add_group("staff")
    db.join("staff", ["ada", "bob"])
    db.add_door("front", source="rtsp://cam/front", direction="in", area="lobby")
    db.add_rule("staff", "front", 0b0011111, "08:00", "18:00")
    db.rename_person("bob", "ada2")
    db.rename_person("ada", "bob")  # a swap: bob's old name is taken on the edge for a while
    db.rename_person("ada2", "ada")
    served.step()
    edge, edge_db = an_edge(tmp_path, served.public)
    messages = list(served.wire.retained().items())
    random.Random(7).shuffle(messages)  # members before their group, the head first ...
    deliver(edge, edge_db, messages)
    assert edge.converged and edge.applied == replica.newest_version(db.db) == 5
    assert dump(edge_db.path) == dump(db.path)
    db.remove_group("staff")  # the group, its memberships and its rule go
    served.step()
    deliver(edge, edge_db, reversed(served.wire.retained().items()))  # tombstones last
    assert edge.converged and edge.applied == 9
    assert dump(edge_db.path) == dump(db.path)
    edge_db.close()


def test_an_old_version_replayed_never_rolls_an_edge_back(served, tmp_path):
    db = served.db
    db.enroll("ada", [template(1)])
    served.step()
    old = served.wire.retained()
    db.rename_person("ada", "ada lovelace")
    served.step()
    edge, edge_db = an_edge(tmp_path, served.public)
    deliver(edge, edge_db, served.wire.retained().items())
    deliver(edge, edge_db, old.items())  # the older person and the older head
    assert [p["name"] for p in edge_db.people()] == ["ada lovelace"]
    assert edge.head["version"] == 2 and edge.applied == 2
    assert edge_db.db["fleet_refusals"].count == 0  # old, but the authority's: ignored
    edge_db.close()


def test_a_forged_or_misplaced_change_is_refused_and_logged(served, tmp_path, caplog):
    db = served.db
    db.enroll("ada", [template(1)])
    served.step()
    edge, edge_db = an_edge(tmp_path, served.public)
    deliver(edge, edge_db, served.wire.retained().items())
    forger = Signer(os.urandom(32).hex())
    forged = forger.seal({"type": "object", "kind": "person", "key": "1", "version": 99,
                          "time": utc_iso(time.time()), "data": None})  # fmt: skip
    genuine = served.wire.retained()["gate/fleet/person/1"]
    deliver(edge, edge_db, [("gate/fleet/person/1", forged), ("gate/fleet/person/2", genuine)])
    assert [p["name"] for p in edge_db.people()] == ["ada"]
    reasons = [r["reason"] for r in edge_db.db["fleet_refusals"].rows_where(order_by="id")]
    assert reasons == [
        "bad signature: not signed by the authority's key",
        "signed for gate/fleet/person/1, not this topic",
    ]
    assert "refused a message on gate/fleet/person/1: bad signature" in caplog.text
    edge_db.close()


def test_the_collector_stores_each_event_once_in_its_chained_log(tmp_path):
    edge = GateDB(tmp_path / "edge.db")
    for decision in ("denied", "granted"):
        edge.add_event(AccessEvent(utc_iso(time.time()), "front", decision, "unknown"))
    edge.add_event(AccessEvent(utc_iso(time.time()), "front", "granted", "manual", delivered=True))
    waiting = edge.outbox(settled_before=utc_iso(time.time() - 3))
    assert [e.decision for _, e in waiting] == ["denied", "granted"]  # one unlock not settled
    collector = GateDB(tmp_path / "collector.db")
    assert collector.collect_events("e1", waiting) == 2
    assert collector.collect_events("e1", waiting) == 0  # sent again: stored once
    assert edge.acknowledge(u for u, _ in waiting) == 2 and edge.outbox_size() == 1
    assert {e.id: n for e, n in ((e, collector.event_nodes([e.id])[e.id])
            for e in collector.events())} == {1: "e1", 2: "e1"}  # fmt: skip
    assert [e.door for e in collector.events(node="e1")] == ["front", "front"]
    assert collector.events(node="") == []
    assert collector.verify_log().ok
    edge.close()
    collector.close()


CARD = "26bit:12:34567"


def test_an_edges_event_reaches_the_authority_with_its_credential(served, tmp_path):
    """The card an edge presented to its panel is stored, chained, by the collector too."""
    from click.testing import CliRunner

    from gate.cli import cli

    edge, edge_db = an_edge(tmp_path, served.public)
    edge_db.add_event(
        AccessEvent(utc_iso(time.time()), "front", "denied", "unknown", credential=CARD)
    )
    edge.step(edge_db)  # forwards it, on the edge's wire
    sent = [(t, p) for t, p, _ in edge.link.published if t == "gate/fleet/events/e1"]
    assert len(sent) == 1 and json.loads(sent[0][1])["event"]["credential"] == CARD
    served.authority.inbox.put(sent[0])
    served.step()
    [event] = served.db.events(node="e1")
    assert event.credential == CARD
    assert served.db.verify_log().ok
    (tmp_path / "gate.toml").write_text("")
    verified = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "gate.toml"), "--db", str(served.db.path), "log", "verify"]
    )
    assert verified.exit_code == 0 and "log intact" in verified.output, verified.output
    fields = json.loads(sent[0][1])["event"]
    assert event_from({**fields, "credential": None}).credential is None
    for bad in (34567, ["26bit", 12, 34567], {"card": CARD}, True):
        with pytest.raises(ValueError, match="bad credential"):
            event_from({**fields, "credential": bad})
    edge_db.close()


def test_an_edge_applying_people_out_of_order_passes_a_card_on(served, tmp_path):
    """Ada had the card, then Bob got it: Bob's new version may come before Ada's."""
    db = served.db
    db.enroll("ada", [template(1)])
    db.enroll("bob", [template(2)])
    db.set_person("ada", credential=CARD)
    served.step()
    opened = Verifier(served.public).open
    first = {k: opened(p, "object") for k, p in served.wire.retained().items() if "/person/" in k}
    db.set_person("ada", credential=None)
    db.set_person("bob", credential=CARD)
    served.step()
    then = {k: opened(p, "object") for k, p in served.wire.retained().items() if "/person/" in k}
    ada, bob = "gate/fleet/person/1", "gate/fleet/person/2"
    edge = GateDB(tmp_path / "edge.db")

    def apply(message) -> dict[str, str | None]:
        with edge.transaction():
            replica.apply(edge.db, "person", message["key"], message["data"])
        return {p["name"]: p["credential"] for p in edge.people()}

    assert apply(first[ada]) == {"ada": CARD}
    assert apply(first[bob]) == {"ada": CARD, "bob": None}
    assert apply(then[bob]) == {"ada": None, "bob": CARD}  # ada's card cleared for now
    assert apply(then[ada]) == {"ada": None, "bob": CARD}  # her own change: still none
    assert {p["name"]: p["credential"] for p in db.people()} == {"ada": None, "bob": CARD}
    # the card back to ada, bob a new one: ada's version first takes it from bob here
    db.set_person("bob", credential="26bit:1:2")
    db.set_person("ada", credential=CARD)
    served.step()
    back = {k: opened(p, "object") for k, p in served.wire.retained().items() if "/person/" in k}
    assert apply(back[ada]) == {"ada": CARD, "bob": None}
    assert apply(back[bob]) == {"ada": CARD, "bob": "26bit:1:2"}
    with pytest.raises(sqlite3.IntegrityError, match=r"people\.credential"):  # the index stays
        edge.db.execute("update people set credential = ? where name = 'bob'", [CARD])
    edge.close()


@pytest.mark.parametrize(
    ("config", "args", "expected"),
    [
        ("", ["fleet", "init"], 'set [fleet] role = "authority"'),
        ('[fleet]\nrole = "authority"\n', ["fleet", "serve"], "needs a broker every node"),
        ('[fleet]\nrole = "authority"\n', ["fleet", "sync"], "this command is for the edge"),
        ("", ["fleet", "status"], 'in no fleet ([fleet] role = "none")'),
    ],
)
def test_fleet_commands_refuse_the_wrong_role_or_no_shared_broker(tmp_path, config, args, expected):
    from click.testing import CliRunner

    from gate.cli import cli

    (tmp_path / "gate.toml").write_text(config)
    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "gate.toml"), "--db", str(tmp_path / "g.db"), *args]
    )
    assert result.exit_code == 1 and expected in result.output, result.output


def test_a_node_needs_a_usable_name_and_an_edge_the_authoritys_key():
    from gate.errors import ConfigError

    for fleet, expected in (
        ({"role": "edge"}, "an edge needs authority_key"),
        ({"node": "fleet"}, "would clash with the fleet's topics"),
        ({"node": "a/b"}, "fleet.node: String should match pattern"),
        ({"authority_key": "00ff"}, "fleet.authority_key: String should match pattern"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_config({"fleet": fleet})


# the fleet, as processes on a real broker ---------------------------------------------


def fleet_acl() -> str:
    """The ACL file of docs/fleet.md, as it stands there."""
    text = (ROOT / "docs" / "fleet.md").read_text()
    found = re.search(r"```conf\n(# gate fleet ACL\n.*?)```", text, re.S)
    assert found, "docs/fleet.md shows the fleet's ACL file"
    return found.group(1)


PASSWORDS = {"authority": "auth-s3cret", "rogue": "rogue-s3cret"} | {
    edge: f"{edge}-s3cret" for edge in EDGES
}


@pytest.fixture
def fleet_broker(tmp_path):
    """mosquitto with a password per node and docs/fleet.md's ACL, plus a ``rogue`` user who
    may write the fleet's topics (an ACL that slipped) and read everything."""
    binary, passwd_tool = _mosquitto_binary(), shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        if os.environ.get("GATE_REQUIRE_MOSQUITTO"):
            pytest.fail("mosquitto and mosquitto_passwd are required here")
        pytest.skip("mosquitto or mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    for user, password in PASSWORDS.items():
        create = [] if passwd.exists() else ["-c"]
        subprocess.run([passwd_tool, *create, "-b", str(passwd), user, password], check=True)
    acl = tmp_path / "acl"
    acl.write_text(fleet_acl() + "\nuser rogue\ntopic readwrite gate/fleet/#\ntopic read gate/#\n")
    settings = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    broker = Mosquitto(binary, tmp_path, settings).start()
    yield broker
    broker.stop()


def test_the_documented_acl_lets_an_edge_write_only_its_own_events_and_status(
    fleet_broker, subscribe
):
    import paho.mqtt.client as mqtt

    watcher = subscribe(fleet_broker.port, "gate/#", ("rogue", PASSWORDS["rogue"]))
    edge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    edge.username_pw_set("e1", PASSWORDS["e1"])
    edge.connect("127.0.0.1", fleet_broker.port)
    edge.loop_start()
    try:
        for topic in (
            "gate/fleet/person/1", "gate/fleet/head", "gate/fleet/acks/e1",
            "gate/fleet/events/e2", "gate/e2/front/command",
            "gate/fleet/events/e1", "gate/fleet/status/e1", "gate/e1/front/command",
        ):  # fmt: skip
            edge.publish(topic, b"x", qos=1).wait_for_publish(5)
        watcher.wait_for("gate/e1/front/command")
        time.sleep(0.3)
        seen = sorted({topic for topic, *_ in watcher.messages})
        assert seen == ["gate/e1/front/command", "gate/fleet/events/e1", "gate/fleet/status/e1"]
    finally:
        edge.loop_stop()
        edge.disconnect()


class Node:
    """One gate of the fleet: its folder, config, database, and the processes it runs."""

    def __init__(self, root: Path, name: str, port: int, fleet: dict):
        self.name, self.folder = name, root / name
        self.folder.mkdir()
        self.db = self.folder / "gate.db"
        user = "authority" if fleet["role"] == "authority" else name
        self.config = self.folder / "gate.toml"
        lines = [
            f'database = "{self.db}"',
            "[pipeline]",
            'actuators = ["log"]',
            "[mqtt]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f'username = "{user}"',
            f'password = "{PASSWORDS[user]}"',
            f'client_id = "{name}"',
            f'topic_prefix = "gate/{name}"',
            "[fleet]",
            f'node = "{name}"',
            *(f"{k} = {json.dumps(v)}" for k, v in fleet.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.processes: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "GATE_CONFIG": str(self.config), "GATE_DB": str(self.db)}

    def gate(self, *args: str, code: int | None = 0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gate", *args],
            capture_output=True, text=True, env=self.env(), timeout=120,
        )  # fmt: skip
        if code is not None:
            assert done.returncode == code, f"{self.name}: gate {args}: {done.stderr}"
        return done.stdout

    def start(self, *args: str) -> subprocess.Popen:
        log = (self.folder / f"{'-'.join(args[:2])}.log").open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "gate", "-v", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(),
        )  # fmt: skip
        self.processes.append(process)
        return process

    def log(self) -> str:
        return "".join(p.read_text() for p in self.folder.glob("*.log"))

    def state(self, name: str) -> str | None:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            row = con.execute("select value from fleet_state where name = ?", [name]).fetchone()
            return row[0] if row else None
        finally:
            con.close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def head_version(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("select coalesce(max(version), 0) from fleet_objects").fetchone()[0]
    finally:
        con.close()


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def converged(authority: Node, edges: list[Node]) -> bool:
    """Every edge holds exactly the authority's data, at the authority's head."""
    if head_version(authority.db) == 0 or not all(edge.db.exists() for edge in edges):
        return False
    expected = dump(authority.db)
    head = str(head_version(authority.db))
    return all(edge.state("applied") == head and dump(edge.db) == expected for edge in edges)


def events_by_uuid(path: Path, node: str | None = None) -> dict[str, tuple]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        where, params = ("node = ?", [node]) if node else ("node is null", [])
        return {
            row[0]: row[1:]
            for row in con.execute(
                f"select uuid, time, door, decision, reason, person_id, person from events "
                f"where {where}",
                params,
            )
        }
    finally:
        con.close()


@contextmanager
def opened(path: Path) -> Iterator[GateDB]:
    db = GateDB(path)
    try:
        yield db
    finally:
        db.close()


def add_events(node: Node, count: int, reason: str) -> None:
    """Denials logged at a node's door, as its loop would log them."""
    with opened(node.db) as db:
        for _ in range(count):
            db.add_event(AccessEvent(utc_iso(time.time()), f"door-{node.name}", "denied", reason))


def person_id(node: Node, name: str) -> int:
    with opened(node.db) as db:
        return db.person(name)["id"]


def test_a_fleet_of_three_edges_converges_and_collects_every_event_once(
    fleet_broker, tmp_path, subscribe
):
    """One authority, three edges (gate run), one broker with the ACL of docs/fleet.md.

    Enroll, rename and remove on the authority; unlock by hand on every edge; stop the broker
    for 6 s (not the issue's 30 s, to keep CI fast: the edges' reconnect backoff is the same,
    and their events wait in the outbox either way) while edges log and the authority
    changes; kill -9 an edge and make it miss ten changes; send a change signed by another key
    and replay an older genuine one. Then every edge holds exactly the authority's data and
    every event reached the collector once.
    """
    port = fleet_broker.port
    authority = Node(tmp_path, "hq", port, {"role": "authority"})
    public = authority.gate("fleet", "init").strip()
    edges = [Node(tmp_path, n, port, {"role": "edge", "authority_key": public}) for n in EDGES]
    try:
        for edge in edges:
            authority.gate("doors", "add", f"door-{edge.name}", "--source", f"/no/{edge.name}")
        authority.gate("groups", "add", "staff")
        authority.gate("rules", "add", "--group", "staff", "--door", "door-e1", "--days", "mon-fri")
        enrolling = authority.start("enroll", "--from-folder", str(PEOPLE))
        authority.start("fleet", "serve")
        for edge in edges:  # a new edge: its doors come with the first sync
            edge.gate("fleet", "sync", "--timeout", "60")
            edge.start("run", "--door", f"door-{edge.name}")
        assert enrolling.wait(timeout=120) == 0, authority.log()
        rogue = subscribe(port, "gate/fleet/person/+", ("rogue", PASSWORDS["rogue"]))
        wait_until(lambda: converged(authority, edges), 60, "the first convergence")
        obama = person_id(authority, "obama")
        topic = Topics("gate").object("person", str(obama))
        before_rename = rogue.wait_for(topic)[-1][0]

        authority.gate("people", "rename", "obama", "barack")
        authority.gate("groups", "join", "staff", "biden", "barack")
        with opened(authority.db) as db:
            db.enroll("carol", [template(1), template(2)])
        authority.gate("people", "remove", "biden", "--yes")
        for edge in edges:
            edge.gate("doors", "unlock", f"door-{edge.name}", "--reason", "parcel", code=1)
            add_events(edge, 3, "unknown")
        wait_until(lambda: converged(authority, edges), 30, "rename, join, enroll, remove")

        fleet_broker.stop()  # the link is down: edges log, the authority changes
        for edge in edges:
            add_events(edge, 2, "ambiguous")
        with opened(authority.db) as db:
            db.rename_person("carol", "caroline")
        time.sleep(6)
        fleet_broker.start()  # without persistence: every retained message is gone

        edges[0].processes[-1].send_signal(signal.SIGKILL)
        edges[0].processes[-1].wait(timeout=10)
        add_events(edges[0], 2, "unknown")  # logged, never sent, before it died
        with opened(authority.db) as db:  # ten changes it misses
            for i in range(7):
                db.enroll(f"visitor {i}", [template(10 + i)])
            db.set_person("barack", enabled=False)
            db.add_group("night")
            db.remove_person("visitor 0")
        time.sleep(2)
        edges[0].start("run", "--door", "door-e1")
        wait_until(lambda: converged(authority, edges), 60, "after the outage and kill -9")

        forged = Signer(os.urandom(32).hex()).seal({
            "type": "object", "kind": "person", "key": str(obama), "version": 10**6,
            "time": utc_iso(time.time()), "data": None,
        })  # fmt: skip
        for payload in (forged, before_rename):  # neither retained: the ACL slipped, not more
            rogue.client.publish(topic, payload, qos=1).wait_for_publish(5)
        for edge in edges:
            wait_until(lambda e=edge: "bad signature" in e.log(), 10, f"{edge.name} refuses")
        assert converged(authority, edges)  # barack is still there, and still barack

        head = head_version(authority.db)
        status = json.loads(authority.gate("fleet", "status", "--json"))
        assert [(n["node"], n["version"], n["lag"]) for n in status["nodes"]] == [
            (edge.name, head, 0) for edge in edges
        ]

        def all_collected() -> bool:
            return all(
                events_by_uuid(edge.db) == events_by_uuid(authority.db, edge.name) for edge in edges
            )

        wait_until(all_collected, 30, "every event collected")
        for edge in edges:
            sent = events_by_uuid(edge.db)
            assert len(sent) == (8 if edge is edges[0] else 6)
            logged = json.loads(authority.gate("log", "--node", edge.name, "--json"))
            assert len(logged) == len(sent) and {r["node"] for r in logged} == {edge.name}
            mine = json.loads(edge.gate("fleet", "status", "--json"))
            assert (mine["version"], mine["pending"]) == (head, 0)
            assert "bad signature" in mine["refused"][0]["reason"]
        assert "log intact" in authority.gate("log", "verify")
    finally:
        for node in (authority, *edges):
            node.stop()
