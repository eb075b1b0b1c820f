"""The door loop, where a frame becomes a decision: capture -> motion gate -> detect -> encode ->
match -> track -> decide -> liveness -> policy, then out through
:class:`gate.actions.unlock.DoorActions`.

The motion gate (:mod:`gate.runtime.motion`) lets the detector skip frames of an empty, still
scene; the detector sees the frame shrunk to the door's ``detect_width`` when one is set.

The runner prepares what every door shares (:class:`DoorRuntime`) in its own
start-up steps; a loop only reads frames. A track the recognition would grant
is put to the liveness checks (``presentation_attack``) and the access policy
(``access_policy``); the decision is stored before it is acted on, so its id
travels with the unlock command, and an unlock is only sent before it expires
(``unlock_ttl_s`` after the frame was captured). Unknown, uncertain, refused or
a failing check never unlock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gate.actions.unlock import DoorActions
from gate.components import Detector, Encoder, Face
from gate.policy.access import AccessRequest, Verdict, builtin_policy
from gate.recognition.images import cv2, encode_jpeg, face_region
from gate.recognition.pipeline import Pipeline
from gate.runtime.capture import END, Capture, Frame, Source, open_source, supervised
from gate.runtime.decisions import DoorDecider, Outcome
from gate.runtime.doors import DoorSpec
from gate.runtime.motion import DetectionGate
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso

logger = logging.getLogger("gate.loop")


@dataclass
class RunStats:
    """What a run did: frames, drops, decisions and per-frame latency (ms)."""

    frames: int = 0
    skipped: int = 0  # frames the face detector did not run on (no motion, no open track)
    dropped: int = 0
    reopened: int = 0  # the source reopened after it failed or stalled
    granted: int = 0
    denied: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error: str | None = None

    def latency(self, q: float) -> float | None:
        """A percentile of capture-to-decision latency, in ms."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


@dataclass
class DoorRuntime:
    """What every door of a run shares: recognition, the database, the way out, the clock.

    ``encoder`` is the run's shared (batching) encoder; ``on_event`` hears of
    every event after it is acted on; ``on_frame(door, image, recognitions, names,
    events)`` sees every frame with its faces (the live view).
    """

    pipeline: Pipeline
    db_path: Path
    hook: Any = None
    realtime: bool = False
    encoder: Encoder | None = None
    on_event: Callable[[AccessEvent], None] | None = None
    on_frame: Callable[..., None] | None = None


class DoorLoop:
    """Runs one door from its source until the source ends or ``stop`` is set."""

    def __init__(self, runtime: DoorRuntime, door: DoorSpec, detector: Detector | None = None):
        self.runtime = runtime
        self.pipeline = runtime.pipeline
        self.door = door
        self.hook = runtime.hook
        self.config = runtime.pipeline.config
        self.encoder = runtime.encoder or runtime.pipeline.encoder
        self.detector = detector or runtime.pipeline.detector
        self.decider = DoorDecider(door.decision, self._judge, crop=self._crop)
        capture = self.config.capture
        self.gate = DetectionGate(capture, door.motion)
        self.detect_width = capture.detect_width if door.detect_width is None else door.detect_width
        self.db: GateDB | None = None
        self.actions: DoorActions | None = None
        self._last_frame: Frame | None = None
        self.stop = threading.Event()
        self.stats = RunStats()
        self.names: dict[int, str] = {}
        self._last_face = float("-inf")
        self._present = False

    def run(self, source: Source | None = None) -> RunStats:
        """Process frames until the source ends or :attr:`stop` is set; returns the stats.

        ``source`` is the door's source already opened; without it the door's
        source is opened here and tried again, with backoff, for as long as the
        loop runs (a camera that stalls for ``[capture] stall_s`` is reopened).
        The door is reported unavailable until frames come. The loop has its
        own database connection (SQLite's are one per thread).
        """
        spec, label = self.door.source or "", f"door {self.door.name}"
        settings, status = self.config.capture, self._set_available
        realtime = self.runtime.realtime
        if source is None:
            capture = supervised(spec, settings, realtime=realtime, on_status=status, label=label)
        else:
            capture = Capture(
                source, settings, realtime, opener=lambda: open_source(spec),
                on_status=status, label=label,
            )  # fmt: skip
        self.db = GateDB(self.runtime.db_path)
        self.actions = DoorActions(
            self.db, self.pipeline.actuators, self.hook, on_event=self.runtime.on_event
        )
        try:
            self._set_available(False, "starting")
            self.names = self.db.names()
            logger.info("door %s: %d people enrolled", self.door.name, len(self.names))
            self._process_all(capture.start())
        finally:
            capture.stop()
            self._set_presence(False)
            self._set_available(False, "stopped")
            self.db.close()
        return self.stats

    def _set_available(self, available: bool, why: str) -> None:
        """Tell the actuators whether the door sees (frames come) or not, and why."""
        for actuator in self.pipeline.actuators:
            try:
                actuator.availability(self.door.name, available, why)
            except Exception:
                logger.exception("actuator %s failed on availability", actuator.name)

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
            if self._last_frame is not None:  # the source ended: decide on the open tracks
                for outcome in self.decider.finish(float("inf")):
                    self._act(outcome, self._last_frame)
        finally:
            capture.stop()
            self.stats.dropped += capture.dropped  # a door restarted keeps counting
            self.stats.reopened += capture.reopened + capture.restarts
            self.stats.error = capture.error

    def process(self, frame: Frame) -> list[AccessEvent]:
        """Recognise, decide and act on one frame (detecting faces only when the gate says)."""
        recognitions: list = []
        if self.gate.wanted(frame.image, frame.clock, tracking=bool(self.decider.tracker.tracks)):
            recognitions = self.pipeline.recognise(
                frame.image,
                detect_faces(self.detector, frame.image, self.detect_width),
                encoder=self.encoder,
                threshold=self.door.threshold,
                min_margin=self.door.min_margin,
            )
        else:
            self.stats.skipped += 1
        self._track_presence(bool(recognitions), frame.clock)
        self._last_frame = frame
        outcomes = self.decider.observe(recognitions, frame.clock, frame.image)
        self.stats.frames += 1
        self.stats.latencies_ms.append((time.monotonic() - frame.captured_mono) * 1000.0)
        events = [self._act(outcome, frame) for outcome in outcomes]
        if self.runtime.on_frame is not None:
            try:
                self.runtime.on_frame(self.door.name, frame.image, recognitions, self.names, events)
            except Exception:
                logger.exception("the live view failed on a frame of %s", self.door.name)
        return events

    def _judge(self, fused: np.ndarray, spread: float, views: list) -> tuple:
        return self.pipeline.judge(
            fused,
            views,
            spread=spread,
            threshold=self.door.threshold,
            min_margin=self.door.min_margin,
        )

    def _crop(self, image: np.ndarray, recognition) -> np.ndarray:
        crop, _ = face_region(image, recognition.face, pad=0.3, face_px=96)
        return crop

    def _liveness(self, person_id: int, outcome: Outcome) -> Verdict | None:
        """A denial when a liveness check calls the track an attack or fails; else None."""
        if self.hook is None or not self.hook.presentation_attack.get_hookimpls():
            return None
        for impl in self.hook.presentation_attack.get_hookimpls():
            args = {
                "door": self.door.name,
                "person_id": person_id,
                "frames": list(outcome.history),
                "config": self.config,
            }
            try:
                verdict = impl.function(**{name: args[name] for name in impl.argnames})
            except Exception:
                logger.exception("liveness check %s failed at %s", impl.plugin_name, self.door.name)
                return Verdict(False, "liveness_error")
            if verdict is not None and verdict.attack:
                logger.warning(
                    "presentation attack at %s (%s, score %.2f): %s",
                    self.door.name,
                    verdict.check or impl.plugin_name,
                    verdict.score,
                    verdict.reason,
                )
                return Verdict(False, "presentation_attack")
        return None

    def _track_presence(self, faces: bool, clock: float) -> None:
        if faces:
            self._last_face = clock
            self._set_presence(True)
        elif clock - self._last_face >= self.door.decision.presence_off_s:
            self._set_presence(False)

    def _set_presence(self, present: bool) -> None:
        if present == self._present:
            return
        self._present = present
        for actuator in self.pipeline.actuators:
            try:
                actuator.presence(self.door.name, present)
            except Exception:
                logger.exception("actuator %s failed on presence", actuator.name)

    def _policy(self, person_id: int, frame: Frame) -> Verdict:
        """The access policy's verdict; any failure denies."""
        person = self.db.person_info(person_id)
        if person is None:  # removed while running
            return Verdict(False, "unknown")
        door = self.door.info
        when = datetime.fromtimestamp(frame.captured_at, self.config.site.zone())
        request = AccessRequest(
            person=person,
            door=door,
            when=when,
            rules=tuple(self.db.rules()),
            last_passage=self.db.last_passage(door.area, person_id) if door.area else None,
            anti_passback=self.config.policy.anti_passback,
            without_rules=self.config.policy.without_rules,
        )
        if self.hook is None:  # no plugin manager: gate's own rules
            return builtin_policy(request)
        try:
            verdict = self.hook.access_policy(request=request)
        except Exception:
            logger.exception("access policy failed for %s at %s", person.name, door.name)
            return Verdict(False, "policy_error")
        return verdict if verdict is not None else Verdict(False, "policy_error")

    def _act(self, outcome: Outcome, frame: Frame) -> AccessEvent:
        match = outcome.match or outcome.recognition.match
        decision, reason = outcome.decision, outcome.reason
        person_id = match.person_id if decision == "granted" else None
        if person_id is not None:
            verdict = self._liveness(person_id, outcome) or self._policy(person_id, frame)
            if not verdict.allowed:
                decision, reason = "denied", verdict.reason
        snapshot = None
        if outcome.snapshot is not None and self.config.decision.snapshots:
            snapshot = encode_jpeg(outcome.snapshot)
        event = AccessEvent(
            time=utc_iso(frame.captured_at),
            door=self.door.name,
            decision=decision,
            reason=reason,
            person_id=person_id,
            person=self.names.get(person_id) if person_id is not None else None,
            distance=match.distance if match else None,
            margin=match.margin if match else None,
            latency_ms=round((time.monotonic() - frame.captured_mono) * 1000.0, 2),
            snapshot=snapshot,
            track=outcome.track,
            frames=outcome.frames,
            threshold=outcome.threshold,
            quality=outcome.quality,
        )
        passage = None
        if decision == "granted":
            self.stats.granted += 1
            if self.door.area and self.door.direction:
                passage = (self.door.area, self.door.direction)
        else:
            self.stats.denied += 1
        expires_at = frame.captured_at + self.door.decision.unlock_ttl_s
        return self.actions.decided(event, expires_at=expires_at, passage=passage)


def detect_faces(detector: Detector, image: np.ndarray, width: int = 0) -> list[Face]:
    """The faces in ``image``, found on a copy shrunk to ``width`` (0: as it is) when it is
    wider; boxes and landmarks are in ``image``'s pixels."""
    h, w = image.shape[:2]
    if not width or w <= width:
        return detector.detect(image)
    cv = cv2()
    small = cv.resize(image, (width, max(2, round(h * width / w))), interpolation=cv.INTER_AREA)
    return [face.shifted(0.0, 0.0, w / width) for face in detector.detect(small)]
