"""Actuator ``log``: writes each unlock and decision to gate's log (delivers nothing)."""

from __future__ import annotations

import logging

from gate import hookimpl
from gate.components import Actuator

logger = logging.getLogger("gate.decisions")


class LogActuator(Actuator):
    """For trying gate out and for audit trails in the process log."""

    name = "log"
    description = "log unlocks and decisions; delivers nothing"
    delivers = False

    def send(self, command) -> bool:
        logger.info(
            "%s door=%s person=%s event=%s expires=%.3f",
            command.action,
            command.door,
            command.person,
            command.event_id,
            command.expires_at,
        )
        return False

    def announce(self, event) -> None:
        logger.info(
            "%s door=%s person=%s reason=%s distance=%s",
            event.decision,
            event.door,
            event.person,
            event.reason,
            None if event.distance is None else round(event.distance, 3),
        )


@hookimpl
def register_actuators(register):
    register(LogActuator)
