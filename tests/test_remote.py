"""Remote commands on a real mosquitto: only allowed senders, never retained, rate-limited, logged.

gate's real actuators and command path (``Runner.attach``), without a camera:
commands arrive on ``gate/<door>/lock/set`` as Home Assistant's lock sends them.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from gate.actions.controller import Verifier, signed
from gate.actions.signing import KeyStore
from gate.config import parse_config
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB

ALLOWED = {"remote_allow": ["home-assistant"], "remote_secret": "s3cret", "remote_per_minute": 3}


def ha(action: str = "UNLOCK", actor: str = "home-assistant", **extra) -> str:
    return json.dumps({"action": action, "actor": actor, **extra})


class Site:
    """A door ``front`` served by gate's mqtt and homeassistant actuators."""

    def __init__(self, tmp_path, pm, port: int, options: dict):
        self.config = parse_config(
            {
                "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"gate-test-{port}"},
                "pipeline": {"actuators": ["mqtt", "homeassistant"]},
                "decision": {"relock_s": 0.5},
                "actuators": {"homeassistant": options},
            }
        )
        self.db = GateDB(tmp_path / "gate.db")
        self.db.add_door("front", source="0")
        self.pipeline = Pipeline(self.config, pm.registry)
        doors = doors_for_run(self.db, self.config, ["front"], None)
        self.runner = Runner(self.pipeline, self.db.path, doors, hook=pm.hook)
        self.keys = KeyStore(tmp_path / "keys")  # beside the database
        self.port = port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def start(self) -> None:
        self.runner.start_actuators()
        self.wait_announced()

    def wait_announced(self, timeout: float = 10.0) -> None:
        """Wait for the door's retained lock state: gate announces it after subscribing to
        the door's commands, so commands sent from now on are heard (not lost on a loaded
        machine before gate's subscription reached the broker)."""
        seen = threading.Event()
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        watcher.on_message = lambda *_: seen.set()
        watcher.connect("127.0.0.1", self.port)
        watcher.subscribe("gate/front/lock", qos=1)
        watcher.loop_start()
        try:
            assert seen.wait(timeout), "gate never announced the door"
        finally:
            watcher.loop_stop()
            watcher.disconnect()

    def send(self, payload, topic: str = "gate/front/lock/set", retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def events(self, count: int, timeout: float = 10.0) -> list:
        """The log's remote events, oldest first, once there are ``count`` of them, all sent."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.db.events() if e.reason in ("remote", "remote_refused")]
            sent = all(e.delivered is not None for e in found if e.reason == "remote")
            if (len(found) >= count and sent) or time.monotonic() > deadline:
                return sorted(found, key=lambda e: e.id)
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.runner.stop_actuators()
        self.pipeline.close()
        self.db.close()


@pytest.fixture
def site(tmp_path, pm, mosquitto):
    made: list[Site] = []

    def make(**options) -> Site:
        made.append(Site(tmp_path, pm, mosquitto.port, options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_remote_unlock_needs_an_allowed_sender_and_the_secret(site, mosquitto, subscribe):
    door = site(**ALLOWED)
    door.send(ha(secret="s3cret"), retain=True)  # waits on the broker for gate's next start
    door.start()
    watch = subscribe(mosquitto.port, "gate/front/command")
    door.send(ha(actor="mallory", secret="s3cret"))
    door.send(ha(secret="guess"))
    door.send(ha())  # no secret
    door.send("UNLOCK")  # Home Assistant's plain payload names nobody
    door.send(ha(secret="s3cret"))
    events = door.events(6)
    refused = [(e.actor, e.note) for e in events if e.reason == "remote_refused"]
    assert refused == [
        ("home-assistant", "unlock refused: a retained command is never obeyed"),
        ("mallory", "unlock refused: sender 'mallory' is not allowed"),
        ("home-assistant", "unlock refused: wrong or missing secret"),
        ("home-assistant", "unlock refused: wrong or missing secret"),
        ("unknown", "unlock refused: sender 'unknown' is not allowed"),
    ]
    assert all(e.decision == "denied" for e in events[:5])
    ok = events[5]
    expected = ("granted", "remote", "home-assistant", True)
    assert (ok.decision, ok.reason, ok.actor, ok.delivered) == expected
    (command,) = [json.loads(m[0]) for m in watch.wait_for("gate/front/command")]
    assert (command["actor"], command["reason"], command["event_id"]) == (
        "home-assistant", "remote", ok.id,
    )  # fmt: skip
    assert "sig" in command and "seq" in command and "nonce" in command
    decisions = subscribe(mosquitto.port, "gate/front/event")
    door.send(ha(actor="eve"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the grant's own event may still be on its way
        eves = [e for e in map(json.loads, (m[0] for m in decisions.on("gate/front/event")))
                if e["actor"] == "eve"]  # fmt: skip
        if eves:
            break
        time.sleep(0.05)
    (event,) = eves
    assert (event["decision"], event["reason"], event["actor"]) == (
        "denied", "remote_refused", "eve",
    )  # fmt: skip


def test_remote_commands_are_rate_limited_per_door(site, mosquitto, subscribe):
    door = site(**ALLOWED)
    door.start()
    watch = subscribe(mosquitto.port, "gate/front/command")
    for _ in range(10):  # a burst, as in the issue
        door.send(ha(secret="s3cret"))
    events = door.events(10)
    assert [e.reason for e in events].count("remote") == 3
    limited = [e for e in events if e.reason == "remote_refused"]
    assert len(limited) == 7
    assert all(e.note == "unlock refused: rate limit: at most 3 per minute" for e in limited)
    time.sleep(0.5)
    assert len(watch.on("gate/front/command")) == 3


def test_guessing_the_secret_is_cut_short(site):
    door = site(**ALLOWED, remote_refused_per_minute=3)
    door.start()
    for guess in ("a", "b", "c", "s3cret"):
        door.send(ha(secret=guess))
    events = door.events(4)
    assert [e.reason for e in events] == ["remote_refused"] * 4
    assert events[3].note == "unlock refused: 3 refused in the last minute: refusing all for now"


def test_remote_commands_are_off_unless_the_site_allows_them(site, mosquitto, subscribe, caplog):
    caplog.set_level(logging.WARNING, logger="gate.homeassistant")
    door = site()
    door.start()
    assert "remote commands (Home Assistant's lock) are off" in caplog.text
    watch = subscribe(mosquitto.port, "gate/front/command")
    door.send(ha(secret="anything"))
    door.send("UNLOCK")
    events = door.events(2)
    assert [(e.decision, e.actor) for e in events] == [
        ("denied", "home-assistant"), ("denied", "unknown"),
    ]  # fmt: skip
    assert all("remote commands are off" in e.note for e in events)
    time.sleep(0.3)
    assert watch.on("gate/front/command") == []


def test_lock_state_is_shown_only_when_the_controller_signed_it(site, mosquitto, subscribe):
    door = site(**ALLOWED)
    door.start()
    key = door.keys.key("front", create=True)
    watch = subscribe(mosquitto.port, "gate/front/lock")
    assert watch.wait_for("gate/front/lock")[0][0] == b"LOCKED"
    door.send("JAMMED", topic="gate/front/state")  # anyone may publish this
    forged = signed("state", "front", "0" * 64, int(time.time()), 10.0, state="JAMMED")
    door.send(forged, topic="gate/front/state")
    time.sleep(0.5)
    assert [m[0] for m in watch.on("gate/front/lock")] == [b"LOCKED"]
    genuine = signed("state", "front", key, int(time.time()), 10.0, state="JAMMED")
    door.send(genuine, topic="gate/front/state")
    assert watch.wait_for("gate/front/lock", 2)[-1][0] == b"JAMMED"
    door.send(genuine, topic="gate/front/state")  # replayed: not shown again
    time.sleep(0.3)
    assert len(watch.on("gate/front/lock")) == 2
    assert Verifier("front", key, kind="state").check(genuine).accepted  # it was genuine
