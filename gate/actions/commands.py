"""Door commands that do not come from a face: by hand from the CLI, or from Home Assistant."""

from __future__ import annotations

import time

from gate.components import Actuator, DoorCommand
from gate.runtime.loop import deliver, publish
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso


def door_command(
    db: GateDB,
    actuators: list[Actuator],
    hook,
    door: str,
    action: str,
    *,
    reason: str,
    actor: str | None,
    note: str | None = None,
    ttl_s: float = 2.0,
) -> AccessEvent:
    """Log an unlock or lock that a person asked for, then send it before it expires."""
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
    db.add_event(event)
    command = DoorCommand(
        door=door,
        person=None,
        person_id=None,
        distance=None,
        event_id=event.id,
        issued_at=now,
        expires_at=now + ttl_s,
        reason=reason,
        action=action,
        actor=actor,
    )
    event.delivered = deliver(actuators, command)
    if event.delivered is not None:
        db.set_delivered(event.id, event.delivered)
    publish(actuators, hook, event)
    return event


def refuse_remote(
    db: GateDB,
    actuators: list[Actuator],
    hook,
    door: str,
    action: str | None,
    *,
    actor: str,
    why: str,
) -> AccessEvent:
    """Log a remote command that was refused (who it says asked, and why) and announce it."""
    event = AccessEvent(
        time=utc_iso(time.time()),
        door=door,
        decision="denied",
        reason="remote_refused",
        actor=actor,
        note=f"{action or 'command'} refused: {why}",
    )
    db.add_event(event)
    publish(actuators, hook, event)
    return event
