"""gate as an OSDP reader, against a real control panel (libosdp's) over a pty pair and TCP.

The panel runs in the test with Secure Channel; gate's reader is the ``osdp``
actuator as gate runs it. No serial hardware: a pty is what a USB RS-485
adapter looks like to gate.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from gate.actions.credentials import parse_credential
from gate.actions.signing import KeyStore
from gate.components import ActuatorSetup, DoorCommand
from gate.config import parse_config
from gate.errors import ComponentError, ConfigError
from gate.storage.events import AccessEvent, utc_iso
from gate_plugins.osdp_reader import OsdpReader
from tests.conftest import free_port
from tests.osdp_panel import (
    ADDRESS,
    CMD_LED,
    REPLY_RAW,
    TEST_KEY,
    Panel,
    PtyEnd,
    Tap,
    TcpEnd,
    code_of,
)

LED_GREEN = {
    "command": 2, "reader": 0, "led_number": 0, "control_code": 1, "on_count": 10,
    "off_count": 0, "on_color": 2, "off_color": 0, "timer_count": 20, "temporary": True,
}  # fmt: skip


def no_broker():
    raise ConnectionError("no broker in this test")


def start_reader(tmp_path: Path, channel: str, *, key: bytes | None = TEST_KEY, mqtt=no_broker,
                 show=lambda door, text: None, **options) -> OsdpReader:  # fmt: skip
    """The ``osdp`` actuator serving door ``front`` on ``channel``, started as gate run does."""
    if key is not None:
        KeyStore(tmp_path / "keys").set_scbk("front", key)
    door = {"channel": channel, "address": ADDRESS} | options.pop("door", {})
    reader = OsdpReader(OsdpReader.Options(doors={"front": door}, **options))
    config = parse_config({})
    reader.start(
        ActuatorSetup(config, (SimpleNamespace(name="front"),), tmp_path / "keys", mqtt, show=show)
    )
    return reader


def grant(person: str, credential: str | None, ttl: float = 2.0) -> DoorCommand:
    now = time.time()
    return DoorCommand(
        door="front", person=person, person_id=1, distance=0.3, event_id=1, issued_at=now,
        expires_at=now + ttl, credential=credential,
    )  # fmt: skip


def steady_session(link, panel: Panel, hold: float = 1.0, timeout: float = 20.0) -> bool:
    """Both ends in one Secure Channel session for ``hold`` seconds running."""
    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        if link.now().secure and panel.cp.is_sc_active(ADDRESS):
            since = since or time.monotonic()
            if time.monotonic() - since >= hold:
                return True
        else:
            since = None
        time.sleep(0.05)
    return False


def card_bits(event: dict) -> tuple[int, bytes]:
    return event["length"], bytes(event["data"])


@pytest.fixture
def pty():
    ends: list[PtyEnd] = []

    def make(tap: Tap | None = None) -> PtyEnd:
        end = PtyEnd(tap or Tap())
        ends.append(end)
        return end

    yield make
    for end in ends:
        end.close()


@pytest.fixture
def closing():
    """Close what a test opened (panels, readers), last opened first, even when it fails."""
    things: list = []
    yield things.append
    for thing in reversed(things):
        thing.close()


def test_a_grant_is_a_card_read_over_secure_channel(tmp_path, pty, closing):
    end = pty()
    closing(panel := Panel(end))
    closing(reader := start_reader(tmp_path, end.path))
    assert panel.secure(), "no secure channel with the right key"
    assert reader.links["front"].now().secure

    assert reader.send(grant("obama", "26bit:12:34567")) is True
    (read,) = panel.card_reads(1.0)
    assert card_bits(read) == parse_credential("26bit:12:34567").wiegand()
    assert read["format"] == 1  # raw Wiegand
    assert reader.send(grant("biden", "37bit:1234:56789")) is True
    (read,) = panel.card_reads(1.0)
    assert card_bits(read) == (37, parse_credential("37bit:1234:56789").wiegand()[1])
    # encrypted on the wire: the card's bytes never pass in clear
    raw = [f for f in end.tap.from_reader if f[4] & 0x08 and code_of(f) == REPLY_RAW]
    print(sorted({hex(code_of(f)) for f in end.tap.from_reader}))
    assert raw and all(parse_credential("26bit:12:34567").wiegand()[1] not in f for f in raw)


def test_no_credential_or_a_lock_sends_nothing(tmp_path, pty, closing, caplog):
    end = pty()
    closing(panel := Panel(end))
    closing(reader := start_reader(tmp_path, end.path))
    assert panel.secure()
    with caplog.at_level(logging.ERROR, logger="gate.osdp"):
        assert reader.send(grant("obama", None)) is False
    assert "obama has no credential" in caplog.text
    assert "gate people set obama --credential" in caplog.text
    lock = grant("obama", "26bit:1:1")
    assert (
        reader.send(DoorCommand(**{**lock.__dict__, "action": "lock", "reason": "lock"})) is False
    )
    other = DoorCommand(**{**lock.__dict__, "door": "back"})
    assert reader.send(other) is None  # not an OSDP door: not counted either way
    assert panel.card_reads(1.0) == []


def test_a_stranger_sends_nothing_unless_the_site_asks(tmp_path, pty, closing):
    stranger = AccessEvent(time=utc_iso(time.time()), door="front", decision="denied",
                           reason="unknown", id=7)  # fmt: skip
    end = pty()
    closing(panel := Panel(end))
    closing(reader := start_reader(tmp_path, end.path))
    assert panel.secure()
    reader.announce(stranger)
    assert panel.card_reads(1.5) == []
    reader.close()

    end2 = pty()
    closing(panel2 := Panel(end2))
    closing(reader2 := start_reader(
        tmp_path, end2.path, unknown="card", unknown_credential="26bit:255:65535"))  # fmt: skip
    assert panel2.secure()
    reader2.announce(stranger)
    (read,) = panel2.card_reads(1.5)
    assert card_bits(read) == parse_credential("26bit:255:65535").wiegand()
    not_allowed = AccessEvent(time=stranger.time, door="front", decision="denied",
                              reason="not_allowed", person="obama", id=8)  # fmt: skip
    reader2.announce(not_allowed)  # someone known, refused: the panel gets no "unknown" card
    assert panel2.card_reads(1.0) == []


def test_a_wrong_key_never_makes_a_session_and_nothing_is_sent_late(tmp_path, pty, closing):
    end = pty()
    wrong = Panel(end, key=bytes(16))
    closing(reader := start_reader(tmp_path, end.path, start_wait_s=0))
    assert not wrong.secure(timeout=3.0)
    assert not reader.links["front"].now().secure
    assert reader.send(grant("obama", "26bit:12:34567", ttl=1.0)) is False
    assert wrong.card_reads(1.0) == []
    assert not any(code_of(f) == REPLY_RAW for f in end.tap.from_reader)
    wrong.close()

    closing(right := Panel(end))  # the right key later: the refused read is not sent late
    assert right.secure()
    assert right.card_reads(1.5) == []
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert len(right.card_reads(1.0)) == 1


def test_corrupted_and_replayed_frames_are_rejected(tmp_path, pty, closing):
    """libosdp's panel drops a link on any bad frame (and stays off for 300 s): each trick
    below is followed by a panel that starts again on the same wire."""
    tap = Tap()
    end = pty(tap)
    commands: list[dict] = []
    closing(reader := start_reader(tmp_path, end.path, start_wait_s=0))
    link = reader.links["front"]
    original = link.on_command
    link.on_command = lambda c: commands.append(c) or original(c)
    card = parse_credential("26bit:12:34567")

    def fresh_panel() -> Panel:
        panel = Panel(end)
        closing(panel)
        assert panel.secure(), "no secure channel"
        assert link.wait(lambda s: s.secure, 5.0)
        return panel

    # a card read corrupted on the wire: the panel refuses it; gate does not count it as taken,
    # and does not send it later either
    panel = fresh_panel()
    tap.corrupt_reply = REPLY_RAW
    assert reader.send(grant("obama", "26bit:12:34567", ttl=1.5)) is False
    assert tap.corrupted == 1
    assert panel.card_reads(1.0) == []
    panel.close()
    panel = fresh_panel()
    assert panel.card_reads(1.0) == []

    # a card read taken, then its frame replayed to the panel: refused, no second read
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert [card_bits(r) for r in panel.card_reads(1.0)] == [card.wiegand()]
    recorded = [f for f in tap.from_reader if f[4] & 0x08 and code_of(f) == REPLY_RAW][-1]
    tap.replay_to_panel = recorded
    assert panel.card_reads(2.0) == []
    panel.close()

    # an LED command from the panel, then its frame replayed to the reader: obeyed once
    panel = fresh_panel()
    panel.command(LED_GREEN)
    deadline = time.monotonic() + 3
    while not commands and time.monotonic() < deadline:
        time.sleep(0.05)
    led = [f for f in tap.to_reader if f[4] & 0x08 and code_of(f) == CMD_LED]
    assert led, "the LED command never crossed the wire"
    tap.replay_to_reader = led[-1]
    time.sleep(2.0)
    assert [c["command"] for c in commands] == [2]
    panel.close()

    panel = fresh_panel()  # and the reader still works
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert [card_bits(r) for r in panel.card_reads(1.0)] == [card.wiegand()]


def test_the_link_goes_down_and_comes_back(tmp_path, closing, caplog):
    caplog.set_level(logging.INFO, logger="gate.osdp")
    port = free_port()
    closing(reader := start_reader(tmp_path, f"tcp-listen://127.0.0.1:{port}", start_wait_s=0))
    link = reader.links["front"]
    cable = TcpEnd(port, Tap())
    closing(panel := Panel(cable))
    assert panel.secure()
    assert link.wait(lambda s: s.secure, 2.0)
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert len(panel.card_reads(1.0)) == 1

    cable.drop()
    assert link.wait(lambda s: s.problem is not None, 5.0)
    assert not link.usable()
    assert reader.send(grant("obama", "26bit:12:34567")) is False  # during the outage
    down = "OSDP LINK DOWN: no link: waiting for the panel to connect"
    assert Panel._until(lambda: down in caplog.text, 5.0), caplog.text

    panel.close()  # libosdp's panel, once it has lost a session, waits 300 s: a panel
    # started again stands for one that comes back sooner, as real panels do
    cable = TcpEnd(port, Tap())
    closing(panel := Panel(cable))
    assert steady_session(link, panel), link.now()
    assert panel.card_reads(1.0) == []  # the outage's read never arrives late
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert len(panel.card_reads(1.0)) == 1
    assert "the panel connected from 127.0.0.1" in caplog.text


def test_secure_channel_is_required_unless_configured_off(tmp_path, pty, closing, caplog):
    end = pty()
    with pytest.raises(ComponentError, match=r"gate doors key front --osdp"):
        start_reader(tmp_path, end.path, key=None)

    closing(panel := Panel(end, key=None, secure=False))  # a panel without any key
    with caplog.at_level(logging.WARNING, logger="gate.osdp"):
        closing(reader := start_reader(
            tmp_path, end.path, key=None, door={"secure_channel": False}))  # fmt: skip
    assert "OSDP WITHOUT SECURE CHANNEL" in caplog.text
    assert panel.online()
    assert not panel.secure(timeout=1.0)
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    (read,) = panel.card_reads(1.0)
    assert card_bits(read) == parse_credential("26bit:12:34567").wiegand()


def test_bad_settings_are_located_errors(tmp_path):
    from gate.plugins import make_plugin_manager
    from gate.recognition.pipeline import check_component_sections

    registry = make_plugin_manager().registry
    bad = {
        "COM3": "a serial device path",
        "tcp://nohost": "tcp://HOST:PORT",
    }
    for channel, says in bad.items():
        config = parse_config({"actuators": {"osdp": {"doors": {"front": {"channel": channel}}}}})
        with pytest.raises(ConfigError, match=says):
            check_component_sections(config, registry)
    for extra, says in (
        ({"doors": {"front": {"channel": "/dev/ttyUSB0", "baud": 1234}}}, "9600"),
        ({"doors": {"front": {"channel": "/dev/ttyUSB0", "address": 127}}}, "126"),
        ({"unknown": "card"}, "unknown_credential"),
        ({"unknown": "card", "unknown_credential": "26bit:300:1"}, "0-255"),
        ({"unknown": "keypad", "unknown_keys": "12a"}, "unknown_keys"),
    ):
        config = parse_config({"actuators": {"osdp": extra}})
        with pytest.raises(ConfigError, match=says):
            check_component_sections(config, registry)


def test_panel_commands_are_logged_published_and_shown(tmp_path, pty, closing, mosquitto,
                                                      subscribe, caplog):  # fmt: skip
    from gate.messaging.connection import Messaging
    from gate.runtime.preview import Preview

    config = parse_config({"mqtt": {"host": "127.0.0.1", "port": mosquitto.port}})
    messaging = Messaging(config, tmp_path / "keys")
    closing(messaging)
    assert messaging.link().wait_ready(5)
    sub = subscribe(mosquitto.port, "gate/front/#")
    preview = Preview(port=0)
    end = pty()
    closing(panel := Panel(end))
    with caplog.at_level(logging.INFO, logger="gate.osdp"):
        closing(reader := start_reader(tmp_path, end.path, mqtt=messaging.link,
                                       show=preview.reader))  # fmt: skip
        assert panel.secure()
        panel.command(LED_GREEN)
        panel.command({"command": 3, "reader": 0, "control_code": 2, "on_count": 2,
                       "off_count": 2, "rep_count": 3})  # fmt: skip
        panel.command({"command": 4, "reader": 0, "control_code": 1, "temp_time": 5,
                       "offset_row": 1, "offset_col": 1, "data": "WELCOME"})  # fmt: skip
        published = sub.wait_for("gate/front/osdp/command", count=3)
    said = [json.loads(p) for p, _, _ in published]
    assert [m["kind"] for m in said] == ["led", "buzzer", "text"]
    assert said[0]["says"].startswith("LED 0 green")
    assert said[2]["text"] == "WELCOME"
    assert "panel: LED 0 green" in caplog.text and "WELCOME" in caplog.text
    assert "panel: text 'WELCOME'" in preview.status()["front"]["reader"]
    assert "secure channel active" in preview.status()["front"]["reader"]
    states = [json.loads(p) for p, retained, _ in sub.on("gate/front/osdp")]
    assert states[-1]["online"] and states[-1]["secure"] and states[-1]["running"]
    reader.close()
    last = sub.wait_for("gate/front/osdp", count=len(states) + 1)
    assert json.loads(last[-1][0])["running"] is False


def install_in_background(
    tmp_path: Path, channel: str, timeout: float
) -> tuple[threading.Thread, list]:
    """``gate osdp install front`` on a site whose door ``front`` reads ``channel``, started in
    a thread; the list gets its click result."""
    from gate.cli import make_cli
    from gate.plugins import make_plugin_manager

    config = tmp_path / "gate.toml"
    config.write_text(
        f'[pipeline]\nactuators = ["osdp"]\n[actuators.osdp.doors.front]\n'
        f'channel = "{channel}"\naddress = {ADDRESS}\n'
    )
    args = ["--config", str(config), "--db", str(tmp_path / "gate.db")]
    gate = make_cli(make_plugin_manager())
    runner = CliRunner()
    assert runner.invoke(gate, [*args, "doors", "add", "front", "--source", "0"]).exit_code == 0
    result: list = []
    install = [*args, "osdp", "install", "front", "--timeout", str(timeout)]
    thread = threading.Thread(target=lambda: result.append(runner.invoke(gate, install)))
    thread.start()
    time.sleep(0.5)
    return thread, result


def test_install_takes_the_panels_key_and_runs_with_it(tmp_path, pty, closing):
    end = pty()
    thread, result = install_in_background(tmp_path, end.path, 20)
    panel_key = bytes(range(100, 116))
    # a panel adding a new reader: it tries its key, then the install key (SCBK-D), then sets
    # its own with KEYSET inside that secure channel
    closing(panel := Panel(end, key=panel_key, secure=False))
    thread.join(30)
    assert result and result[0].exit_code == 0, result and result[0].output
    key_file = tmp_path / "keys" / "front.scbk"
    assert bytes.fromhex(key_file.read_text().strip()) == panel_key
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    panel.close()

    closing(panel2 := Panel(end, key=panel_key))
    closing(reader := start_reader(tmp_path, end.path, key=None))  # the key install kept
    assert panel2.secure()
    assert reader.send(grant("obama", "26bit:12:34567")) is True


def test_doctor_reports_the_link(tmp_path, pty, closing):
    end = pty()
    KeyStore(tmp_path / "keys").set_scbk("front", TEST_KEY)
    options = OsdpReader.Options(doors={"front": {"channel": end.path, "address": ADDRESS}})
    setup = ActuatorSetup(parse_config({}), (), tmp_path / "keys", no_broker, one_off=True)
    (check,) = OsdpReader(options).diagnose(setup, 2.0)
    assert check.status == "fail" and "no poll from the panel" in check.detail

    closing(panel := Panel(end))
    (check,) = OsdpReader(options).diagnose(setup, 8.0)
    assert check.status == "ok", check.line()
    assert "secure channel active" in check.detail
    panel.close()

    closing(Panel(end, key=bytes(16)))
    (check,) = OsdpReader(options).diagnose(setup, 4.0)
    assert check.status == "fail" and "NO secure channel" in check.detail
    assert "gate doors key front --osdp" in check.fix

    KeyStore(tmp_path / "keys").scbk_path("front").unlink()
    (check,) = OsdpReader(options).diagnose(setup, 1.0)
    assert check.status == "fail" and "gate doors key front --osdp" in check.fix


def test_doors_key_osdp_makes_a_private_key(tmp_path):
    from gate.cli import make_cli
    from gate.plugins import make_plugin_manager

    args = ["--db", str(tmp_path / "gate.db")]
    gate = make_cli(make_plugin_manager())
    runner = CliRunner()
    assert runner.invoke(gate, [*args, "doors", "add", "front", "--source", "0"]).exit_code == 0
    first = runner.invoke(gate, [*args, "doors", "key", "front", "--osdp"])
    assert first.exit_code == 0, first.output
    key = first.stdout.strip()
    assert len(bytes.fromhex(key)) == 16
    assert runner.invoke(gate, [*args, "doors", "key", "front", "--osdp"]).stdout.strip() == key
    rotated = runner.invoke(gate, [*args, "doors", "key", "front", "--osdp", "--rotate"])
    assert rotated.stdout.strip() != key and "panel" in rotated.stderr
    path = tmp_path / "keys" / "front.scbk"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert KeyStore(tmp_path / "keys").scbk("front").hex() == rotated.stdout.strip()


def test_gate_run_presents_the_granted_faces_card_to_the_panel(pm, tmp_path, pty, closing):
    """The demo clip through the real loop: obama's grant reaches the panel as his card,
    biden (granted, no credential) and the two strangers send nothing."""
    from gate.demo import sample_path
    from gate.recognition.enrollment import enroll
    from gate.recognition.pipeline import Pipeline
    from gate.runtime.doors import doors_for_run
    from gate.runtime.runner import Runner
    from gate.storage.database import GateDB

    end = pty()
    closing(panel := Panel(end))
    config = parse_config(
        {
            "pipeline": {"actuators": ["osdp"]},
            "actuators": {"osdp": {"doors": {"front": {"channel": end.path, "address": ADDRESS}}}},
        }
    )
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    for person in ("obama", "biden"):
        assert enroll(db, pipeline, person, [sample_path("people", person, f"{person}.jpg")]).stored
    db.set_person("obama", credential="26bit:12:34567")
    KeyStore(tmp_path / "keys").set_scbk("front", TEST_KEY)
    doors = doors_for_run(db, config, ["front"], str(sample_path("door.mp4")))
    Runner(pipeline, db.path, doors, hook=pm.hook).run()
    pipeline.close()

    events = {e.person or e.reason: e for e in db.events()}
    db.close()
    assert events["obama"].decision == "granted" and events["obama"].delivered is True
    assert events["obama"].credential == "26bit:12:34567"
    assert events["biden"].decision == "granted" and events["biden"].delivered is False
    assert events["biden"].credential is None
    assert events["unknown"].decision == "denied"
    reads = panel.card_reads(0.5)
    assert [card_bits(r) for r in reads] == [parse_credential("26bit:12:34567").wiegand()]


def test_gate_doctor_reports_a_running_gates_link_from_mqtt(pm, tmp_path, pty, closing, mosquitto):
    """While gate run holds the wire, gate doctor reads the link state it keeps on MQTT."""
    from gate.doctor import check_actuators
    from gate.messaging.connection import Messaging
    from gate.recognition.pipeline import Pipeline

    end = pty()
    config = parse_config(
        {
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "pipeline": {"actuators": ["osdp"]},
            "actuators": {"osdp": {"doors": {"front": {"channel": end.path, "address": ADDRESS}}}},
        }
    )
    messaging = Messaging(config, tmp_path / "keys")
    closing(messaging)
    closing(panel := Panel(end))
    closing(start_reader(tmp_path, end.path, mqtt=messaging.link))
    assert panel.secure()
    assert messaging.link().wait_ready(5)
    time.sleep(1.0)  # the state, retained
    (check,) = check_actuators(config, Pipeline(config, pm.registry), tmp_path / "keys", 5.0)
    assert check.name == "osdp front" and check.status == "ok", check.line()
    assert "held by the running gate" in check.detail
    assert "secure channel active" in check.detail


def test_doors_removed_and_added_while_gate_runs(tmp_path, pty, closing):
    end = pty()
    closing(panel := Panel(end))
    closing(reader := start_reader(tmp_path, end.path))
    assert panel.secure()
    reader.doors_changed([])  # the door removed (or disabled): its reader lets go of the wire
    assert reader.links == {}
    assert reader.send(grant("obama", "26bit:12:34567")) is None
    panel.close()

    closing(panel := Panel(end))
    reader.doors_changed([SimpleNamespace(name="front"), SimpleNamespace(name="side")])
    assert list(reader.links) == ["front"]  # side has no wire in [actuators.osdp.doors]
    assert steady_session(reader.links["front"], panel)
    assert reader.send(grant("obama", "26bit:12:34567")) is True
    assert len(panel.card_reads(1.0)) == 1


def packet(address: int, sqn: int, code: int, data: bytes = b"") -> bytes:
    """An OSDP packet in clear with a CRC, as the reader or the panel writes one."""
    from gate_plugins.osdp_link import CTRL_CRC, SOM, crc16

    body = bytes([SOM, address, 0, 0, sqn | CTRL_CRC, code]) + data
    size = len(body) + 2
    body = body[:2] + bytes([size & 0xFF, size >> 8]) + body[4:]
    check = crc16(body)
    return body + bytes([check & 0xFF, check >> 8])


def test_a_withdrawn_card_read_is_never_repeated_late(pty):
    """A panel that asks again, with the same sequence number, for a card read gate gave up
    on gets silence; once it moves on, the reader speaks again."""
    from gate_plugins.osdp_link import REPLY_RAW, Wire

    end = pty()
    wire = Wire(end.path)
    wire.address = ADDRESS
    poll = 0x60
    card = packet(ADDRESS | 0x80, 2, REPLY_RAW, bytes([0, 1, 26, 0]) + bytes(4))

    def heard_by_panel() -> bytes:
        time.sleep(0.1)
        try:
            return os.read(end.fd, 4096)
        except BlockingIOError:
            return b""

    try:
        wire.acks.expect()
        assert wire.write(card) == len(card)
        assert heard_by_panel() == card  # sent once, not acknowledged: gate gives up
        wire.acks.withdraw()
        os.write(end.fd, packet(ADDRESS, 2, poll))  # the panel asks again, same number
        assert wire.read(1024)
        assert wire.write(card) == len(card)  # libosdp repeats its last reply ...
        assert heard_by_panel() == b""  # ... and it never reaches the panel
        os.write(end.fd, packet(ADDRESS, 0, poll))  # the panel starts over
        assert wire.read(1024)
        ack = packet(ADDRESS | 0x80, 0, 0x40)
        assert wire.write(ack) == len(ack)
        assert heard_by_panel() == ack
        assert wire.acks.taken is False  # and the withdrawn read counts as lost, as gate logged it
    finally:
        wire.close()


INTEROP = Path(__file__).resolve().parents[1] / ".venv" / "osdp-python"


def interop_panel(port: int, master_key: bytes, seconds: float):
    """The pure-Python ``osdp`` package's control panel (tests/interop_panel.py), running."""
    import subprocess
    import sys

    if not (INTEROP / "osdp" / "_control_panel.py").exists():
        pytest.skip(f"the second OSDP panel is not installed in {INTEROP} (make test does it)")
    script = Path(__file__).with_name("interop_panel.py")
    args = [sys.executable, str(script), str(port), str(ADDRESS), master_key.hex(), str(seconds)]
    env = dict(os.environ, PYTHONPATH=str(INTEROP))
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)


def test_an_independent_panel_installs_its_key_and_takes_the_card(tmp_path, closing):
    """Another implementation of the protocol on the panel's side (pure Python, its own AES
    and key diversification): install mode hands gate its key, then a Secure Channel with
    that key carries the card read, bit for bit."""
    port = free_port()
    thread, result = install_in_background(tmp_path, f"tcp-listen://127.0.0.1:{port}", 15)
    master = bytes(range(0x40, 0x50))
    panel = interop_panel(port, master, 6.0)
    thread.join(30)
    panel.kill()
    said = [json.loads(line) for line in panel.communicate()[0].splitlines()]
    assert result and result[0].exit_code == 0, result and result[0].output
    assert {"secure": True, "scbk_d": True} in said  # install mode: the well-known key
    key = KeyStore(tmp_path / "keys").scbk("front")
    assert key != bytes(16) and len(key) == 16

    closing(reader := start_reader(tmp_path, f"tcp-listen://127.0.0.1:{port}", key=None,
                                   start_wait_s=0))  # fmt: skip
    panel = interop_panel(port, master, 8.0)
    try:
        assert reader.links["front"].wait(lambda s: s.secure, 6.0), reader.links["front"].now()
        time.sleep(0.5)
        assert reader.send(grant("obama", "26bit:12:34567")) is True
        assert reader.send(grant("biden", "37bit:1234:56789")) is True
    finally:
        out = panel.communicate(timeout=20)[0]
    said = [json.loads(line) for line in out.splitlines()]
    assert {"secure": True, "scbk_d": False} in said  # the panel's own key, from install
    cards = [s["card"] for s in said if "card" in s]
    expected = [parse_credential(c).wiegand() for c in ("26bit:12:34567", "37bit:1234:56789")]
    assert [(c["bits"], bytes.fromhex(c["data"])) for c in cards] == expected
    assert {c["format"] for c in cards} == {"Wiegand"}
