"""``gate run``: every door at once, one loop (and capture thread) per door.

Start-up is a sequence of named steps, each undone if a later one fails:
open the sources, load the templates, start the actuators and the live view
(when asked), record the doors (the first write), follow the fleet's authority
(an edge), start the doors; then wait, and stop in reverse. The doors share
the actuators, the matcher and one encoder, whose forward passes take the
faces of all doors that arrive together. Commands from Home Assistant go
through the same :class:`gate.actions.unlock.DoorActions` path as a face.
Faults stay local: a site's door whose source fails keeps trying while the
others decide, and doors added, changed or removed in the database meanwhile
are started, restarted or stopped without touching the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gate.actions.signing import keys_folder
from gate.actions.unlock import DoorActions
from gate.components import Action, ActuatorSetup
from gate.errors import GateError
from gate.messaging.connection import Messaging
from gate.recognition.pipeline import Pipeline
from gate.runtime.batching import SharedEncoder
from gate.runtime.capture import Source, open_source
from gate.runtime.doors import DoorSpec, spec_from_row
from gate.runtime.loop import DoorLoop, DoorRuntime, RunStats
from gate.runtime.preview import Preview
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
    Otherwise every source must open at start. ``messaging`` is the run's MQTT
    connection (made here when not given, and closed with the run).
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
        messaging: Messaging | None = None,
        preview: Preview | None = None,
    ):
        self.pipeline = pipeline
        self.db_path = Path(db_path)
        self.doors = list(doors)
        self.hook = hook
        self.on_event = on_event
        self.keys_dir = keys_folder(pipeline.config, self.db_path)
        self.messaging = messaging or Messaging(pipeline.config, self.keys_dir)
        self.preview = preview
        self.runtime = DoorRuntime(
            pipeline, self.db_path, hook, realtime, on_event=self._echo,
            on_frame=preview.frame if preview is not None else None,
        )  # fmt: skip
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
        self._watching = threading.Event()
        self.fleet = None  # the fleet's edge, when [fleet] role = "edge"

    def _echo(self, event: AccessEvent) -> None:
        if self.on_event is not None:
            with self._event_lock:
                self.on_event(event)

    # -- commands from outside (RemoteCommands) ------------------------------------------

    def command(self, door: str, action: Action, *, actor: str, reason: str) -> AccessEvent:
        """Carry a command from outside (Home Assistant) to a door, through the one path."""
        with self._doors_lock:
            spec = next(d for d in self.doors if d.name == door)
        with self._actions() as actions:
            return actions.command(
                door, action, reason=reason, actor=actor, ttl_s=spec.decision.unlock_ttl_s
            )

    def refused(self, door: str, action: str | None, *, actor: str, why: str) -> AccessEvent:
        """Log a command from outside that was refused, with who asked and why."""
        with self._actions() as actions:
            return actions.refused(door, action, actor=actor, why=why)

    def _actions(self):
        return DoorActions.opened(
            self.db_path, self.pipeline.actuators, self.hook, on_event=self._echo
        )

    # -- start-up steps ---------------------------------------------------------------

    def open_sources(self) -> dict[str, Source]:
        """Step 1: a run of sources named on the command line needs every one to open."""
        sources: dict[str, Source] = {}
        if self.site:  # the site's doors keep trying their sources while gate runs
            return sources
        for door in self.doors:
            try:
                sources[door.name] = open_source(door.source or "")
            except GateError as exc:
                for source in sources.values():
                    source.close()
                raise GateError(f"door {door.name}: {exc}") from None
        return sources

    def load_templates(self) -> None:
        """Step 2: the enrolled people's templates, into the matcher and the calibration."""
        with self._db() as db:
            self.pipeline.load_templates(db)

    def record_doors(self) -> None:
        """Step 4: every door of the run has its row (a door given with ``--source``)."""
        with self._db() as db:
            for door in self.doors:
                db.ensure_door(door.name)

    def start_actuators(self) -> None:
        """Step 3: connect the actuators, giving them the doors, MQTT, the keys, remote commands."""
        setup = ActuatorSetup(
            config=self.pipeline.config,
            doors=tuple(self.doors),
            keys_dir=self.keys_dir,
            mqtt=self.messaging.link,
            remote=self,
            show=self.preview.reader if self.preview is not None else ActuatorSetup.show,
        )
        for actuator in self.pipeline.actuators:
            actuator.start(setup)

    def start_preview(self) -> None:
        """The live view of the doors (``gate run --preview``), when asked for."""
        if self.preview is None:
            return
        for door in self.doors:
            self.preview.door(door.name)
        url = self.preview.start()
        logger.warning("live view of the doors: %s", url)

    def start_watchers(self) -> None:
        """Step 5: follow enrolments, door changes (a site) and retention while the run lasts."""
        threading.Thread(target=self._watch_roster, name="gate-roster", daemon=True).start()
        keep_purging(self.db_path, self.pipeline.config.retention, self._watching)
        if self.site:
            rows = self._door_rows()
            threading.Thread(
                target=self._watch_doors, args=(rows,), name="gate-doors", daemon=True
            ).start()

    def start_fleet(self) -> None:
        """Step 5b: an edge of a fleet follows the authority and forwards its log meanwhile."""
        if self.pipeline.config.fleet.role == "edge":
            from gate.fleet.edge import start_edge

            self.fleet = start_edge(self.pipeline.config, self.db_path, self.messaging)

    def stop_fleet(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None

    def start_doors(self, sources: dict[str, Source]) -> None:
        """Step 6: one loop per door, in a thread of its own."""
        with self._doors_lock:
            for door in self.doors:
                if not self._stopping.is_set():
                    self._start_door(door, sources.pop(door.name, None))

    def wait(self) -> None:
        """Until every door's source ends, or :meth:`stop`."""
        while not self._stopping.is_set():
            with self._doors_lock:
                alive = [t for _, t in self._running.values() if t.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=0.2)

    def stop(self) -> None:
        """End the run: every door finishes its open tracks and stops (SIGTERM, a test)."""
        self._stopping.set()
        with self._doors_lock:
            for loop, _ in self._running.values():
                loop.stop.set()

    def stop_doors(self) -> None:
        """Stop every door and the watchers, and wait for the doors' threads."""
        self.stop()
        self._watching.set()
        with self._doors_lock:
            threads = [t for _, t in self._running.values()]
        for thread in threads:
            thread.join(timeout=10)
        self.runtime.encoder.close()

    def stop_actuators(self) -> None:
        """Close the preview and the actuators (a lock shown open is shown locked), then the
        MQTT connection."""
        if self.preview is not None:
            self.preview.stop()
        for actuator in self.pipeline.actuators:
            try:
                actuator.close()
            except Exception:
                logger.exception("actuator %s failed to close", actuator.name)
        self.messaging.close()

    def running(self) -> list[DoorLoop]:
        """The loops of the doors running now."""
        with self._doors_lock:
            return [loop for loop, thread in self._running.values() if thread.is_alive()]

    def run(self) -> dict[str, RunStats]:
        """Run until every door's source ends, :meth:`stop` or Ctrl-C; stats per door."""
        sources = self.open_sources()
        try:
            self.load_templates()
            self.start_actuators()
            self.start_preview()
            self.record_doors()  # the first write: nothing is written when a step before fails
        except BaseException:
            for source in sources.values():
                source.close()
            self.stop_actuators()
            raise
        self.runtime.encoder = SharedEncoder(self.pipeline.encoder, parties=len(self.doors))
        try:
            self.start_watchers()
            self.start_fleet()
            self.start_doors(sources)
            self.wait()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self.stop_doors()
            for source in sources.values():
                source.close()
            self.stop_fleet()
            self.stop_actuators()
        if self.errors and len(self.errors) == len({loop.door.name for loop in self.loops}):
            raise GateError("; ".join(f"door {d}: {e}" for d, e in self.errors.items()))
        return {loop.door.name: loop.stats for loop in self.loops}

    def _db(self):
        return _opened(self.db_path)

    def _start_door(self, door: DoorSpec, source=None, stats: RunStats | None = None) -> None:
        """Start ``door``'s loop in a thread of its own (holding ``_doors_lock``)."""
        if self._detectors:
            detector = self._detectors.pop()
        elif not self._running and not self.loops:
            detector = self.pipeline.detector
        else:  # each thread its own detector: OpenCV's are not thread-safe
            detector = self.pipeline.build("detector", self.pipeline.config.pipeline.detector)
        self.runtime.encoder.set_parties(len(self._running) + 1)
        loop = DoorLoop(self.runtime, door, detector)
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
        if db is None:
            with self._db() as own:
                return self._door_rows(own)
        return {row["name"]: row for row in db.doors()}

    def _watch_doors(self, seen: dict[str, dict]) -> None:
        """Start, restart or stop doors as their rows in the database change."""
        stop = self._watching
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

    def _watch_roster(self) -> None:
        """Reload templates and names when someone is enrolled, removed or renamed meanwhile."""
        stop = self._watching
        db = GateDB(self.db_path)
        try:
            space = self.pipeline.encoder.space
            seen = db.roster_version(space)
            while not stop.wait(self.reload_s):
                version = db.roster_version(space)
                if version == seen:
                    continue
                seen = version
                count = self.pipeline.refresh(db)
                names = db.names()
                for loop in self.running():
                    loop.names = names
                logger.info("enrolment changed: %d templates of %d people", count, len(names))
        except Exception:
            logger.exception("template reloading stopped")
        finally:
            db.close()

    def _run_loop(self, loop: DoorLoop, source: Source | None) -> None:
        try:
            loop.run(source)
        except GateError as exc:
            self.errors[loop.door.name] = str(exc)
        except Exception as exc:
            self.errors[loop.door.name] = f"{type(exc).__name__}: {exc}"
            logger.exception("door %s stopped", loop.door.name)


@contextmanager
def _opened(path: Path) -> Iterator[GateDB]:
    db = GateDB(path)
    try:
        yield db
    finally:
        db.close()
