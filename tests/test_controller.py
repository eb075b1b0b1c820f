"""The reference controller on a real mosquitto: signed commands open, forgeries are refused."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from gate.actions.controller import Controller, Verifier, load_relay
from gate.actions.signing import KeyStore, seal
from gate.components import ActuatorSetup, DoorCommand
from gate.config import parse_config
from gate.messaging.connection import Messaging
from gate_plugins.mqtt_actuator import MqttActuator


class RecordingRelay:
    """A relay that remembers what it was told, for the test to read."""

    def __init__(self, door: str = "front"):
        self.door = door
        self.orders: list[tuple[str, dict | None]] = []

    def unlock(self, command):
        self.orders.append(("unlock", command))

    def lock(self, command):
        self.orders.append(("lock", command))

    def unlocks(self) -> list[dict]:
        return [c for order, c in self.orders if order == "unlock"]


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, payload, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def unlock_command(ttl: float = 2.0, **changes) -> DoorCommand:
    now = time.time()
    fields = dict(door="front", person="alice", person_id=3, distance=0.41, event_id=7,
                  issued_at=now, expires_at=now + ttl)  # fmt: skip
    return DoorCommand(**{**fields, **changes})


def signed_command(watch) -> bytes:
    """The first command on gate/front/command that carries a signature."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [m[0] for m in watch.on("gate/front/command") if b'"sig":' in m[0]]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no signed command was published")


@pytest.fixture
def gate_side(tmp_path, mosquitto):
    """gate's own mqtt actuator, signing with keys in tmp_path/keys."""
    config = parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "gate-test"},
            "actuators": {"mqtt": {"keys_dir": str(tmp_path / "keys")}},
        }
    )
    context = Messaging(config, tmp_path / "keys")
    actuator = MqttActuator(MqttActuator.Options(keys_dir=str(tmp_path / "keys")))
    actuator.start(ActuatorSetup(config, (), tmp_path / "keys", context.link, one_off=True))
    yield config, actuator, KeyStore(tmp_path / "keys")
    context.close()


def test_signed_commands_open_and_forgeries_are_refused_and_reported(
    gate_side, mosquitto, subscribe, tmp_path, caplog
):
    config, actuator, store = gate_side
    key = store.key("front", create=True)
    fake = publisher(mosquitto.port)
    now = time.time()
    forged_retained = {"type": "command", "action": "unlock", "door": "front",
                       "issued_at": now, "expires_at": now + 86400, "actor": "mallory"}  # fmt: skip
    publish(fake, "gate/front/command", json.dumps(forged_retained), retain=True)
    watch = subscribe(mosquitto.port, "gate/front/#")
    relay = RecordingRelay()
    state_file = tmp_path / "front.controller.json"
    caplog.set_level(logging.INFO, logger="gate.controller")
    door = Controller(config.mqtt, "front", key, relay, relock_s=0.3, state_file=state_file)
    assert door.start(), "the controller subscribed"
    try:
        assert watch.wait_for("gate/front/controller/rejected")
        publish(fake, "gate/front/command", b"", retain=True)  # clear it: an empty message
        reports = watch.wait_for("gate/front/controller/rejected", 2)
        assert [json.loads(r[0])["reason"] for r in reports] == ["retained", "unsigned"]

        assert actuator.send(unlock_command()) is True
        deadline = time.monotonic() + 5
        while not relay.unlocks() and time.monotonic() < deadline:
            time.sleep(0.02)
        (opened,) = relay.unlocks()
        assert (opened["person"], opened["event_id"], opened["reason"]) == ("alice", 7, "granted")
        genuine = signed_command(watch)
        states = Verifier("front", key, kind="state")
        shown = [states.check(m[0]) for m in watch.wait_for("gate/front/state", 2, timeout=5)]
        assert [v.fields.get("state") for v in shown] == ["UNLOCKED", "LOCKED"]  # relocked
        assert json.loads(state_file.read_text())["last_seq"] == opened["seq"]

        fresh = json.loads(unlock_command().to_json()) | {"type": "command"}
        forgeries = [
            ("replayed", genuine),
            ("bad_signature", seal({**fresh, "seq": store.next_seq("front"),
                                    "nonce": "ab" * 16}, "0" * 64)),
            ("out_of_order", seal({**fresh, "seq": opened["seq"] - 1, "nonce": "cd" * 16}, key)),
            ("expired", store.sign("front", {**fresh, "expires_at": time.time() - 1})),
            ("unsigned", json.dumps(fresh).encode()),
        ]  # fmt: skip
        for _, payload in forgeries:
            publish(fake, "gate/front/command", payload)
        reports = watch.wait_for("gate/front/controller/rejected", 2 + len(forgeries))
        verified = Verifier("front", key, kind="report")
        reasons = []
        for payload, _retained, _t in reports[2:]:
            verdict = verified.check(payload)
            assert verdict.accepted, "controller reports are signed with the door's key"
            reasons.append(verdict.fields["reason"])
        assert reasons == [reason for reason, _ in forgeries]
        assert len(relay.unlocks()) == 1  # none of them opened the door
        for reason, _ in forgeries:
            assert f"rejected a command for front: {reason}" in caplog.text
    finally:
        door.stop()
        fake.loop_stop()

    restarted = Controller(config.mqtt, "front", key, relay, state_file=state_file)
    assert restarted.handle(genuine).reason == "out_of_order"  # its seq was kept on disk


def gate_cli(config_path, db_path, *args, **popen) -> subprocess.Popen:
    env = {**os.environ, "GATE_CONFIG": str(config_path), "GATE_DB": str(db_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "gate", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


def run_cli(config_path, db_path, *args) -> tuple[int, str, str]:
    proc = gate_cli(config_path, db_path, *args)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_gate_controller_command_obeys_gate_and_refuses_a_forgery(tmp_path, mosquitto, subscribe):
    config_path = tmp_path / "gate.toml"
    config_path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n')
    db_path = tmp_path / "gate.db"
    assert run_cli(config_path, db_path, "doors", "add", "front")[0] == 0
    code, out, err = run_cli(config_path, db_path, "doors", "key", "front")
    assert code == 0 and len(out.strip()) == 64
    assert (tmp_path / "keys" / "front.key").read_text().strip() == out.strip()
    assert "owner-only" in err

    watch = subscribe(mosquitto.port, "gate/front/#")
    proc = gate_cli(config_path, db_path, "controller", "--door", "front", "--relock", "0.3")
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("listening on gate/front/command" in ln for ln in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        code, out, err = run_cli(config_path, db_path, "doors", "unlock", "front", "--reason", "x")
        assert code == 0, err
        fake = publisher(mosquitto.port)
        publish(fake, "gate/front/command", json.dumps({"action": "unlock", "door": "front"}))
        fake.loop_stop()
        assert watch.wait_for("gate/front/controller/rejected", timeout=10)
        assert len(watch.wait_for("gate/front/state", 2, timeout=5)) == 2  # UNLOCKED, LOCKED
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    out = proc.stdout.read()
    assert "UNLOCK front: event 1, manual" in out and "LOCK front" in out
    assert out.count("UNLOCK front") == 1
    assert any("rejected a command for front: unsigned" in ln for ln in lines)
    assert not any("Traceback" in ln for ln in lines)


def test_gate_controller_without_a_key_says_so(tmp_path):
    config_path = tmp_path / "gate.toml"
    config_path.write_text('[mqtt]\nhost = "127.0.0.1"\nport = 1\n')
    code, _, err = run_cli(config_path, tmp_path / "gate.db", "controller", "--door", "front")
    assert code == 1 and "door 'front' has no key yet" in err and "Traceback" not in err
    loose = tmp_path / "loose.key"
    loose.write_text("ab" * 32 + "\n")
    os.chmod(loose, 0o644)
    code, _, err = run_cli(
        config_path, tmp_path / "gate.db", "controller", "--door", "front", "--key-file", loose
    )
    assert code == 1 and "others may read this key" in err and "Traceback" not in err
    os.chmod(loose, 0o600)
    code, _, err = run_cli(
        config_path, tmp_path / "gate.db", "controller", "--door", "front", "--key-file", loose,
        "--relay", "no_such_module:Relay",
    )  # fmt: skip
    assert code == 1 and "relay 'no_such_module:Relay' cannot start" in err
    assert load_relay("tests.test_controller:RecordingRelay", "back").door == "back"


def test_the_controller_module_is_light():
    code = (
        "import sys, gate.actions.controller, gate.actions.signing\n"
        "print(sorted(m for m in ('torch', 'cv2', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
