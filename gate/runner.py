"""``gate run``: every door at once, one loop (and capture thread) per door.

The doors share the actuators, the matcher and one encoder, whose forward
passes take the faces of all doors that arrive together. Commands from Home
Assistant are logged and sent through the same actuators.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from gate.batching import SharedEncoder
from gate.capture import open_source
from gate.commands import door_command, refuse_remote
from gate.database import GateDB
from gate.doors import DoorSpec
from gate.errors import GateError
from gate.events import AccessEvent
from gate.loop import DoorLoop, RunStats
from gate.pipeline import Pipeline
from gate.retention import keep_purging

logger = logging.getLogger("gate.runner")


class Runner:
    """Starts the doors, waits for them, stops them all on Ctrl-C or when each source ends."""

    def __init__(
        self,
        pipeline: Pipeline,
        db_path: Path,
        doors: list[DoorSpec],
        *,
        hook=None,
        realtime: bool = False,
        on_event: Callable[[AccessEvent], None] | None = None,
        reload_s: float = 2.0,
    ):
        self.pipeline = pipeline
        self.db_path = db_path
        self.doors = doors
        self.hook = hook
        self.realtime = realtime
        self.on_event = on_event
        self.loops: list[DoorLoop] = []
        self.reload_s = reload_s
        self.errors: dict[str, str] = {}
        self._event_lock = threading.Lock()

    def _echo(self, event: AccessEvent) -> None:
        if self.on_event is not None:
            with self._event_lock:
                self.on_event(event)

    def remote_command(self, door: str, action: str, *, actor: str, reason: str) -> AccessEvent:
        """Carry a command from outside (Home Assistant) to a door, logged."""
        db = GateDB(self.db_path)
        try:
            spec = next(d for d in self.doors if d.name == door)
            event = door_command(
                db, self.pipeline.actuators, self.hook, door, action,
                reason=reason, actor=actor, ttl_s=spec.decision.unlock_ttl_s,
            )  # fmt: skip
        finally:
            db.close()
        self._echo(event)
        return event

    def remote_refused(self, door: str, action: str | None, *, actor: str, why: str) -> AccessEvent:
        """Log a command from outside that was refused, with who asked and why."""
        db = GateDB(self.db_path)
        try:
            event = refuse_remote(
                db, self.pipeline.actuators, self.hook, door, action, actor=actor, why=why
            )
        finally:
            db.close()
        self._echo(event)
        return event

    def attach(self) -> None:
        """Give the actuators' shared context this run's doors, database and remote commands."""
        context = self.pipeline.context
        context.doors = self.doors
        context.db_path = self.db_path
        context.remote_command = self.remote_command
        context.remote_refused = self.remote_refused

    def run(self) -> dict[str, RunStats]:
        """Run until every door's source ends (or Ctrl-C); stats per door."""
        self.attach()
        sources = []
        try:  # start-up in order: sources, templates, actuators; a failure changes nothing
            for door in self.doors:
                try:
                    sources.append(open_source(door.source or ""))
                except GateError as exc:
                    raise GateError(f"door {door.name}: {exc}") from None
            setup = GateDB(self.db_path)
            try:
                self.pipeline.load_templates(setup)
            finally:
                setup.close()
            for actuator in self.pipeline.actuators:
                actuator.start()
        except BaseException:
            for source in sources:
                source.close()
            raise
        shared = SharedEncoder(self.pipeline.encoder, parties=len(self.doors))
        threads = []
        watching = threading.Event()
        watcher = threading.Thread(
            target=self._watch_roster, args=(watching,), name="gate-roster", daemon=True
        )
        watcher.start()
        keep_purging(self.db_path, self.pipeline.config.retention, watching)  # stops with it
        try:
            for index, door in enumerate(self.doors):
                detector = (
                    self.pipeline.detector
                    if index == 0
                    else self.pipeline.build("detector", self.pipeline.config.pipeline.detector)
                )  # each thread its own detector: OpenCV's are not thread-safe
                loop = DoorLoop(
                    self.pipeline, None, door, hook=self.hook, realtime=self.realtime,
                    on_event=self._echo, encoder=shared, detector=detector,
                )  # fmt: skip
                self.loops.append(loop)
                thread = threading.Thread(
                    target=self._run_loop,
                    args=(loop, sources[index]),
                    name=f"gate-door-{door.name}",
                )
                threads.append(thread)
                thread.start()
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
        except KeyboardInterrupt:
            for loop in self.loops:
                loop.stop.set()
            for thread in threads:
                thread.join(timeout=10)
            raise
        finally:
            watching.set()
            shared.close()
        if self.errors and len(self.errors) == len(self.doors):
            raise GateError("; ".join(f"door {d}: {e}" for d, e in self.errors.items()))
        return {loop.door.name: loop.stats for loop in self.loops}

    def _watch_roster(self, stop: threading.Event) -> None:
        """Reload templates and names when someone is enrolled, removed or renamed meanwhile."""
        db = GateDB(self.db_path)
        try:
            space = self.pipeline.encoder.space
            seen = db.roster_version(space)
            while not stop.wait(self.reload_s):
                version = db.roster_version(space)
                if version == seen:
                    continue
                seen = version
                count = self.pipeline.load_templates(db)
                names = db.names()
                for loop in self.loops:
                    loop.names = names
                logger.info("enrolment changed: %d templates of %d people", count, len(names))
        except Exception:
            logger.exception("template reloading stopped")
        finally:
            db.close()

    def _run_loop(self, loop: DoorLoop, source) -> None:
        db = GateDB(self.db_path)
        loop.db = db
        try:
            loop.run(load_templates=False, source=source)
        except GateError as exc:
            self.errors[loop.door.name] = str(exc)
        except Exception as exc:
            self.errors[loop.door.name] = f"{type(exc).__name__}: {exc}"
            logger.exception("door %s stopped", loop.door.name)
        finally:
            db.close()
