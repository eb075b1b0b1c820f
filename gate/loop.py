"""The door loop: capture -> detect -> encode -> match -> decide -> act -> log.

Start-up is an explicit sequence: source opened, actuators started, door
recorded, templates loaded, capture started; a failing step changes nothing. Every decision is stored before it is acted
on, so its id travels with the unlock command; an unlock is only sent before
it expires (``unlock_ttl_s`` after the frame was captured).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gate.capture import END, Capture, Frame, open_source
from gate.components import UnlockCommand
from gate.database import GateDB
from gate.decisions import DoorDecider, Outcome
from gate.events import AccessEvent, utc_iso
from gate.images import encode_jpeg, face_region
from gate.pipeline import Pipeline
from gate.plugins import broadcast

logger = logging.getLogger("gate.loop")


@dataclass
class RunStats:
    """What a run did: frames, drops, decisions and per-frame latency (ms)."""

    frames: int = 0
    dropped: int = 0
    reopened: int = 0
    granted: int = 0
    denied: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error: str | None = None

    def latency(self, q: float) -> float | None:
        """A percentile of capture-to-decision latency, in ms."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


class DoorLoop:
    """Runs one door from one source until the source ends or ``stop`` is set."""

    def __init__(
        self,
        pipeline: Pipeline,
        db: GateDB,
        door: str,
        source: str,
        *,
        hook=None,
        realtime: bool = False,
        on_event: Callable[[AccessEvent], None] | None = None,
    ):
        self.pipeline = pipeline
        self.db = db
        self.door = door
        self.source_spec = source
        self.hook = hook
        self.realtime = realtime
        self.on_event = on_event
        self.config = pipeline.config
        self.decider = DoorDecider(self.config.decision)
        self.stop = threading.Event()
        self.stats = RunStats()
        self._names: dict[int, str] = {}

    def run(self) -> RunStats:
        """Start up, process frames until the end, shut down; returns the stats."""
        source = open_source(self.source_spec)
        try:
            for actuator in self.pipeline.actuators:
                actuator.start()
            self.db.ensure_door(self.door)
            count = self.pipeline.load_templates(self.db)
            self._names = self.db.names()
            logger.info("door %s: %d templates, %d people", self.door, count, len(self._names))
            self._process_all(Capture(source, self.config.capture, self.realtime).start())
        finally:
            source.close()
        return self.stats

    def _process_all(self, capture: Capture) -> None:
        try:
            while not self.stop.is_set():
                try:
                    frame = capture.next(timeout=0.2)
                except queue.Empty:
                    continue
                if frame is END:
                    break
                self.process(frame)
        finally:
            capture.stop()
            self.stats.dropped = capture.dropped
            self.stats.reopened = capture.reopened
            self.stats.error = capture.error

    def process(self, frame: Frame) -> list[AccessEvent]:
        """Recognise, decide and act on one frame."""
        recognitions = self.pipeline.recognise(frame.image)
        outcomes = self.decider.observe(recognitions, frame.clock)
        self.stats.frames += 1
        self.stats.latencies_ms.append((time.monotonic() - frame.captured_mono) * 1000.0)
        return [self._act(outcome, frame) for outcome in outcomes]

    def _act(self, outcome: Outcome, frame: Frame) -> AccessEvent:
        match = outcome.recognition.match
        person_id = match.person_id if outcome.decision == "granted" else None
        snapshot = None
        if self.config.decision.snapshots:
            crop, _ = face_region(frame.image, outcome.recognition.face, pad=0.3, face_px=96)
            snapshot = encode_jpeg(crop)
        event = AccessEvent(
            time=utc_iso(frame.captured_at),
            door=self.door,
            decision=outcome.decision,
            reason=outcome.reason,
            person_id=person_id,
            person=self._names.get(person_id) if person_id is not None else None,
            distance=match.distance if match else None,
            margin=match.margin if match else None,
            latency_ms=round((time.monotonic() - frame.captured_mono) * 1000.0, 2),
            snapshot=snapshot,
        )
        self.db.add_event(event)
        if event.decision == "granted":
            self.stats.granted += 1
            command = UnlockCommand(
                door=self.door,
                person=event.person,
                person_id=person_id,
                distance=event.distance,
                event_id=event.id,
                issued_at=time.time(),
                expires_at=frame.captured_at + self.config.decision.unlock_ttl_s,
            )
            event.delivered = self._deliver(command)
            if event.delivered is not None:
                self.db.set_delivered(event.id, event.delivered)
        else:
            self.stats.denied += 1
        for actuator in self.pipeline.actuators:
            try:
                actuator.announce(event)
            except Exception:
                logger.exception("actuator %s failed to announce event %s", actuator.name, event.id)
        if self.hook is not None:
            broadcast(self.hook.access_decided, event=event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _deliver(self, command: UnlockCommand) -> bool | None:
        """Send an unlock through every actuator; None when none of them delivers."""
        results = []
        for actuator in self.pipeline.actuators:
            if command.expired(time.time()):
                logger.warning(
                    "unlock for event %s expired before %s", command.event_id, actuator.name
                )
                ok = False
            else:
                try:
                    ok = bool(actuator.unlock(command))
                except Exception:
                    logger.exception("actuator %s failed to unlock", actuator.name)
                    ok = False
            if actuator.delivers:
                results.append(ok)
        return all(results) if results else None
