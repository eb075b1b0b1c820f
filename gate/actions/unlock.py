"""The one path from a decision to the door: log, command, deliver, mark delivered, announce.

A face granted by the loop, an unlock by hand (``gate doors unlock``) and a
command from Home Assistant all go through :class:`DoorActions`. The event is
stored before anything is sent, so its id travels with the command; a command
is only sent before it expires; then every actuator and every
``access_decided`` observer hears of the event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gate.components import Action, Actuator, DoorCommand
from gate.plugins import broadcast
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso

logger = logging.getLogger("gate.actions")


def deliver(actuators: Sequence[Actuator], command: DoorCommand) -> bool | None:
    """Send ``command`` through every actuator before it expires; None when none delivers."""
    results = []
    for actuator in actuators:
        if command.expired(time.time()):
            logger.warning(
                "command for event %s expired before %s", command.event_id, actuator.name
            )
            ok = False
        else:
            try:
                ok = actuator.send(command)
            except Exception:
                logger.exception("actuator %s failed to send", actuator.name)
                ok = False
        if actuator.delivers and ok is not None:  # None: not a door this actuator serves
            results.append(bool(ok))
    return all(results) if results else None


class DoorActions:
    """Owns the way out: the database (one connection, this thread's), the actuators, the hook.

    ``on_event`` is called last with every event (``gate run`` prints them).
    """

    def __init__(
        self,
        db: GateDB,
        actuators: Sequence[Actuator],
        hook=None,
        on_event: Callable[[AccessEvent], None] | None = None,
    ):
        self.db = db
        self.actuators = list(actuators)
        self.hook = hook
        self.on_event = on_event

    @classmethod
    @contextmanager
    def opened(
        cls,
        db_path: Path,
        actuators: Sequence[Actuator],
        hook=None,
        on_event: Callable[[AccessEvent], None] | None = None,
    ) -> Iterator[DoorActions]:
        """Actions on a connection of their own, closed afterwards (for another thread)."""
        db = GateDB(db_path)
        try:
            yield cls(db, actuators, hook, on_event)
        finally:
            db.close()

    def decided(
        self,
        event: AccessEvent,
        *,
        expires_at: float,
        passage: tuple[str, str] | None = None,
    ) -> AccessEvent:
        """A face decision: logged; if granted, the unlock sent until ``expires_at`` and the
        passage (``(area, direction)``) recorded; then announced."""
        command = None
        if event.decision == "granted":
            event.credential = self._credential(event.person_id)
            command = self._command(event, "unlock", expires_at)
        return self._carry(event, command, passage)

    def _credential(self, person_id: int | None) -> str | None:
        """The person's card credential, when an actuator presents credentials to a panel."""
        if person_id is None or not any(a.presents_credentials for a in self.actuators):
            return None
        return self.db.credential(person_id)

    def command(
        self,
        door: str,
        action: Action,
        *,
        reason: str,
        actor: str | None,
        note: str | None = None,
        ttl_s: float = 2.0,
    ) -> AccessEvent:
        """An unlock or lock that someone asked for (by hand, from home automation)."""
        if action not in ("unlock", "lock"):
            raise ValueError(f"unknown door action {action!r}")
        now = time.time()
        event = AccessEvent(
            time=utc_iso(now),
            door=door,
            decision="granted" if action == "unlock" else "lock",
            reason=reason,
            actor=actor,
            note=note,
        )
        return self._carry(event, self._command(event, action, now + ttl_s))

    def refused(self, door: str, action: str | None, *, actor: str, why: str) -> AccessEvent:
        """A command from outside that was refused: logged (who it says asked, why), announced."""
        event = AccessEvent(
            time=utc_iso(time.time()),
            door=door,
            decision="denied",
            reason="remote_refused",
            actor=actor,
            note=f"{action or 'command'} refused: {why}",
        )
        return self._carry(event, None)

    @staticmethod
    def _command(event: AccessEvent, action: Action, expires_at: float) -> DoorCommand:
        return DoorCommand(
            door=event.door,
            person=event.person,
            person_id=event.person_id,
            distance=event.distance,
            event_id=None,
            issued_at=time.time(),
            expires_at=expires_at,
            reason=event.reason,
            action=action,
            actor=event.actor,
            credential=event.credential,
        )

    def _carry(
        self,
        event: AccessEvent,
        command: DoorCommand | None,
        passage: tuple[str, str] | None = None,
    ) -> AccessEvent:
        self.db.add_event(event)
        if command is not None:
            command = command.for_event(event.id)
            event.delivered = deliver(self.actuators, command)
            if event.delivered is not None:
                self.db.set_delivered(event.id, event.delivered)
            if passage is not None and event.person_id is not None:
                area, direction = passage
                self.db.record_passage(area, event.person_id, direction, event.time, event.id)
        self.announce(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def announce(self, event: AccessEvent) -> None:
        """Tell every actuator and every ``access_decided`` observer; failures are logged only."""
        for actuator in self.actuators:
            try:
                actuator.announce(event)
            except Exception:
                logger.exception("actuator %s failed to announce event %s", actuator.name, event.id)
        if self.hook is not None:
            broadcast(self.hook.access_decided, event=event)
