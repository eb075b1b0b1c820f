"""The access log's hash chain and retention: edits and deletions show, the log forgets on time."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.config import RetentionConfig
from gate.demo import sample_path
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso
from gate.storage.retention import Purged, keep_purging, purge

FACE = sample_path("people", "obama", "obama.jpg").read_bytes()  # a real JPEG of a face
OTHER_FACE = sample_path("people", "biden", "biden.jpg").read_bytes()
NOW = time.time()
DAY = 86400.0


def event(age_days: float = 0.0, person: str | None = None, **fields) -> AccessEvent:
    """A decision ``age_days`` old: granted to ``person``, else a stranger denied."""
    base = {
        "time": utc_iso(NOW - age_days * DAY),
        "door": "front",
        "decision": "granted" if person else "denied",
        "reason": "granted" if person else "unknown",
        "person_id": (1 if person == "ada" else 2) if person else None,
        "person": person,
        "distance": np.float32(0.41),
        "margin": float("inf"),
        "latency_ms": 61.25,
        "snapshot": FACE,
        "track": 3,
        "frames": 4,
        "threshold": 0.52,
        "quality": 41.5,
    }
    return AccessEvent(**{**base, **fields})


def tamper(path, sql: str, params=()) -> None:
    """Change the file the way anyone with the sqlite3 tool could."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, params)
    conn.close()


@pytest.fixture
def four(db):
    """A log of four events as gate writes them: a grant delivered, a stranger, a manual unlock."""
    granted = db.add_event(event(person="ada"))
    db.set_delivered(granted, True)
    db.add_event(event(person="bob", decision="denied", reason="outside_hours"))
    db.add_event(event())
    db.add_event(
        event(decision="granted", reason="manual", actor="root", note="parcel", snapshot=None)
    )
    return db


def test_a_log_changed_only_by_gate_verifies(four, tmp_path):
    four.set_delivered(4, False)
    assert four.drop_snapshots(utc_iso(NOW + 1), strangers_only=True) == 1
    found = four.verify_log()
    assert found.ok, found.problem
    assert (found.checked, found.first_id, found.last_id) == (4, 1, 4)
    head = four.db.execute("select event_id, hash from log_chain where name = 'head'").fetchone()
    assert head == (4, found.head_hash)
    again = GateDB(tmp_path / "gate.db")  # another connection reads the same chain
    assert again.verify_log().ok
    again.close()
    (first,) = [e for e in four.events(snapshots=True) if e.id == 1]
    assert (first.person, first.delivered, first.snapshot, first.margin) == (
        "ada",
        True,
        FACE,
        None,
    )


@pytest.mark.parametrize(
    ("sql", "params", "found"),
    [
        ("update events set reason = 'granted', decision = 'granted' where id = 2", (),
         "event 2 was edited: it does not match its hash"),
        ("update events set distance = 0.1 where id = 2", (), "event 2 was edited"),
        ("update events set time = '2020-01-01T00:00:00.000Z' where id = 2", (),
         "event 2 was edited"),
        ("update events set person = 'mallory' where id = 2", (),
         "event 2: its person's name was edited"),
        ("update events set person = null where id = 2", (),
         "event 2: its person's name was deleted"),
        ("update events set person = '#1', person_salt = null where id = 2", (),
         "event 2: its person's name was edited"),  # only its own id counts as erased
        ("update events set snapshot = ? where id = 2", (OTHER_FACE,),
         "event 2: its snapshot was replaced"),
        ("update events set delivered = 0 where id = 1", (),
         "event 1: whether its unlock was delivered was edited"),
        ("update events set hash = prev_hash where id = 2", (),
         "event 2 was edited"),
        ("insert into events (time, door, decision, reason) values ('x', 'front', 'granted', "
         "'manual')", (), "event 5 is not chained"),
    ],
)  # fmt: skip
def test_verify_finds_an_edited_row(four, sql, params, found):
    tamper(four.path, sql, params)
    result = four.verify_log()
    assert not result.ok
    assert found in result.problem
    assert found.startswith(f"event {result.broken_id}")


@pytest.mark.parametrize(
    ("ids", "found", "broken"),
    [
        ((2,), "event 2 deleted: event 3 does not follow event 1", 3),
        ((2, 3), "events 2 to 3 deleted: event 4 does not follow event 1", 4),
        ((1,), "event 1 deleted: event 2 does not follow the log's start", 2),
        ((4,), "event 4 deleted: the log's newest event was 4", 4),
        ((3, 4), "events 3 to 4 deleted: the log's newest event was 4", 3),
    ],
)
def test_verify_finds_a_deleted_row(four, ids, found, broken):
    tamper(four.path, f"delete from events where id in ({','.join(map(str, ids))})")
    result = four.verify_log()
    assert (result.problem, result.broken_id) == (found, broken)


def test_a_row_deleted_and_its_id_reused_shows(four):
    tamper(four.path, "delete from events where id = 4")
    four.add_event(event())  # gate never reuses an id: the gap stays visible
    assert four.db.execute("select max(id) from events").fetchone()[0] == 5
    assert four.verify_log().problem == "event 4 deleted: event 5 does not follow event 3"


def test_gate_log_verify_reports_the_first_broken_link_in_one_line(four):
    runner = CliRunner()

    def gate(*args):
        return runner.invoke(cli, ["--db", str(four.path), *args], catch_exceptions=False)

    ok = gate("log", "verify")
    assert ok.exit_code == 0
    assert "log intact: 4 event(s) checked (events 1 to 4)" in ok.output
    assert ok.output.strip().splitlines()[-1] == f"head: 4 {four.verify_log().head_hash}"
    tamper(four.path, "update events set decision = 'granted' where id = 3")
    broken = gate("log", "verify")
    assert broken.exit_code == 1
    assert broken.output.strip().splitlines() == [
        "Error: log broken: event 3 was edited: it does not match its hash"
    ]
    misused = gate("log", "--door", "front", "verify")
    assert misused.exit_code == 2 and "takes no filter or format" in misused.output


def test_doors_appending_at_once_keep_one_unbroken_chain(tmp_path):
    path = tmp_path / "gate.db"
    GateDB(path).close()
    errors: list[BaseException] = []

    def door(name: str) -> None:
        store = GateDB(path)  # each door thread has its own connection, as in gate run
        try:
            for i in range(25):
                store.add_event(event(door=name, track=i, snapshot=None))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=door, args=(f"door{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = GateDB(path)
    found = store.verify_log()
    assert found.ok, found.problem
    assert (found.checked, found.first_id, found.last_id) == (100, 1, 100)
    assert {e.door for e in store.events(limit=1000)} == {f"door{n}" for n in range(4)}
    store.close()


def test_retention_forgets_snapshots_and_events_on_time_and_the_rest_verifies(db):
    db.add_event(event(400))  # 1: a stranger, over a year ago
    db.add_event(event(200, person="ada"))  # 2
    db.add_event(event(40, person="ada"))  # 3
    db.add_event(event(10))  # 4: a stranger, 10 days ago
    db.add_event(event(10, person="ada"))  # 5
    db.add_event(event(1))  # 6: a stranger, yesterday
    done = purge(db, RetentionConfig(), now=NOW)  # 7 / 30 / 365 days
    assert (done.events, done.snapshots, done.stranger_snapshots) == (1, 2, 1)
    kept = {e.id: e.snapshot for e in db.events(snapshots=True)}
    assert kept == {2: None, 3: None, 4: None, 5: FACE, 6: FACE}
    found = db.verify_log()
    assert found.ok, found.problem
    assert (found.first_id, found.purged, found.anchor_id) == (2, 1, 1)
    assert purge(db, RetentionConfig(), now=NOW) == Purged()  # nothing more to do
    db.add_event(event(person="bob"))
    assert db.verify_log().ok

    everything = RetentionConfig(stranger_snapshots_days=1, snapshots_days=1, events_days=1)
    assert purge(db, everything, now=NOW + 3 * DAY).events == 6
    assert db.events() == []
    assert db.add_event(event()) == 8  # ids go on: a purged id is never reused
    found = db.verify_log()
    assert found.ok and (found.checked, found.purged, found.anchor_id) == (1, 7, 7)


def test_zero_days_keeps_everything(db):
    db.add_event(event(3650))
    db.add_event(event(3650, person="ada"))
    forever = RetentionConfig(stranger_snapshots_days=0, snapshots_days=0, events_days=0)
    assert purge(db, forever, now=NOW) == Purged()
    assert [e.snapshot for e in db.events(snapshots=True)] == [FACE, FACE]


def test_retention_keeps_a_broken_link_as_evidence(db):
    for age in (100, 90, 80, 70):
        db.add_event(event(age))
    tamper(db.path, "update events set decision = 'granted' where id = 3")
    assert db.purge_events(utc_iso(NOW)) == 2  # 1 and 2 go; 3, edited, and what follows stay
    assert [e.id for e in db.events()] == [4, 3]
    found = db.verify_log()
    assert (found.broken_id, found.problem) == (3, "event 3 was edited: it does not match its hash")


def test_events_logged_before_the_chain_existed_are_counted_not_checked(tmp_path):
    from sqlite_utils import Database

    from gate.storage.migrations import migrations

    old = Database(tmp_path / "old.db")
    migrations.apply(old, stop_before="m004_log_chain")
    for decision in ("granted", "denied"):
        old["events"].insert(
            {"time": utc_iso(NOW - DAY), "door": "front", "decision": decision, "reason": "x"}
        )
    old.close()
    upgraded = GateDB(tmp_path / "old.db")
    upgraded.add_event(event(person="ada"))
    upgraded.set_delivered(3, True)
    found = upgraded.verify_log()
    assert found.ok, found.problem
    assert (found.unchecked, found.checked, found.first_id) == (2, 1, 3)
    assert upgraded.purge_events(utc_iso(NOW)) == 2
    found = upgraded.verify_log()
    assert found.ok and (found.unchecked, found.checked, found.purged) == (0, 1, 2)
    upgraded.close()


def test_gate_run_keeps_purging_in_a_thread_of_its_own(tmp_path):
    path = tmp_path / "gate.db"
    store = GateDB(path)
    store.add_event(event(500))
    store.add_event(event(1))
    stop = threading.Event()
    thread = keep_purging(path, RetentionConfig(), stop, every_s=0.05)
    deadline = time.monotonic() + 10
    while len(store.events()) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.id for e in store.events()] == [2]
    assert store.events(snapshots=True)[0].snapshot == FACE  # a stranger's, kept 7 days
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert store.verify_log().ok
    store.close()


def test_gate_log_purge_applies_the_configured_retention(tmp_path, monkeypatch):
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    config = tmp_path / "gate.toml"
    config.write_text("[retention]\nevents_days = 30\nsnapshots_days = 5\n")
    path = tmp_path / "gate.db"
    store = GateDB(path)
    store.add_event(event(60, person="ada"))
    store.add_event(event(10, person="ada"))
    store.add_event(event(2, person="ada"))
    store.close()
    result = CliRunner().invoke(
        cli, ["--config", str(config), "--db", str(path), "log", "purge"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert result.output == (
        "purged 1 event(s) older than 30 day(s), 1 snapshot(s) older than 5 day(s), "
        "0 stranger snapshot(s) older than 7 day(s)\n"
    )
    store = GateDB(path)
    assert [(e.id, e.snapshot) for e in store.events(snapshots=True)] == [(3, FACE), (2, None)]
    assert store.verify_log().ok
    store.close()


def test_retention_works_in_short_transactions_and_loses_nothing_between(db):
    for age in (50, 49, 48, 47, 46, 2):
        db.add_event(event(age))
    assert db.drop_snapshots(utc_iso(NOW - 10 * DAY), batch=2) == 5
    assert db.purge_events(utc_iso(NOW - 10 * DAY), batch=2) == 5
    assert [(e.id, e.snapshot) for e in db.events(snapshots=True)] == [(6, FACE)]
    found = db.verify_log()
    assert found.ok and (found.anchor_id, found.purged, found.checked) == (5, 5, 1)
