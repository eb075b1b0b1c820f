"""An edge: follows the authority into its own database and forwards its access log.

The edge subscribes to every object's retained topic and to the head. The
broker hands it the retained state on each (re)connection and each change as
it is published; every message is checked against the authority's public key
first (a message that fails is refused, logged as a warning and kept in
``fleet_refusals``) and applied only when its version is newer than the one
held, so an old message replayed never rolls the edge back. What arrives is
applied in one transaction, so doors decide with complete objects, and with
what the edge holds when the link is down. Once the fingerprint of the edge's
versions equals the head's, the edge holds the head's version exactly: it
records it (and drops people, groups or rules of its own). An edge that stays
behind asks the broker for the retained objects again, less and less often.

Events: each is published, QoS 1, on ``<prefix>/fleet/events/<node>`` once its
unlock is settled, and again after ``resend_s`` or a reconnection until the
collector's signed acknowledgement marks it. A retained status message says
which version the edge holds, its pending events and when it last spoke.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gate.config import GateConfig
from gate.fleet import replica
from gate.fleet.authority import log_refusal
from gate.fleet.messages import KINDS, Refused, Topics, Verifier, require_broker
from gate.messaging.connection import Messaging
from gate.messaging.mqtt import MqttLink
from gate.storage.database import GateDB
from gate.storage.events import utc_iso

logger = logging.getLogger("gate.fleet")

#: behind the head this long: ask for every retained object again (doubling to RESYNC_MAX_S)
RESYNC_S = 3.0
RESYNC_MAX_S = 300.0
#: messages applied per transaction
BATCH = 500


class Edge:
    """One edge on one MQTT link; :meth:`start` runs it in a thread, :meth:`sync` once."""

    def __init__(self, config: GateConfig, db_path: Path, link: MqttLink):
        fleet = config.fleet
        if fleet.authority_key is None:
            raise ValueError("an edge needs [fleet] authority_key")
        self.fleet = fleet
        self.node = fleet.node
        self.db_path = Path(db_path)
        self.link = link
        self.topics = Topics(fleet.topic_prefix)
        self.verifier = Verifier(fleet.authority_key)
        self.settle_s = config.decision.unlock_ttl_s + 1.0
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        #: the version held exactly (the head's, when last the fingerprints matched)
        self.applied = 0
        #: the newest head the authority signed, as far as this edge knows
        self.head: dict[str, Any] | None = None
        self.converged = False
        self._sent: dict[str, float] = {}
        self._changed = True
        self._behind_since: float | None = None
        self._resync_s = RESYNC_S
        self._ahead_said = False
        self._reported: tuple | None = None
        self._reported_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the link ---------------------------------------------------------------------------

    def subscribe(self) -> None:
        """The objects, the head and our acknowledgements (again after each connection)."""
        self.link.on_connected(lambda: self.inbox.put(("connected", b"")))
        self._subscribe_objects()
        self.link.subscribe(self.topics.head, self._on_message, raw=True)
        self.link.subscribe(self.topics.acks(self.node), self._on_message, raw=True)

    def _subscribe_objects(self) -> None:
        for kind in KINDS:  # subscribing again has the broker send the retained ones again
            self.link.subscribe(self.topics.object(kind, "+"), self._on_message, raw=True)

    def _on_message(self, message) -> None:
        self.inbox.put((message.topic, message.payload))

    # running ------------------------------------------------------------------------------

    def start(self) -> Edge:
        """Follow the authority in a thread of its own (with its own database connection)."""
        self.subscribe()
        self._thread = threading.Thread(target=self._run, name="gate-fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        db = GateDB(self.db_path)
        try:
            self.load(db)
            while not self._stop.wait(0.2):
                try:
                    self.step(db)
                except Exception:  # the doors go on; so does the edge
                    logger.exception("fleet: this step failed; trying again")
        finally:
            db.close()

    def sync(self, db: GateDB, timeout: float) -> bool:
        """Once: until the edge holds the head's data and the collector has every event."""
        self.load(db)
        self.subscribe()
        deadline = time.monotonic() + timeout
        while True:
            self.step(db)
            done = self.converged and db.outbox_size() == 0
            if done or time.monotonic() > deadline:
                self._report(db, force=True)
                return done
            time.sleep(0.1)

    def load(self, db: GateDB) -> None:
        """What this edge held when it last ran."""
        self.applied = int(replica.get_state(db.db, "applied") or 0)
        head = replica.get_state(db.db, "head")
        self.head = json.loads(head) if head else None

    def step(self, db: GateDB) -> None:
        """Apply what arrived, check the head, forward events, say where we are."""
        objects: list[tuple[str, dict]] = []
        acks: list[str] = []
        for _ in range(BATCH):
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            if topic == "connected":
                self._sent.clear()  # what was sent before may be lost: send it again
                self._reported = None
                continue
            try:
                if topic == self.topics.head:
                    self._take_head(db, self.verifier.open(payload, "head"))
                elif topic == self.topics.acks(self.node):
                    acks.extend(self._ack(self.verifier.open(payload, "ack")))
                else:
                    objects.append((topic, self._object(topic, payload)))
            except Refused as exc:
                self._refuse(db, topic, str(exc))
        if objects:
            self._apply(db, objects)
        if acks:
            db.acknowledge(acks)
            for event_uuid in acks:
                self._sent.pop(event_uuid, None)
        self._check(db)
        self._forward(db)
        self._report(db)

    # changes ------------------------------------------------------------------------------

    def _object(self, topic: str, payload: bytes) -> dict[str, Any]:
        fields = self.verifier.open(payload, "object")
        kind, key, version = fields.get("kind"), fields.get("key"), fields.get("version")
        if kind not in KINDS or not isinstance(key, str) or not version:
            raise Refused(f"signed, but not an object: kind {kind!r}, key {key!r}")
        if topic != self.topics.object(kind, key):
            raise Refused(f"signed for {self.topics.object(kind, key)}, not this topic")
        if fields.get("data") is not None and not isinstance(fields["data"], dict):
            raise Refused("signed, but its data is not an object")
        return fields

    def _ack(self, fields: dict[str, Any]) -> list[str]:
        uuids = fields.get("uuids")
        if fields.get("node") != self.node or not isinstance(uuids, list):
            raise Refused(f"an acknowledgement for {fields.get('node')!r}, not for this node")
        return [u for u in uuids if isinstance(u, str)]

    def _take_head(self, db: GateDB, head: dict[str, Any]) -> None:
        if self.head is not None and head["version"] <= self.head["version"]:
            return  # the same head again, or an older one replayed
        if not isinstance(head.get("digest"), str) or not isinstance(head.get("objects"), int):
            raise Refused("signed, but not a head")
        self.head = {k: head[k] for k in ("version", "digest", "objects", "time")}
        with db.transaction():
            replica.set_state(db.db, "head", json.dumps(self.head))
        self._changed = True

    def _apply(self, db: GateDB, objects: list[tuple[str, dict]]) -> None:
        """Apply the newer versions in one transaction, each all or nothing."""
        failed: list[tuple[str, str]] = []
        conn = db.db
        with db.transaction():
            for topic, fields in objects:
                kind, key, version, data = (fields[k] for k in ("kind", "key", "version", "data"))
                if version <= replica.version_of(conn, kind, key):
                    continue  # held already, or an older version replayed
                try:
                    with conn.atomic():
                        replica.apply(conn, kind, key, data)
                        digest = None if data is None else replica.digest(data)
                        replica.record(conn, kind, key, version, digest)
                except (sqlite3.Error, ValueError, TypeError) as exc:
                    failed.append((topic, f"version {version} cannot be applied here: {exc}"))
                    continue
                self._changed = True
            conn.execute("delete from fleet_dirty")  # marks of our own writes: not changes
        for topic, why in failed:
            self._refuse(db, topic, why)

    def _check(self, db: GateDB) -> None:
        """Whether the edge holds the head's data; if not for a while, ask again."""
        if self.head is None:
            return
        if self._changed:
            self._changed = False
            held = replica.fingerprint(db.db)
            self.converged = held == (self.head["digest"], self.head["objects"])
            if self.converged:
                self._behind_since, self._resync_s = None, RESYNC_S
                if self.head["version"] != self.applied:
                    self._holds(db, self.head["version"])
        if self.converged or not self.link.connected:
            return
        now = time.monotonic()
        if replica.newest_version(db.db) > self.head["version"]:
            if not self._ahead_said:
                self._ahead_said = True
                logger.error(
                    "fleet: this edge holds versions newer than the authority's head %d: was the "
                    "authority's database restored? Nothing is rolled back",
                    self.head["version"],
                )
            return
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since > self._resync_s:
            held = replica.fingerprint(db.db)[1]
            logger.warning(
                "fleet: behind the head (version %d, %d objects; %d here): asking for every "
                "object again%s", self.head["version"], self.head["objects"], held,
                "; if this repeats, the broker may drop retained messages beyond its queue "
                "(mosquitto: max_queued_messages)" if held < self.head["objects"] else "",
            )  # fmt: skip
            self._subscribe_objects()
            self._behind_since = now
            self._resync_s = min(self._resync_s * 2, RESYNC_MAX_S)

    def _holds(self, db: GateDB, version: int) -> None:
        with db.transaction():
            gone = replica.prune(db.db)
            replica.set_state(db.db, "applied", str(version))
            db.db.execute("delete from fleet_dirty")
        if gone:
            logger.warning("fleet: removed %d people, groups or rules the authority lacks", gone)
        logger.info("fleet: holds version %d", version)
        self.applied = version

    def _refuse(self, db: GateDB, topic: str, why: str) -> None:
        logger.warning("fleet: refused a message on %s: %s", topic, why)
        log_refusal(db, topic, why)

    # events and status --------------------------------------------------------------------

    def _forward(self, db: GateDB) -> None:
        """Publish each settled event not acknowledged yet (again after ``resend_s``)."""
        if not self.link.connected:
            return
        now = time.monotonic()
        settled = utc_iso(time.time() - self.settle_s)
        for event_uuid, event in db.outbox(settled):
            sent = self._sent.get(event_uuid)
            if sent is not None and now - sent < self.fleet.resend_s:
                continue
            fields = {k: v for k, v in asdict(event).items() if k not in ("id", "snapshot")}
            payload = json.dumps({"uuid": event_uuid, "event": fields}, sort_keys=True)
            if not self.link.publish(self.topics.events(self.node), payload, qos=1):
                return
            self._sent[event_uuid] = now

    def _report(self, db: GateDB, force: bool = False) -> None:
        """The retained status: on a change, and every ``heartbeat_s``."""
        head = self.head["version"] if self.head else None
        state = (self.applied, head, self.converged)
        now = time.monotonic()
        due = now - self._reported_at >= self.fleet.heartbeat_s
        if not self.link.connected or not (force or due or state != self._reported):
            return
        status = {
            "node": self.node,
            "version": self.applied,
            "head": head,
            "converged": self.converged,
            "pending": db.outbox_size(),
            "refused": db.db.execute("select count(*) from fleet_refusals").fetchone()[0],
            "time": utc_iso(time.time()),
        }
        if self.link.publish(self.topics.status(self.node), json.dumps(status), retain=True):
            self._reported, self._reported_at = state, now


def start_edge(config: GateConfig, db_path: Path, messaging: Messaging) -> Edge:
    """The edge of ``gate run``, on the run's MQTT link, following the authority."""
    require_broker(config)
    return Edge(config, db_path, messaging.link()).start()
