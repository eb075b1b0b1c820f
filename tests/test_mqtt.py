"""gate's MQTT link against a real mosquitto: availability, QoS 1 commands, broker outages."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from gate.config import MqttConfig
from gate.messaging.mqtt import MqttLink


def link_to(broker, **options) -> MqttLink:
    config = MqttConfig(host="127.0.0.1", port=broker.port, **options)
    link = MqttLink(config, "127.0.0.1", broker.port)
    link.start()
    assert link.wait_connected(5), "gate did not connect to mosquitto"
    return link


def test_availability_is_retained_online_then_offline(mosquitto, subscribe):
    link = link_to(mosquitto)
    late = subscribe(mosquitto.port, "gate/status")  # joins after gate: gets the retained value
    assert late.wait_for("gate/status")[0][:2] == (b"online", True)
    link.stop()
    assert [m[0] for m in late.wait_for("gate/status", 2)] == [b"online", b"offline"]
    again = subscribe(mosquitto.port, "gate/status")
    assert again.wait_for("gate/status")[0][:2] == (b"offline", True)


def test_last_will_says_offline_when_gate_dies(mosquitto, subscribe):
    code = (
        "import time\nfrom gate.config import MqttConfig\n"
        "from gate.messaging.mqtt import MqttLink\n"
        f"l = MqttLink(MqttConfig(client_id='doomed'), '127.0.0.1', {mosquitto.port}); l.start()\n"
        "assert l.wait_connected(5); print('up', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        watcher = subscribe(mosquitto.port, "gate/status")
        assert watcher.wait_for("gate/status")[0][0] == b"online"
        proc.kill()
        proc.wait()
        messages = watcher.wait_for("gate/status", 2)
        assert [m[0] for m in messages] == [b"online", b"offline"]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_command_is_acknowledged_qos1_and_never_retained(mosquitto, subscribe):
    link = link_to(mosquitto)
    watcher = subscribe(mosquitto.port, "gate/+/command")
    payload = json.dumps({"action": "unlock", "door": "front"})
    assert link.publish_command("gate/front/command", payload, time.time() + 2) is True
    (received,) = watcher.wait_for("gate/front/command")
    assert received[0] == payload.encode()
    assert received[1] is False
    late = subscribe(mosquitto.port, "gate/+/command")
    time.sleep(0.3)
    assert late.on("gate/front/command") == []  # nothing retained for late joiners
    link.stop()


def test_expired_command_is_not_sent(mosquitto, subscribe):
    link = link_to(mosquitto)
    watcher = subscribe(mosquitto.port, "gate/#")
    assert link.publish_command("gate/front/command", "{}", time.time() - 0.01) is False
    time.sleep(0.3)
    assert watcher.on("gate/front/command") == []
    link.stop()


def test_broker_down_means_not_delivered_and_no_late_unlock(mosquitto, subscribe):
    link = link_to(mosquitto)
    mosquitto.stop()
    deadline = time.monotonic() + 5
    while link.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link.connected
    started = time.monotonic()
    assert link.publish_command("gate/front/command", '{"stale": true}', time.time() + 1.0) is False
    assert time.monotonic() - started < 0.5  # no waiting on a dead broker
    mosquitto.start()
    watcher = subscribe(mosquitto.port, "gate/#")
    assert link.wait_connected(10), "gate reconnects when the broker is back"
    time.sleep(1.5)
    assert watcher.on("gate/front/command") == []
    assert link.publish_command("gate/front/command", '{"fresh": true}', time.time() + 2) is True
    assert [m[0] for m in watcher.wait_for("gate/front/command")] == [b'{"fresh": true}']
    link.stop()


def test_unacknowledged_command_is_withdrawn_not_resent(mosquitto, subscribe):
    """A stalled broker: gate gives up at the deadline and never re-sends the command.

    Bytes already written cannot be recalled: when the broker wakes up it forwards
    that one copy, late, which is why the payload carries ``expires_at`` for the
    controller to check. The next command goes out on the same link, and the
    stale one is not sent again ahead of it.
    """
    import signal

    link = link_to(mosquitto, ack_timeout_s=0.5)
    watcher = subscribe(mosquitto.port, "gate/#")
    mosquitto.proc.send_signal(signal.SIGSTOP)
    try:
        expires = time.time() + 1.0
        stale = json.dumps({"expires_at": expires})
        started = time.monotonic()
        assert link.publish_command("gate/front/command", stale, expires) is False
        assert time.monotonic() - started < 1.0
        assert link._client._out_messages == {}  # withdrawn: nothing left to re-send
        time.sleep(max(0.0, expires - time.time()) + 0.2)  # the broker sleeps past expiry
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)
    copies = watcher.wait_for("gate/front/command")
    assert [body for body, _retained, _arrived in copies] == [stale.encode()]
    assert copies[0][2] > expires  # it arrives late: a controller discards it
    expires = time.time() + 2
    fresh = json.dumps({"expires_at": expires})
    assert link.publish_command("gate/front/command", fresh, expires) is True
    bodies = [body for body, _, _ in watcher.wait_for("gate/front/command", 2)]
    assert bodies == [stale.encode(), fresh.encode()]  # the stale one exactly once
    link.stop()
