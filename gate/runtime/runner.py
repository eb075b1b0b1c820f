"""``gate run``: every door at once, one loop (and capture thread) per door.

The doors share the actuators, the matcher and one encoder, whose forward
passes take the faces of all doors that arrive together. Commands from Home
Assistant are logged and sent through the same actuators. Faults stay local:
a site's door whose source fails keeps trying while the others decide, and
doors added, changed or removed in the database meanwhile are started,
restarted or stopped without touching the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from gate.actions.commands import door_command, refuse_remote
from gate.errors import GateError
from gate.recognition.pipeline import Pipeline
from gate.runtime.batching import SharedEncoder
from gate.runtime.capture import open_source
from gate.runtime.doors import DoorSpec, spec_from_row
from gate.runtime.loop import DoorLoop, RunStats
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent
from gate.storage.retention import keep_purging

logger = logging.getLogger("gate.runner")


class Runner:
    """Starts the doors, waits for them, stops them all on :meth:`stop`, Ctrl-C or when each
    source ends.

    ``site``: the doors are the site's, from the database (``gate run`` without
    ``--source``): a source that cannot open keeps being tried instead of
    stopping the run, and doors added, changed, disabled or removed meanwhile
    take effect within ``reload_s`` (of the doors in ``only``, when given).
    Otherwise every source must open at start.
    """

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
        site: bool = False,
        only: tuple[str, ...] = (),
    ):
        self.pipeline = pipeline
        self.db_path = db_path
        self.doors = list(doors)
        self.hook = hook
        self.realtime = realtime
        self.on_event = on_event
        self.loops: list[DoorLoop] = []
        self.reload_s = reload_s
        self.site = site
        self.only = tuple(only)
        self.errors: dict[str, str] = {}
        self._event_lock = threading.Lock()
        self._doors_lock = threading.RLock()
        self._running: dict[str, tuple[DoorLoop, threading.Thread]] = {}
        self._detectors: list = []  # of doors stopped: OpenCV's are one per thread
        self._stopping = threading.Event()
        self._shared: SharedEncoder | None = None

    def _echo(self, event: AccessEvent) -> None:
        if self.on_event is not None:
            with self._event_lock:
                self.on_event(event)

    def remote_command(self, door: str, action: str, *, actor: str, reason: str) -> AccessEvent:
        """Carry a command from outside (Home Assistant) to a door, logged."""
        with self._doors_lock:
            spec = next(d for d in self.doors if d.name == door)
        db = GateDB(self.db_path)
        try:
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

    def stop(self) -> None:
        """End the run: every door finishes its open tracks and stops (SIGTERM, a test)."""
        self._stopping.set()
        with self._doors_lock:
            for loop, _ in self._running.values():
                loop.stop.set()

    def running(self) -> list[DoorLoop]:
        """The loops of the doors running now."""
        with self._doors_lock:
            return [loop for loop, thread in self._running.values() if thread.is_alive()]

    def run(self) -> dict[str, RunStats]:
        """Run until every door's source ends, :meth:`stop` or Ctrl-C; stats per door."""
        self.attach()
        sources = {}
        rows = self._door_rows() if self.site else {}  # changes from now on take effect
        try:  # start-up in order: sources, templates, actuators; a failure changes nothing
            if not self.site:  # one source named on the command line: it must open
                for door in self.doors:
                    try:
                        sources[door.name] = open_source(door.source or "")
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
            for source in sources.values():
                source.close()
            raise
        self._shared = SharedEncoder(self.pipeline.encoder, parties=len(self.doors))
        watching = threading.Event()
        threading.Thread(
            target=self._watch_roster, args=(watching,), name="gate-roster", daemon=True
        ).start()
        keep_purging(self.db_path, self.pipeline.config.retention, watching)  # stops with it
        if self.site:
            threading.Thread(
                target=self._watch_doors, args=(watching, rows), name="gate-doors", daemon=True
            ).start()
        try:
            with self._doors_lock:
                for door in self.doors:
                    if not self._stopping.is_set():
                        self._start_door(door, sources.pop(door.name, None))
            while not self._stopping.is_set():
                with self._doors_lock:
                    alive = [t for _, t in self._running.values() if t.is_alive()]
                if not alive:
                    break
                alive[0].join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self.stop()
            watching.set()
            with self._doors_lock:
                threads = [t for _, t in self._running.values()]
            for thread in threads:
                thread.join(timeout=10)
            for source in sources.values():
                source.close()
            self._shared.close()
        if self.errors and len(self.errors) == len({loop.door.name for loop in self.loops}):
            raise GateError("; ".join(f"door {d}: {e}" for d, e in self.errors.items()))
        return {loop.door.name: loop.stats for loop in self.loops}

    def _start_door(self, door: DoorSpec, source=None, stats: RunStats | None = None) -> None:
        """Start ``door``'s loop in a thread of its own (holding ``_doors_lock``)."""
        if self._detectors:
            detector = self._detectors.pop()
        elif not self._running and not self.loops:
            detector = self.pipeline.detector
        else:  # each thread its own detector: OpenCV's are not thread-safe
            detector = self.pipeline.build("detector", self.pipeline.config.pipeline.detector)
        self._shared.set_parties(len(self._running) + 1)
        loop = DoorLoop(
            self.pipeline, None, door, hook=self.hook, realtime=self.realtime,
            on_event=self._echo, encoder=self._shared, detector=detector,
        )  # fmt: skip
        if stats is not None:
            loop.stats = stats  # a door restarted goes on counting
        self.loops.append(loop)
        thread = threading.Thread(
            target=self._run_loop, args=(loop, source), name=f"gate-door-{door.name}"
        )
        self._running[door.name] = (loop, thread)
        thread.start()

    def _stop_door(self, name: str) -> RunStats | None:
        """Stop ``name``'s loop and wait for it (holding ``_doors_lock``); its stats."""
        found = self._running.pop(name, None)
        if found is None:
            return None
        loop, thread = found
        loop.stop.set()
        thread.join(timeout=15)
        if not thread.is_alive():
            self._detectors.append(loop.detector)
        return loop.stats

    def _door_rows(self, db: GateDB | None = None) -> dict[str, dict]:
        own = db is None
        db = db or GateDB(self.db_path)
        try:
            return {row["name"]: row for row in db.doors()}
        finally:
            if own:
                db.close()

    def _watch_doors(self, stop: threading.Event, seen: dict[str, dict]) -> None:
        """Start, restart or stop doors as their rows in the database change."""
        db = GateDB(self.db_path)
        try:
            while not stop.wait(self.reload_s):
                rows = self._door_rows(db)
                changed = sorted(n for n in rows.keys() | seen.keys() if rows.get(n) != seen.get(n))
                seen = rows
                wanted = [n for n in changed if not self.only or n in self.only]
                if wanted and not stop.is_set():
                    self._apply(wanted, rows)
        except Exception:
            logger.exception("door watching stopped: door changes need a restart of gate run")
        finally:
            db.close()

    def _apply(self, names: list[str], rows: dict[str, dict]) -> None:
        """Make the doors ``names`` what their rows say (holding ``_doors_lock``)."""
        with self._doors_lock:
            if self._stopping.is_set():
                return
            doors = {door.name: door for door in self.doors}
            for name in names:
                row = rows.get(name)
                spec = None
                if row is not None and row["enabled"] and row["source"]:
                    try:
                        spec = spec_from_row(row, self.pipeline.config)
                    except GateError as exc:
                        logger.error("door %s stopped: %s", name, exc)
                old = doors.get(name)
                if spec == old and (old is None or name in self._running):
                    continue
                stats = self._stop_door(name)
                if spec is None:
                    doors.pop(name, None)
                    logger.warning("door %s: removed or disabled; stopped", name)
                    continue
                doors[name] = spec
                logger.warning("door %s: %s", name, "changed; restarted" if old else "started")
                self._start_door(spec, stats=stats if old else None)
            self.doors[:] = list(doors.values())
        for actuator in self.pipeline.actuators:
            try:
                actuator.doors_changed(list(self.doors))
            except Exception:
                logger.exception("actuator %s failed on a change of doors", actuator.name)

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
                for loop in self.running():
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
