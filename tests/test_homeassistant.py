"""Home Assistant over a real mosquitto: discovery, remote unlock, lock state, manual commands."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from gate.actions.controller import signed
from gate.actions.signing import KeyStore
from gate.config import parse_config
from gate.demo import sample_path
from gate.messaging.homeassistant import discovery
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB

REQUIRED = {  # what Home Assistant's MQTT platforms require, plus what gate promises
    "lock": {"command_topic", "state_topic", "payload_lock", "payload_unlock", "payload_open",
             "state_locked", "state_unlocked", "state_jammed"},
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic", "payload_on", "payload_off"},
}  # fmt: skip
COMMON = {"unique_id", "name", "availability", "availability_mode"}
SECRET = "s3cret"


def site_config(port: int, **homeassistant):
    return parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"gate-test-{port}"},
            "pipeline": {"actuators": ["mqtt", "homeassistant"]},
            "decision": {"relock_s": 0.5},
            "actuators": {"homeassistant": {"remote_allow": ["home-assistant"],
                                            "remote_secret": SECRET, **homeassistant}},
        }
    )  # fmt: skip


@pytest.fixture
def site(tmp_path, pm, mosquitto):
    """A database with the sample people enrolled and door ``front`` on the sample clip."""
    config = site_config(mosquitto.port)
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    for person in sorted(p for p in sample_path("people").iterdir() if p.is_dir()):
        assert enroll(db, pipeline, person.name, list_images(person)).stored
    db.add_door("front", source=str(sample_path("door.mp4")))
    yield config, pipeline, db
    pipeline.close()
    db.close()


def start(pipeline, db, pm, realtime: bool) -> tuple[Runner, threading.Thread]:
    runner = Runner(
        pipeline, db.path, doors_for_run(db, pipeline.config, [], None), hook=pm.hook,
        realtime=realtime,
    )  # fmt: skip
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def stop(runner: Runner, thread: threading.Thread) -> None:
    for loop in runner.loops:
        loop.stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_discovery_is_retained_with_the_keys_home_assistant_requires(
    site, pm, subscribe, mosquitto
):
    config, pipeline, db = site
    _runner, thread = start(pipeline, db, pm, realtime=False)
    thread.join(timeout=120)
    late = subscribe(mosquitto.port, "homeassistant/#")  # after gate: retained only
    expected = discovery(config, "front", ask_code=True)  # a secret is set: asked as a code
    for topic, body in expected.items():
        (message,) = late.wait_for(topic)
        payload, retained, _ = message
        assert retained
        assert SECRET.encode() not in payload  # never in a retained message
        sent = json.loads(payload)
        assert sent == json.loads(json.dumps(body))
        component = topic.split("/")[1]
        assert REQUIRED[component] | COMMON <= set(sent), component
        topics = [a["topic"] for a in sent["availability"]]
        assert topics == ["gate/status", "gate/front/availability"]
        assert sent["availability_mode"] == "all"  # gate runs, and the door's camera gives frames
        assert sent["device"]["identifiers"] == ["gate_front"]
    assert {t.split("/")[1] for t in expected} == {"lock", "sensor", "binary_sensor"}
    lock = next(body for topic, body in expected.items() if "/lock/" in topic)
    assert lock["code_format"] == ".+" and '"actor":"home-assistant"' in lock["command_template"]
    states = subscribe(mosquitto.port, "gate/front/+")
    assert states.wait_for("gate/front/person")[0][0] == b"biden"  # the clip's last grant
    assert states.wait_for("gate/front/face")[0][0] == b"OFF"
    decision = json.loads(states.wait_for("gate/front/decision")[0][0])
    last = db.events()[0]  # newest first: the cameraman's track, denied when it ended
    assert (decision["id"], decision["decision"], decision["reason"]) == (
        last.id,
        last.decision,
        last.reason,
    )
    assert any(e.decision == "granted" and e.person == "biden" for e in db.events())


def test_unlock_from_home_assistant_reaches_the_controller_and_the_log(
    site, pm, subscribe, mosquitto
):
    config, pipeline, db = site
    watch = subscribe(mosquitto.port, "#")
    runner, thread = start(pipeline, db, pm, realtime=True)
    try:
        lock_config = next(t for t in discovery(config, "front") if "/lock/" in t)
        assert watch.wait_for(lock_config, timeout=20), "gate announced the door"
        time.sleep(0.3)
        ha = subscribe(mosquitto.port, "gate/front/command")
        pressed = json.dumps({"action": "UNLOCK", "actor": "home-assistant", "secret": SECRET})
        ha.client.publish("gate/front/lock/set", pressed, qos=1).wait_for_publish(5)
        commands = [json.loads(m[0]) for m in ha.wait_for("gate/front/command", timeout=10)]
        remote = [c for c in commands if c["reason"] == "remote"]
        assert remote and remote[0]["action"] == "unlock"
        assert remote[0]["actor"] == "home-assistant"
        states = [m[0] for m in watch.wait_for("gate/front/lock", count=3, timeout=5)]
        assert states[:3] == [b"LOCKED", b"UNLOCKED", b"LOCKED"]  # relocked by gate's timer

        ha.client.publish("gate/front/state", "JAMMED", qos=1).wait_for_publish(5)  # forged
        time.sleep(0.3)
        assert len(watch.on("gate/front/lock")) == 3  # not shown
        key = KeyStore(db.path.parent / "keys").key("front")  # made for the first command
        jammed = signed("state", "front", key, int(time.time()), 10.0, state="JAMMED")
        ha.client.publish("gate/front/state", jammed, qos=1).wait_for_publish(5)
        assert watch.wait_for("gate/front/lock", count=4)[-1][0] == b"JAMMED"

        before = len(watch.on(lock_config))
        ha.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert len(watch.wait_for(lock_config, count=before + 1)) == before + 1
    finally:
        stop(runner, thread)
    logged = [e for e in db.events() if e.reason == "remote"]
    assert len(logged) == 1
    assert logged[0].decision == "granted" and logged[0].actor == "home-assistant"
    assert logged[0].delivered is True
    assert remote[0]["event_id"] == logged[0].id


def gate_cli(config_path, db_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATE_CONFIG": str(config_path), "GATE_DB": str(db_path)}
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_manual_unlock_and_door_removal_from_the_command_line(tmp_path, mosquitto, subscribe):
    config_path = tmp_path / "gate.toml"
    config_path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n')
    db_path = tmp_path / "gate.db"
    assert gate_cli(config_path, db_path, "doors", "add", "garage", "--source", "0").returncode == 0
    watch = subscribe(mosquitto.port, "#")

    result = gate_cli(config_path, db_path, "doors", "unlock", "garage", "--reason", "parcel")
    assert result.returncode == 0, result.stderr
    (command,) = [json.loads(m[0]) for m in watch.wait_for("gate/garage/command")]
    assert command["action"] == "unlock" and command["reason"] == "manual"
    assert command["actor"] == getpass.getuser()
    assert {"seq", "nonce", "sig"} <= set(command)  # signed with the door's key
    db = GateDB(db_path)
    (event,) = db.events()
    assert (event.decision, event.reason, event.note, event.delivered) == (
        "granted", "manual", "parcel", True,
    )  # fmt: skip
    assert event.actor == getpass.getuser() and command["event_id"] == event.id

    config = parse_config({"mqtt": {"host": "127.0.0.1", "port": mosquitto.port}})
    for topic, payload in discovery(config, "garage").items():  # as a running gate left them
        watch.client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    result = gate_cli(config_path, db_path, "doors", "remove", "garage", "--yes")
    assert result.returncode == 0, result.stderr
    for topic in discovery(config, "garage"):
        assert watch.wait_for(topic, count=2)[-1][0] == b""  # an empty retained message
    late = subscribe(mosquitto.port, "homeassistant/#")
    time.sleep(0.5)
    assert late.messages == []  # nothing retained any more: Home Assistant forgets the door
    assert db.door("garage") is None
    db.close()


def test_manual_unlock_with_the_broker_down_is_logged_as_not_delivered(tmp_path, mosquitto):
    config_path = tmp_path / "gate.toml"
    config_path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n')
    db_path = tmp_path / "gate.db"
    assert gate_cli(config_path, db_path, "doors", "add", "garage").returncode == 0
    mosquitto.stop()
    result = gate_cli(config_path, db_path, "doors", "unlock", "garage")
    assert result.returncode == 1 and "NOT delivered" in result.stdout
    assert "Traceback" not in result.stderr
    db = GateDB(db_path)
    assert [(e.reason, e.delivered) for e in db.events()] == [("manual", False)]
    db.close()
