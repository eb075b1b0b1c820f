"""Actuator ``mqtt``: signed commands on ``<prefix>/<door>/command``, decisions on ``.../event``.

Every command carries ``type``, ``seq`` (rising per door, kept across restarts),
a random ``nonce`` and ``sig``, the HMAC-SHA256 under the door's key (see
``gate.actions.signing`` and docs/security.md). A door without a key gets one on its
first command; a command that cannot be signed is not sent.
"""

from __future__ import annotations

import json
import logging

from pydantic import Field

from gate import hookimpl
from gate.actions.signing import KeyStore, KeyStoreError
from gate.components import Actuator, ActuatorSetup, StrictOptions
from gate.errors import ComponentError

logger = logging.getLogger("gate.mqtt")


class MqttActuator(Actuator):
    """Publishes through gate's shared MQTT link (see ``[mqtt]`` in the config)."""

    name = "mqtt"
    description = "MQTT: signed QoS 1 commands with expiry, every decision as an event"

    class Options(StrictOptions):
        keys_dir: str | None = Field(
            None,
            min_length=1,
            description="Doors' signing keys; default: keys/ beside the database.",
        )

    _doors: frozenset[str] = frozenset()  # the run's doors

    def start(self, setup: ActuatorSetup) -> None:
        """Connect; a run (doors given) without its broker stops here unless not ``required``.

        A one-off command (the CLI) goes on instead and is logged as not delivered.
        """
        self.link = setup.mqtt()
        self.keys = KeyStore(setup.keys_dir)
        self._doors = frozenset(door.name for door in setup.doors)
        settings = setup.config.mqtt
        if not settings.required:
            logger.warning(
                "[mqtt] required = false: gate runs on without its broker, unlocks undelivered"
            )
        if self.link.wait_ready(settings.connect_wait_s):
            return
        problem = self.link.problem or (
            f"MQTT broker {self.link.host}:{self.link.port} not reachable "
            f"after {settings.connect_wait_s:g} s"
        )
        if settings.required and not setup.one_off:
            raise ComponentError(
                f"{problem}: no unlock could be delivered, so gate does not start "
                "([mqtt] required = false runs it anyway)"
            )
        logger.error(
            "%s: UNLOCKS CANNOT BE DELIVERED; gate goes on deciding and logging, and retries",
            problem,
        )

    def send(self, command) -> bool:
        topic = self.link.topic(command.door, "command")
        fields = {**json.loads(command.to_json()), "type": "command"}
        try:
            payload = self.keys.sign(command.door, fields).decode("ascii")
        except KeyStoreError as exc:
            logger.error("%s for door %s not sent: cannot sign it: %s", command.action,
                         command.door, exc)  # fmt: skip
            return False
        return self.link.publish_command(topic, payload, command.expires_at)

    def announce(self, event) -> None:
        fields = event.public()
        fields.pop("credential", None)  # a card number is for the panel, not the broker
        payload = json.dumps(fields, sort_keys=True)
        self.link.publish(self.link.topic(event.door, "event"), payload, qos=1)

    def availability(self, door: str, available: bool, why: str) -> None:
        """``<prefix>/<door>/availability``: ``online`` while the door's camera gives frames."""
        self.link.door_available(door, available)

    def doors_changed(self, doors: list) -> None:
        """Clear the availability of doors no longer run."""
        names = frozenset(door.name for door in doors)
        for name in self._doors - names:
            self.link.door_available(name, None)
        self._doors = names


@hookimpl
def register_actuators(register):
    register(MqttActuator)
