"""Actuator ``homeassistant``: doors as Home Assistant devices through MQTT discovery.

Announces each door (retained discovery messages, sent again when Home
Assistant says ``online``), turns LOCK / UNLOCK / OPEN from Home Assistant into
door commands logged as remote, and keeps the lock's state: the controller's
own (``<prefix>/<door>/state``) once it reports one, otherwise gate's relock
timer. Also publishes the last person, the last decision and "face in view".
"""

from __future__ import annotations

import json
import logging
import threading

from gate import hookimpl
from gate.components import Actuator
from gate.homeassistant import LOCK_COMMANDS, LOCK_STATES, discovery_payloads, door_topics

logger = logging.getLogger("gate.homeassistant")


class HomeAssistantActuator(Actuator):
    """Publishes through gate's shared MQTT link; see ``[homeassistant]`` in the config."""

    name = "homeassistant"
    description = "Home Assistant MQTT discovery: lock, last person, last decision, face in view"
    delivers = False

    def start(self) -> None:
        context = self.context
        self.config = context.config
        self.link = context.mqtt_link()
        self.doors = {door.name: door for door in context.doors}
        self._controller_reports: set[str] = set()
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        for name in self.doors:
            topics = door_topics(self.config, name)
            self.link.subscribe(topics["lock_set"], self._on_lock_set)
            self.link.subscribe(topics["controller_state"], self._on_controller_state)
        self.link.subscribe(self.config.homeassistant.status_topic, self._on_ha_status)
        self.link.on_connected(self.announce_doors)

    def announce_doors(self) -> None:
        """Send every door's discovery messages and initial states (retained)."""
        for name in self.doors:
            for topic, payload in discovery_payloads(self.config, name).items():
                self.link.publish(topic, payload, qos=1, retain=True)
            topics = door_topics(self.config, name)
            if name not in self._controller_reports:
                self.link.publish(topics["lock_state"], "LOCKED", qos=1, retain=True)
            self.link.publish(topics["face"], "OFF", qos=1, retain=True)

    def _door_of(self, topic: str, leaf: str) -> str | None:
        for name in self.doors:
            if door_topics(self.config, name)[leaf] == topic:
                return name
        return None

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            logger.info("Home Assistant is online: announcing %d door(s)", len(self.doors))
            self.announce_doors()

    def _on_lock_set(self, topic: str, payload: bytes) -> None:
        door = self._door_of(topic, "lock_set")
        action = LOCK_COMMANDS.get(payload.decode("utf-8", "replace").strip().upper())
        if door is None or action is None:
            logger.warning("ignoring %r on %s", payload[:40], topic)
            return
        remote = getattr(self.context, "remote_command", None)
        if remote is None:
            logger.warning("no door loop to carry %s for %s", action, door)
            return
        # off the MQTT network thread: sending waits for the broker's acknowledgement
        threading.Thread(
            target=remote,
            args=(door, action),
            kwargs={
                "actor": "home-assistant",
                "reason": "remote" if action == "unlock" else "lock",
            },
            name=f"gate-remote-{door}",
            daemon=True,
        ).start()

    def _on_controller_state(self, topic: str, payload: bytes) -> None:
        door = self._door_of(topic, "controller_state")
        state = payload.decode("utf-8", "replace").strip().upper()
        if door is None or state not in LOCK_STATES:
            return
        with self._lock:
            self._controller_reports.add(door)
            timer = self._timers.pop(door, None)
        if timer:
            timer.cancel()
        self.link.publish(door_topics(self.config, door)["lock_state"], state, qos=1, retain=True)

    def send(self, command) -> bool:
        """Show the lock's new state, unless the door's controller reports its own."""
        door = command.door
        if door not in self.doors or door in self._controller_reports:
            return False
        topic = door_topics(self.config, door)["lock_state"]
        if command.action == "lock":
            self.link.publish(topic, "LOCKED", qos=1, retain=True)
            return False
        self.link.publish(topic, "UNLOCKED", qos=1, retain=True)
        timer = threading.Timer(self.doors[door].relock_s, self._relock, args=(door,))
        timer.daemon = True
        with self._lock:
            old = self._timers.pop(door, None)
            self._timers[door] = timer
        if old:
            old.cancel()
        timer.start()
        return False

    def _relock(self, door: str) -> None:
        with self._lock:
            self._timers.pop(door, None)
            if door in self._controller_reports:
                return
        self.link.publish(
            door_topics(self.config, door)["lock_state"], "LOCKED", qos=1, retain=True
        )

    def announce(self, event) -> None:
        topics = door_topics(self.config, event.door)
        if event.door not in self.doors:
            return
        if event.person:
            self.link.publish(topics["person"], event.person, qos=1, retain=True)
        payload = {k: v for k, v in event.public().items() if k != "snapshot"}
        self.link.publish(
            topics["decision"], json.dumps(payload, sort_keys=True), qos=1, retain=True
        )

    def presence(self, door: str, present: bool) -> None:
        if door in self.doors:
            face = door_topics(self.config, door)["face"]
            self.link.publish(face, "ON" if present else "OFF", qos=1, retain=True)

    def close(self) -> None:
        for timer in list(getattr(self, "_timers", {}).values()):
            timer.cancel()


@hookimpl
def register_actuators(register):
    register(HomeAssistantActuator)
