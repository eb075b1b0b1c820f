"""Issue 9, section 1: MQTT with TLS and client certificates, clear failures, the embedded
broker's password, its retained-message leak, and no unlock delivered after it was given up."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gate.actions.controller import Controller
from gate.actions.signing import KeyStore
from gate.components import ActuatorSetup, DoorCommand
from gate.config import MqttConfig, parse_config
from gate.demo import sample_path
from gate.errors import ConfigError
from gate.messaging.broker import EMBEDDED_USER, EmbeddedBroker, broker_password, free_port
from gate.messaging.connection import Messaging
from gate.messaging.mqtt import MqttLink
from gate_plugins.mqtt_actuator import MqttActuator
from tests.conftest import USERS, client_tls

CLIP = sample_path("door.mp4")


def secure_settings(broker, certificates: Path, **changes) -> dict:
    """``[mqtt]`` for the secure broker as gate's user, with gate's client certificate."""
    return {
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": True,
        "ca_certs": str(certificates / "ca.crt"),
        "certfile": str(certificates / "gate.crt"),
        "keyfile": str(certificates / "gate.key"),
        "username": "gate",
        "password": USERS["gate"],
        "client_id": "gate-test",
    } | changes


def linked(settings: dict) -> MqttLink:
    config = MqttConfig(**{k: v for k, v in settings.items() if v is not None})
    link = MqttLink(config, config.host, config.port)
    link.start()
    return link


def watcher_of(broker, certificates: Path, subscribe, topic: str = "gate/#"):
    return subscribe(broker.port, topic, ("watcher", USERS["watcher"]), client_tls(certificates))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_with_a_client_certificate_and_a_password(
    secure_mosquitto, certificates, subscribe, version
):
    link = linked(secure_settings(secure_mosquitto, certificates, tls_version=version))
    try:
        assert link.wait_ready(5), link.problem
        assert link.problem is None
        watcher = watcher_of(secure_mosquitto, certificates, subscribe)
        payload = json.dumps({"action": "unlock", "door": "front"})
        assert link.publish_command("gate/front/command", payload, time.time() + 2) is True
        assert [m[0] for m in watcher.wait_for("gate/front/command")] == [payload.encode()]
    finally:
        link.stop()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"password": "wrong"}, "refused gate's login: Not authorized (check [mqtt] username"),
        ({"ca_certs": "{tls}/rogue.crt"}, "failed: the broker's certificate is not trusted: "),
        ({"certfile": None, "keyfile": None}, "refused gate's client certificate: tlsv13 alert"),
        (
            {"certfile": "{tls}/intruder.crt", "keyfile": "{tls}/intruder.key"},
            "failed: the broker refused gate's client certificate: tlsv1 alert unknown ca (see",
        ),
    ],
)
def test_a_refused_login_or_a_tls_failure_is_told_at_once(
    secure_mosquitto, certificates, caplog, changes, expected
):
    changes = {k: v.format(tls=certificates) if v else v for k, v in changes.items()}
    caplog.set_level(logging.ERROR, logger="gate.mqtt")
    started = time.monotonic()
    link = linked(secure_settings(secure_mosquitto, certificates, **changes))
    try:
        assert link.wait_ready(10) is False
        assert time.monotonic() - started < 5  # not waiting out the time for a broker to start
        assert expected in link.problem, link.problem
        if "login" not in expected:
            assert link.problem.startswith(f"MQTT TLS with 127.0.0.1:{secure_mosquitto.port}")
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert logged == [link.problem]  # logged as such, once
    finally:
        link.stop()


def gate(*args: str, db: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GATE_DB": str(db), "GATE_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, env=env, timeout=300
    )


def write_config(path: Path, mqtt: dict, extra: str = "") -> Path:
    lines = ["[mqtt]"] + [f"{k} = {json.dumps(v)}" for k, v in mqtt.items() if v is not None]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_a_wrong_password_stops_gate_run_at_start_with_a_clear_message(
    secure_mosquitto, certificates, tmp_path
):
    settings = secure_settings(secure_mosquitto, certificates, password="wrong")
    config = write_config(tmp_path / "gate.toml", settings)
    result = gate("run", "--source", str(CLIP), db=tmp_path / "gate.db", config=config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"Error: MQTT broker 127.0.0.1:{secure_mosquitto.port} refused gate's login: "
        "Not authorized (check [mqtt] username and password): no unlock could be delivered, "
        "so gate does not start ([mqtt] required = false runs it anyway)"
    )
    with sqlite3.connect(tmp_path / "gate.db") as conn:
        assert conn.execute("select count(*) from events").fetchone()[0] == 0


def test_a_broker_that_is_not_there_stops_gate_run_at_start(tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "gate.toml", {"host": "127.0.0.1", "port": port, "connect_wait_s": 1.0}
    )
    result = gate("run", "--source", str(CLIP), db=tmp_path / "gate.db", config=config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: MQTT broker 127.0.0.1:{port} not reachable: ")
    assert last.endswith("so gate does not start ([mqtt] required = false runs it anyway)")


@pytest.mark.slow
def test_not_required_gate_keeps_deciding_and_says_unlocks_cannot_be_delivered(
    secure_mosquitto, certificates, tmp_path
):
    settings = secure_settings(secure_mosquitto, certificates, password="wrong", required=False)
    config = write_config(tmp_path / "gate.toml", settings)
    db = tmp_path / "gate.db"
    for person in ("obama", "biden"):
        photo = sample_path("people", person, f"{person}.jpg")
        assert gate("enroll", person, str(photo), db=db, config=config).returncode == 0
    result = gate("run", "--source", str(CLIP), db=db, config=config)
    assert result.returncode == 0, result.stderr
    assert "[mqtt] required = false: gate runs on without its broker" in result.stderr
    assert "refused gate's login: Not authorized" in result.stderr
    assert "UNLOCKS CANNOT BE DELIVERED" in result.stderr
    with sqlite3.connect(db) as conn:
        granted = conn.execute(
            "select person, delivered from events where decision = 'granted'"
        ).fetchall()
    assert sorted(granted) == [("biden", 0), ("obama", 0)]
    assert result.stdout.count("NOT delivered") == 2


@pytest.mark.parametrize(
    ("mqtt", "expected"),
    [
        ({"host": "b", "certfile": "c.pem"}, "mqtt: certfile need tls = true"),
        ({"host": "b", "tls": True, "keyfile": "k.pem"}, "mqtt: keyfile needs certfile"),
        ({"tls": True}, "mqtt: tls needs a host: the embedded broker listens on loopback"),
        ({"host": "b", "tls": True, "tls_version": "1.1"}, "mqtt.tls_version: Input should be"),
        ({"required": "maybe"}, "mqtt.required: Input should be a valid boolean"),
    ],
)
def test_tls_settings_are_checked(mqtt, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config({"mqtt": mqtt})


def test_an_unreadable_client_certificate_is_a_one_line_error(tmp_path, certificates):
    config = write_config(
        tmp_path / "gate.toml",
        {"host": "127.0.0.1", "port": free_port(), "tls": True,
         "certfile": str(certificates / "gate.crt"), "keyfile": str(tmp_path / "absent.key")},
    )  # fmt: skip
    result = gate("run", "--source", str(CLIP), db=tmp_path / "gate.db", config=config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: [mqtt] certfile {certificates / 'gate.crt'}, keyfile ")
    assert "cannot load them" in line


# the embedded broker -----------------------------------------------------------------


def try_login(port: int, login: tuple[str, str] | None) -> str:
    """The broker's answer to a CONNECT with ``login``."""
    answers: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if login is not None:
        client.username_pw_set(*login)
    client.on_connect = lambda c, u, f, reason, p: answers.append(str(reason))
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        time.sleep(0.02)
    client.loop_stop()
    client.disconnect()
    return answers[0] if answers else "no answer"


def test_the_embedded_broker_wants_the_generated_password(tmp_path):
    config = parse_config({"mqtt": {"port": free_port()}})
    context = Messaging(config, tmp_path / "keys")
    try:
        link = context.link()
        assert link.wait_ready(5), link.problem
        path = tmp_path / "keys" / "embedded-broker.password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = broker_password(tmp_path / "keys")
        assert password == path.read_text().strip() and len(password) == 64
        port = config.mqtt.port
        assert try_login(port, None) == "Not authorized"
        assert try_login(port, (EMBEDDED_USER, "guess")) == "Not authorized"
        assert try_login(port, ("admin", password)) == "Not authorized"
        assert try_login(port, (EMBEDDED_USER, password)) == "Success"
        cli = Messaging(config, tmp_path / "keys", embedded_broker=False)  # as gate's CLI
        try:
            assert cli.link().wait_ready(5)
        finally:
            cli.close()
    finally:
        context.close()


def test_the_embedded_broker_listens_on_loopback_only():
    with pytest.raises(ValueError, match=re.escape("loopback only, not 0.0.0.0")):
        EmbeddedBroker("0.0.0.0", free_port(), password="x")
    with pytest.raises(ValueError, match="needs a password"):
        EmbeddedBroker("127.0.0.1", free_port(), password="")


class RecordingRelay:
    def __init__(self):
        self.unlocked: list[dict] = []

    def unlock(self, command):
        self.unlocked.append(command)

    def lock(self, command):
        pass


def test_a_retained_command_for_one_door_never_reaches_another(tmp_path, subscribe):
    """amqtt hands a new client the retained messages of topics *others* subscribed to."""
    port, password = free_port(), "embedded-test-password"
    login = (EMBEDDED_USER, password)
    config = parse_config({"mqtt": {"host": "127.0.0.1", "port": port, "username": EMBEDDED_USER,
                                    "password": password}})  # fmt: skip
    with EmbeddedBroker("127.0.0.1", port, password=password):
        front = subscribe(port, "gate/front/command", login)  # someone listens to front
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sender.username_pw_set(*login)
        sender.connect("127.0.0.1", port)
        sender.loop_start()
        command = json.dumps({"type": "command", "action": "unlock", "door": "front"})
        sender.publish("gate/front/command", command, qos=1, retain=True).wait_for_publish(5)
        assert front.wait_for("gate/front/command")
        reports = subscribe(port, "gate/back/controller/rejected", login)
        back = Controller(config.mqtt, "back", "0" * 64, RecordingRelay(), credentials=login)
        link = MqttLink(config.mqtt.model_copy(update={"client_id": "other"}), "127.0.0.1", port)
        got: list[str] = []
        link.subscribe("gate/other", lambda topic, payload: got.append(topic), raw=False)
        link.start()
        try:
            assert back.start(), "the back door's controller subscribed"
            assert link.wait_ready(5)
            time.sleep(1.0)
            assert reports.on("gate/back/controller/rejected") == []  # front's: not even seen
            assert got == []
            sender.publish("gate/back/command", b"forged", qos=1).wait_for_publish(5)
            (report,) = reports.wait_for("gate/back/controller/rejected")  # back does listen
            assert b'"reason":"unsigned"' in report[0]
        finally:
            back.stop()
            link.stop()
            sender.loop_stop()
            sender.disconnect()


# delivery truth ------------------------------------------------------------------------


def unlock(ttl: float = 2.0) -> DoorCommand:
    now = time.time()
    return DoorCommand(door="front", person="alice", person_id=3, distance=0.41, event_id=7,
                       issued_at=now, expires_at=now + ttl)  # fmt: skip


@pytest.mark.slow
def test_an_unlock_given_up_during_a_frozen_broker_never_opens_the_door(
    tmp_path, mosquitto, subscribe
):
    """SIGSTOP the broker for 10 s: unlocks sent meanwhile are 'not delivered', and stay so."""
    config = parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "gate-test",
                     "ack_timeout_s": 0.5},
            "actuators": {"mqtt": {"keys_dir": str(tmp_path / "keys")}},
        }
    )  # fmt: skip
    context = Messaging(config, tmp_path / "keys")
    actuator = MqttActuator(MqttActuator.Options(keys_dir=str(tmp_path / "keys")))
    actuator.start(ActuatorSetup(config, (), tmp_path / "keys", context.link, one_off=True))
    key = KeyStore(tmp_path / "keys").key("front", create=True)
    relay = RecordingRelay()
    door = Controller(config.mqtt, "front", key, relay, relock_s=0.2)
    reports = subscribe(mosquitto.port, "gate/front/controller/rejected")
    assert door.start(), "the controller subscribed"
    try:
        mosquitto.proc.send_signal(signal.SIGSTOP)
        try:
            given_up = [actuator.send(unlock()) for _ in range(2)]
            time.sleep(10)
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        assert given_up == [False, False]
        deadline = time.monotonic() + 20
        while not (actuator.link.connected and door._client.is_connected()):
            assert time.monotonic() < deadline, "gate and the controller reconnect"
            time.sleep(0.1)
        time.sleep(2)
        assert relay.unlocked == []  # never delivered later
        late = [json.loads(r[0])["reason"] for r in reports.on("gate/front/controller/rejected")]
        assert set(late) <= {"expired"}
        deadline = time.monotonic() + 10
        while not actuator.send(unlock()):  # the link works again: a fresh unlock opens
            assert time.monotonic() < deadline
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not relay.unlocked and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(relay.unlocked) == 1
    finally:
        door.stop()
        context.close()
