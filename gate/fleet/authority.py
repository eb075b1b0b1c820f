"""The authority: publishes what changed in its database, signed, and collects the edges' logs.

Triggers in the database mark each changed person, group, rule or door
(``fleet_dirty``, whatever wrote it: the CLI, a script). :meth:`Authority.step`
turns the marks into new versions (one counter for the whole fleet) in short
transactions, signs each object once and keeps the signed message, then
publishes every version the broker does not hold yet: retained on the object's
own topic (a tombstone when it is gone), on the change feed, and a retained
head with the newest version and the fingerprint of all live objects. After
each connection it first reads the broker's retained head, so a broker that
lost its retained messages gets them all again.

Events arrive on ``<prefix>/fleet/events/<node>`` (the broker's ACL lets only
that node write there); each is stored once under its UUID with the node's
name, and acknowledged, signed, on ``<prefix>/fleet/acks/<node>``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from gate.fleet import replica
from gate.fleet.messages import KINDS, Refused, Signer, Topics, Verifier
from gate.messaging.mqtt import MqttLink
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso

logger = logging.getLogger("gate.fleet")

#: after a (re)connection, how long the broker's retained head may take to arrive
HEAD_WAIT_S = 1.5
#: objects turned into versions per transaction (doors logging meanwhile wait no longer)
BATCH = 500

_TEXT = ("time", "door", "decision", "reason", "person", "actor", "note", "credential")
_INTEGER = ("person_id", "track", "frames")
_NUMBER = ("distance", "margin", "latency_ms", "threshold", "quality")


def event_from(fields: Any) -> AccessEvent:
    """An event as an edge forwards it, checked field by field; ``ValueError`` if not one."""
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    out: dict[str, Any] = {}
    for name in (*_TEXT, *_INTEGER, *_NUMBER, "delivered"):
        value = fields.get(name)
        if value is None:
            if name in _TEXT[:4]:
                raise ValueError(f"no {name}")
        elif name in _TEXT:
            ok = isinstance(value, str)
        elif name == "delivered":
            ok = isinstance(value, bool)
        else:
            kinds = int if name in _INTEGER else (int, float)
            ok = isinstance(value, kinds) and not isinstance(value, bool)
        if value is not None and not ok:
            raise ValueError(f"bad {name}: {value!r}")
        out[name] = value
    if out["decision"] not in ("granted", "denied", "lock"):
        raise ValueError(f"bad decision {out['decision']!r}")
    return AccessEvent(**out)


class Authority:
    """``gate fleet serve``: one database, one MQTT link, one thread calling :meth:`step`."""

    def __init__(self, link: MqttLink, signer: Signer, *, prefix: str, crops: bool = False):
        self.link = link
        self.signer = signer
        self.topics = Topics(prefix)
        self.crops = crops
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._own = Verifier(signer.public)
        self._published: int | None = None  # the newest version the broker holds
        self._head_sent: int | None = None
        self._connected_at = 0.0
        self._broker_head: int | None = None
        self._refused: set[str] = set()

    def subscribe(self) -> None:
        """Listen for the broker's head and the edges' events (again after each connection)."""
        self.link.on_connected(lambda: self.inbox.put(("connected", b"")))  # before the head
        self.link.subscribe(self.topics.head, self._on_head, raw=True)
        self.link.subscribe(self.topics.events("+"), self._on_event)

    def _on_head(self, message) -> None:
        if message.retain:  # what the broker held when we subscribed; our echoes are not
            self.inbox.put(("head", message.payload))

    def _on_event(self, topic: str, payload: bytes) -> None:
        self.inbox.put((topic, payload))

    def serve(self, db: GateDB, stop: threading.Event, interval: float = 0.25) -> None:
        """Until ``stop``: publish changes, collect events."""
        self.mark_everything(db)
        self.subscribe()
        while not stop.wait(interval):
            try:
                self.step(db)
            except Exception:
                logger.exception("fleet: publishing or collecting failed; trying again")

    def mark_everything(self, db: GateDB) -> None:
        """Check every object once (at start): whatever changed while nobody served is found."""
        with db.transaction():
            db.db.conn.executemany(
                "insert or ignore into fleet_dirty (kind, key) values (?, ?)",
                replica.every_object(db.db),
            )

    def step(self, db: GateDB) -> None:
        """Take what arrived, version what changed, publish what the broker lacks."""
        events: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            if topic == "connected":
                self._published = self._head_sent = self._broker_head = None
                self._connected_at = time.monotonic()
            elif topic == "head":
                try:
                    self._broker_head = self._own.open(payload, "head")["version"]
                except Refused as exc:
                    logger.warning("fleet: the broker's head is not ours (%s): replacing it", exc)
                    self._broker_head = 0
            else:
                events[self.topics.node_of(topic)].append((topic, payload))
        for node, messages in events.items():
            self._collect(db, node, messages)
        while self.record_changes(db) == BATCH:
            pass
        self.publish(db)

    def record_changes(self, db: GateDB) -> int:
        """Give each marked object that changed the next version, signed; how many marks."""
        conn = db.db
        with db.transaction():
            marks = conn.execute("select kind, key from fleet_dirty limit ?", [BATCH]).fetchall()
            version = replica.newest_version(conn)
            for kind, key in marks:
                conn.execute("delete from fleet_dirty where kind = ? and key = ?", [kind, key])
                if kind not in KINDS:
                    continue
                data = replica.body(conn, kind, key, crops=self.crops)
                new = None if data is None else replica.digest(data)
                old = conn.execute(
                    "select digest from fleet_objects where kind = ? and key = ?", [kind, key]
                ).fetchone()
                if (old is None and data is None) or (old is not None and old[0] == new):
                    continue
                version += 1
                payload = self.signer.seal({
                    "type": "object", "kind": kind, "key": key, "version": version,
                    "time": utc_iso(time.time()), "data": data,
                })  # fmt: skip
                replica.record(conn, kind, key, version, new, payload)
        return len(marks)

    def publish(self, db: GateDB) -> None:
        """Every version the broker lacks, in order, then the head (when connected)."""
        if not self.link.connected:
            return
        head = replica.newest_version(db.db)
        if self._published is None:  # just connected: what does the broker hold?
            if self._broker_head is None and time.monotonic() - self._connected_at < HEAD_WAIT_S:
                return
            held = self._broker_head or 0
            if held > head:
                logger.error(
                    "fleet: the broker's head is version %d, this database's %d: another "
                    "authority, or a database restored from a backup? Edges ignore versions "
                    "older than theirs", held, head,
                )  # fmt: skip
                held = 0
            self._published = held
            self._head_sent = held if held == head else None
        rows = db.db.execute(
            "select kind, key, version, payload from fleet_objects where version > ? "
            "order by version",
            [self._published],
        ).fetchall()
        for kind, key, version, payload in rows:
            if not (
                self.link.publish(self.topics.object(kind, key), payload, retain=True)
                and self.link.publish(self.topics.changes, payload)
            ):
                return  # not connected any more: from here after the next connection
            self._published = version
        if self._head_sent != head:
            digest, count = replica.fingerprint(db.db)
            payload = self.signer.seal({
                "type": "head", "version": head, "digest": digest, "objects": count,
                "time": utc_iso(time.time()),
            })  # fmt: skip
            if self.link.publish(self.topics.head, payload, retain=True):
                self._head_sent = head
                if rows:
                    logger.info("fleet: published up to version %d (%d objects)", head, count)

    def _collect(self, db: GateDB, node: str, messages: list[tuple[str, bytes]]) -> None:
        """Store a node's events once each, then acknowledge them, signed."""
        items: list[tuple[str, AccessEvent]] = []
        for topic, payload in messages:
            try:
                message = json.loads(payload)
                event_uuid = str(uuid.UUID(message["uuid"]))
                items.append((event_uuid, event_from(message["event"])))
            except (ValueError, TypeError, KeyError) as exc:
                self._refuse(db, topic, payload, f"not an event: {exc}")
        if not items:
            return
        added = db.collect_events(node, items)
        logger.info("fleet: %d event(s) from %s, %d new", len(items), node, added)
        ack = self.signer.seal({
            "type": "ack", "node": node, "uuids": [u for u, _ in items],
            "time": utc_iso(time.time()),
        })  # fmt: skip
        self.link.publish(self.topics.acks(node), ack)

    def _refuse(self, db: GateDB, topic: str, payload: bytes, why: str) -> None:
        """Log a message that cannot be stored, once (it is not acknowledged: it comes again)."""
        key = f"{topic}:{hash(payload)}"
        if key in self._refused:
            return
        self._refused.add(key)
        logger.warning("fleet: refused a message on %s: %s", topic, why)
        log_refusal(db, topic, why)


def log_refusal(db: GateDB, topic: str, why: str, keep: int = 1000) -> None:
    """Keep a refused message's topic and reason in ``fleet_refusals`` (the newest ``keep``)."""
    with db.transaction():
        db.db.execute(
            "insert into fleet_refusals (time, topic, reason) values (?, ?, ?)",
            [utc_iso(time.time()), topic, why[:500]],
        )
        db.db.execute(
            "delete from fleet_refusals where id <= (select max(id) from fleet_refusals) - ?",
            [keep],
        )


def read_statuses(link: MqttLink, topics: Topics, wait_s: float = 1.5) -> list[dict[str, Any]]:
    """The edges' retained status messages, as the broker holds them now."""
    found: dict[str, dict[str, Any]] = {}

    def take(message) -> None:
        try:
            status = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(status, dict):
            found[topics.node_of(message.topic)] = status

    link.subscribe(topics.status("+"), take, raw=True)
    time.sleep(wait_s)
    return [found[node] | {"node": node} for node in sorted(found)]
