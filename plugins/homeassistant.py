"""Actuator ``homeassistant``: doors as Home Assistant devices through MQTT discovery.

Announces each door (retained discovery messages, sent again when Home
Assistant says ``online``), turns LOCK / UNLOCK / OPEN from senders the site
allows into door commands logged as remote (every refusal is logged too, with
the sender the command names), and keeps the lock's state: the controller's
own (``<prefix>/<door>/state``, signed with the door's key) once it reports
one, otherwise gate's relock timer. Also publishes the last person, the last
decision and "face in view", and whether each door's camera gives frames.
Announcing again repeats the states as they are now. Unlocks and locks that
another gate process sends (``gate doors unlock``) show like gate's own, from
their events on ``<prefix>/<door>/event``. Doors added or removed while gate
runs are announced or withdrawn (discovery and retained states).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import deque

from pydantic import Field, SecretStr, model_validator

from gate import hookimpl
from gate.actions.controller import Verifier
from gate.actions.signing import KeyStore, KeyStoreError
from gate.components import Actuator, ActuatorSetup, StrictOptions
from gate.messaging.homeassistant import (
    DISCOVERY_PREFIX,
    STATUS_TOPIC,
    discovery_payloads,
    door_topics,
    removal_payloads,
)
from gate.policy.remote import RemotePolicy, parse_request

logger = logging.getLogger("gate.homeassistant")


class HomeAssistantActuator(Actuator):
    """Publishes through gate's shared MQTT link; see ``[actuators.homeassistant]``."""

    name = "homeassistant"
    description = "Home Assistant MQTT discovery: lock, last person, last decision, face in view"
    delivers = False

    class Options(StrictOptions):
        discovery_prefix: str = Field(
            DISCOVERY_PREFIX, min_length=1, pattern=r"^[^#+ ]+$",
            description="Home Assistant's MQTT discovery prefix.",
        )  # fmt: skip
        status_topic: str = Field(
            STATUS_TOPIC, min_length=1, description="Where Home Assistant says it is online."
        )
        remote_allow: list[str] = Field(
            default_factory=list,
            description="Senders (a command's 'actor') whose remote commands are obeyed.",
        )
        remote_secret: SecretStr | None = Field(
            None, description="Remote commands must carry it as 'secret'; or GATE_REMOTE_SECRET."
        )
        remote_per_minute: int = Field(
            6, ge=1, le=600, description="Remote commands a door obeys in any minute."
        )
        remote_refused_per_minute: int = Field(
            10, ge=1, le=1000, description="After this many refused in a minute, refuse all."
        )

        @model_validator(mode="before")
        @classmethod
        def _secret_from_env(cls, data):
            secret = os.environ.get("GATE_REMOTE_SECRET")
            if isinstance(data, dict) and data.get("remote_secret") is None and secret:
                data = {**data, "remote_secret": secret}
            return data

    one_off = False
    _worker: threading.Thread | None = None

    def start(self, setup: ActuatorSetup) -> None:
        """Subscribe to the doors' lock commands and the controllers' states, and announce the
        doors whenever gate connects; a one-off process only withdraws doors it is told of."""
        self.config = setup.config
        self.link = setup.mqtt()
        self.doors = {door.name: door for door in setup.doors}
        self.one_off = setup.one_off
        self.remote = setup.remote
        self._controller_reports: set[str] = set()
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        self._lock_states: dict[str, str] = {}  # what the lock shows now, per door
        self._faces: dict[str, str] = {}
        self._own_events: deque[int] = deque(maxlen=1000)  # ids this process announced
        if self.one_off:  # the running gate shows this process's commands from their events
            return
        secret = self.options.remote_secret
        self.policy = RemotePolicy(
            self.options.remote_allow,
            secret.get_secret_value() if secret else None,
            per_minute=self.options.remote_per_minute,
            refused_per_minute=self.options.remote_refused_per_minute,
        )
        if not self.policy.enabled:
            logger.warning(
                "remote commands (Home Assistant's lock) are off: set remote_allow or "
                "remote_secret in [actuators.homeassistant] to allow them"
            )
        self.keys = KeyStore(setup.keys_dir)
        self._verifiers: dict[str, Verifier] = {}
        self._requests: queue.Queue = queue.Queue(maxsize=100)
        self._dropped = 0
        self._worker = threading.Thread(target=self._serve, name="gate-remote", daemon=True)
        self._worker.start()
        for name in self.doors:
            self._subscribe(name)
        self.link.subscribe(self.options.status_topic, self._on_ha_status)
        self.link.on_connected(self.announce_doors)

    def _subscribe(self, door: str) -> None:
        topics = door_topics(self.config, door)
        self.link.subscribe(topics["lock_set"], self._on_lock_set, raw=True)
        self.link.subscribe(topics["controller_state"], self._on_controller_state, raw=True)
        self.link.subscribe(topics["event"], self._on_event)

    def announce_doors(self, names: list[str] | None = None) -> None:
        """Send the doors' discovery messages and their states as they are now (retained)."""
        ask_code = self.policy.secret is not None
        for name in list(self.doors) if names is None else names:
            payloads = discovery_payloads(
                self.config, name, prefix=self.options.discovery_prefix, ask_code=ask_code
            )
            for topic, payload in payloads.items():
                self.link.publish(topic, payload, qos=1, retain=True)
            topics = door_topics(self.config, name)
            lock = self._lock_states.setdefault(name, "LOCKED")
            self.link.publish(topics["lock_state"], lock, qos=1, retain=True)
            face = self._faces.setdefault(name, "OFF")
            self.link.publish(topics["face"], face, qos=1, retain=True)

    def doors_changed(self, doors: list) -> None:
        """Announce doors added, withdraw doors gone (discovery and retained states)."""
        before, self.doors = self.doors, {door.name: door for door in doors}
        for name in sorted(before.keys() - self.doors.keys()):
            with self._lock:
                timer = self._timers.pop(name, None)
                self._controller_reports.discard(name)
            if timer:
                timer.cancel()
            self._lock_states.pop(name, None)
            self._faces.pop(name, None)
            self.link.door_available(name, None)
            removal = removal_payloads(self.config, name, prefix=self.options.discovery_prefix)
            for topic, payload in removal.items():
                self.link.publish(topic, payload, qos=1, retain=True)
            logger.info("door %s withdrawn from Home Assistant", name)
        added = sorted(self.doors.keys() - before.keys())
        if self.one_off:
            return
        for name in added:
            self._subscribe(name)
        self.announce_doors(added)

    def _door_of(self, topic: str, leaf: str) -> str | None:
        for name in list(self.doors):
            if door_topics(self.config, name)[leaf] == topic:
                return name
        return None

    def _show_lock(self, door: str, state: str) -> None:
        self._lock_states[door] = state
        self.link.publish(door_topics(self.config, door)["lock_state"], state, qos=1, retain=True)

    def _on_event(self, topic: str, payload: bytes) -> None:
        """An event another gate process announced (``gate doors unlock``): show it like ours."""
        door = self._door_of(topic, "event")
        try:
            event = json.loads(payload)
            event_id = event["id"]
        except (ValueError, TypeError, KeyError):
            return
        if door is None or event_id in self._own_events or event.get("door") != door:
            return
        if event.get("delivered") is True and door not in self._controller_reports:
            if event.get("decision") == "granted":
                self._unlocked(door)
            elif event.get("decision") == "lock":
                self._cancel_relock(door)
                self._show_lock(door, "LOCKED")
        self._announce_payload(door, event)

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            logger.info("Home Assistant is online: announcing %d door(s)", len(self.doors))
            self.announce_doors()

    def _on_lock_set(self, message) -> None:
        """Queue a remote command for the worker (the MQTT thread must not wait on the broker)."""
        door = self._door_of(message.topic, "lock_set")
        if door is None:
            return
        try:
            self._requests.put_nowait((door, bytes(message.payload), bool(message.retain)))
        except queue.Full:
            self._dropped += 1
            if self._dropped & (self._dropped - 1) == 0:  # 1, 2, 4, 8 ...: a flood, not a log flood
                logger.warning("remote commands arrive too fast: %d dropped", self._dropped)

    def _serve(self) -> None:
        """Decide on each remote command in arrival order; carry it out or log its refusal."""
        while (item := self._requests.get()) is not None:
            door, payload, retained = item
            try:
                self._remote(door, payload, retained)
            except Exception:
                logger.exception("remote command for %s failed", door)

    def _remote(self, door: str, payload: bytes, retained: bool) -> None:
        request = parse_request(door, payload, retained)
        why = self.policy.decide(request)
        if self.remote is None:
            logger.warning("no run to carry %s for %s", request.action or "a command", door)
            return
        if why is not None:
            logger.warning(
                "refused remote %s of %s from %r: %s",
                request.action or "command", door, request.actor, why,
            )  # fmt: skip
            self.remote.refused(door, request.action, actor=request.actor, why=why)
            return
        reason = "remote" if request.action == "unlock" else "lock"
        self.remote.command(door, request.action, actor=request.actor, reason=reason)

    def _verified_state(self, door: str, message) -> str | None:
        """The state a controller reports, if signed with the door's key; else None (logged)."""
        try:
            key = self.keys.key(door)
        except KeyStoreError as exc:
            logger.warning("cannot verify the state reported for %s: %s", door, exc)
            return None
        verifier = self._verifiers.get(door)
        if verifier is None:
            verifier = self._verifiers[door] = Verifier(door, key, kind="state")
        verifier.key = key  # the key may have been rotated meanwhile
        verdict = verifier.check(bytes(message.payload), retained=bool(message.retain))
        if not verdict.accepted:
            logger.warning(
                "not showing the state reported for %s (%r): %s, %s",
                door, verdict.fields.get("state") or bytes(message.payload)[:20],
                verdict.reason, verdict.detail,
            )  # fmt: skip
            return None
        return verdict.fields["state"]

    def _on_controller_state(self, message) -> None:
        door = self._door_of(message.topic, "controller_state")
        if door is None:
            return
        state = self._verified_state(door, message)
        if state is None:
            return
        with self._lock:
            self._controller_reports.add(door)
        self._cancel_relock(door)
        self._show_lock(door, state)

    def send(self, command) -> bool:
        """Show the lock's new state, unless the door's controller reports its own."""
        door = command.door
        self._own_events.append(command.event_id)
        if self.one_off or door not in self.doors or door in self._controller_reports:
            return False
        if command.action == "lock":
            self._cancel_relock(door)
            self._show_lock(door, "LOCKED")
            return False
        self._unlocked(door)
        return False

    def _unlocked(self, door: str) -> None:
        """Show UNLOCKED, and LOCKED again after the door's ``relock_s``."""
        spec = self.doors.get(door)
        if spec is None:
            return
        self._show_lock(door, "UNLOCKED")
        timer = threading.Timer(spec.relock_s, self._relock, args=(door,))
        timer.daemon = True
        with self._lock:
            old = self._timers.pop(door, None)
            self._timers[door] = timer
        if old:
            old.cancel()
        timer.start()

    def _cancel_relock(self, door: str) -> None:
        with self._lock:
            timer = self._timers.pop(door, None)
        if timer:
            timer.cancel()

    def _relock(self, door: str) -> None:
        with self._lock:
            self._timers.pop(door, None)
            if door in self._controller_reports or door not in self.doors:
                return
        self._show_lock(door, "LOCKED")

    def announce(self, event) -> None:
        if event.id is not None:
            self._own_events.append(event.id)
        if not self.one_off and event.door in self.doors:
            self._announce_payload(event.door, event.public())

    def _announce_payload(self, door: str, event: dict) -> None:
        """The last person (if one) and the last decision, retained."""
        topics = door_topics(self.config, door)
        if event.get("person"):
            self.link.publish(topics["person"], str(event["person"]), qos=1, retain=True)
        # no snapshot, and no card number: a credential is for the panel, not the broker
        payload = {k: v for k, v in event.items() if k not in ("snapshot", "credential")}
        self.link.publish(
            topics["decision"], json.dumps(payload, sort_keys=True), qos=1, retain=True
        )

    def presence(self, door: str, present: bool) -> None:
        if not self.one_off and door in self.doors:
            self._faces[door] = "ON" if present else "OFF"
            face = door_topics(self.config, door)["face"]
            self.link.publish(face, self._faces[door], qos=1, retain=True)

    def availability(self, door: str, available: bool, why: str) -> None:
        if not self.one_off and door in self.doors:
            self.link.door_available(door, available)

    def close(self) -> None:
        """Stop; a lock shown UNLOCKED by gate's own timer is left LOCKED, as the timer would."""
        timers = getattr(self, "_timers", {})
        for door, timer in list(timers.items()):
            timer.cancel()
            if self._lock_states.get(door) == "UNLOCKED":
                self._show_lock(door, "LOCKED")
        timers.clear()
        worker, self._worker = self._worker, None
        if worker is not None:  # closing twice (after the run, then with the pipeline) is fine
            try:
                self._requests.put(None, timeout=1.0)
            except queue.Full:
                return
            worker.join(timeout=5.0)


@hookimpl
def register_actuators(register):
    register(HomeAssistantActuator)
