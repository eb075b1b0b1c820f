"""Actuator ``mqtt``: unlock commands on ``<prefix>/<door>/command``, decisions on ``.../event``."""

from __future__ import annotations

import json
import logging

from gate import hookimpl
from gate.components import Actuator

logger = logging.getLogger("gate.mqtt")


class MqttActuator(Actuator):
    """Publishes through gate's shared MQTT link (see ``[mqtt]`` in the config)."""

    name = "mqtt"
    description = "MQTT: QoS 1 commands with expiry, every decision as an event"

    def start(self) -> None:
        self.link = self.context.mqtt_link()
        wait = self.context.config.mqtt.connect_wait_s
        if not self.link.wait_connected(wait):
            logger.warning("MQTT broker not reachable after %.0f s; going on, retrying", wait)

    def send(self, command) -> bool:
        topic = self.link.topic(command.door, "command")
        return self.link.publish_command(topic, command.to_json(), command.expires_at)

    def announce(self, event) -> None:
        payload = json.dumps(event.public(), sort_keys=True)
        self.link.publish(self.link.topic(event.door, "event"), payload, qos=1)


@hookimpl
def register_actuators(register):
    register(MqttActuator)
