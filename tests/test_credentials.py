"""Panel credentials: the Wiegand bits of H10301 and H10304, their text, storage and CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from gate.actions.credentials import Credential, CredentialError, parse_credential
from gate.cli import cli
from gate.errors import GateError, StoreError
from gate.storage import logchain
from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso


def packed(bit_string: str) -> bytes:
    """Bits written out as text, packed MSB first, the last byte padded with zeros."""
    size = (len(bit_string) + 7) // 8
    return int(bit_string.ljust(size * 8, "0"), 2).to_bytes(size, "big")


# --- the bit layouts, worked out by hand ---------------------------------------------


def test_h10301_facility_1_card_1():
    # bit 1: even parity over bits 2-13 = facility 00000001 + card's first 4 bits 0000:
    #   one 1 there, so bit 1 is 1 (two in all: even)
    # bits 2-9: facility 1 = 00000001; bits 10-25: card 1 = 0000000000000001
    # bit 26: odd parity over bits 14-25 = card's last 12 bits 000000000001:
    #   one 1 there, already odd, so bit 26 is 0
    expected = "1" + "00000001" + "0000000000000001" + "0"
    assert len(expected) == 26
    bits, data = Credential("26bit", 1, 1).wiegand()
    assert bits == 26
    assert data == packed(expected) == bytes([0b10000000, 0b10000000, 0b00000000, 0b10000000])


def test_h10301_all_ones_flips_both_parities():
    # facility 255, card 65535: bits 2-13 hold twelve 1s (even): bit 1 is 0;
    # bits 14-25 hold twelve 1s (even): bit 26 is 1 to make them odd
    expected = "0" + "11111111" + "1111111111111111" + "1"
    bits, data = Credential("26bit", 65535, 255).wiegand()
    assert (bits, data) == (26, packed(expected))
    assert data == bytes([0x7F, 0xFF, 0xFF, 0xC0])


def test_h10301_facility_12_card_34567():
    # 12 = 00001100; 34567 = 1000011100000111 (32768 + 1024 + 512 + 256 + 4 + 2 + 1)
    # bits 2-13: 00001100 1000 -> three 1s (odd): bit 1 is 1
    # bits 14-25: 011100000111 -> six 1s (even): bit 26 is 1
    expected = "1" + "00001100" + "1000011100000111" + "1"
    assert Credential("26bit", 34567, 12).wiegand() == (26, packed(expected))


def test_h10304_facility_1_card_1():
    # bits 2-17: facility 1 (16 bits); bits 18-36: card 1 (19 bits)
    # bit 1: even parity over bits 2-19 = facility + the card's first 2 bits (00): one 1,
    #   so bit 1 is 1
    # bit 37: odd parity over bits 19-36 = the card's last 18 bits: one 1, already odd: 0
    expected = "1" + "0000000000000001" + "0000000000000000001" + "0"
    assert len(expected) == 37
    bits, data = Credential("37bit", 1, 1).wiegand()
    assert bits == 37 and len(data) == 5
    assert data == packed(expected)


def test_h10304_bit_19_counts_in_both_parities():
    # card 131073 = 2**17 + 1 = 0100000000000000001: its 2nd bit is bit 19 of the 37
    # bits 2-19: sixteen 0s (facility 0), then 0 and 1 -> one 1: bit 1 is 1
    # bits 19-36: 1, sixteen 0s, 1 -> two 1s (even): bit 37 is 1
    expected = "1" + "0" * 16 + "0100000000000000001" + "1"
    assert Credential("37bit", 131073, 0).wiegand() == (37, packed(expected))


def test_raw_bits_are_carried_as_they_are():
    assert Credential("raw", 9, bits=4).wiegand() == (4, bytes([0b10010000]))
    assert Credential("raw", 0xABC, bits=12).wiegand() == (12, b"\xab\xc0")
    assert Credential("raw", 0xFF, bits=8).wiegand() == (8, b"\xff")  # no padding needed
    top = (1 << 128) - 1
    assert Credential("raw", top, bits=128).wiegand() == (128, b"\xff" * 16)
    assert Credential("raw", 1, bits=1).wiegand() == (1, b"\x80")


def test_37bit_takes_its_own_width_by_default():
    assert Credential("37bit", 5, 1).bits == 37
    with pytest.raises(CredentialError, match="has 26 bits, not 30"):
        Credential("26bit", 5, 1, bits=30)
    with pytest.raises(CredentialError, match="has 37 bits, not 40"):
        Credential("37bit", 5, 1, bits=40)


# --- text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "described"),
    [
        ("26bit:12:34567", "26bit:12:34567", "26-bit H10301, facility 12, card 34567"),
        ("  H10301:012:34567 ", "26bit:12:34567", "26-bit H10301, facility 12, card 34567"),
        ("37bit:1234:56789", "37bit:1234:56789", "37-bit H10304, facility 1234, card 56789"),
        ("h10304:65535:524287", "37bit:65535:524287",
         "37-bit H10304, facility 65535, card 524287"),
        ("RAW:34:123456789", "raw:34:123456789", "raw 34-bit 123456789"),
        ("26bit:0:0", "26bit:0:0", "26-bit H10301, facility 0, card 0"),
    ],
)  # fmt: skip
def test_text_round_trips(text, canonical, described):
    credential = parse_credential(text)
    assert str(credential) == canonical
    assert parse_credential(str(credential)) == credential
    assert credential.describe() == described


def test_parsed_values():
    assert parse_credential("26bit:12:34567") == Credential("26bit", 34567, 12, 26)
    assert parse_credential("37bit:1234:56789") == Credential("37bit", 56789, 1234, 37)
    assert parse_credential("raw:34:123456789") == Credential("raw", 123456789, None, 34)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("26bit:300:5", "'26bit:300:5': facility code must be 0-255"),
        ("26bit:1:65536", "'26bit:1:65536': card number must be 0-65535"),
        ("37bit:65536:1", "'37bit:65536:1': facility code must be 0-65535"),
        ("37bit:1:524288", "'37bit:1:524288': card number must be 0-524287"),
        ("raw:0:1", "'raw:0:1': bit count must be 1-128"),
        ("raw:129:1", "'raw:129:1': bit count must be 1-128"),
        ("raw:4:16", "'raw:4:16': number must be 0-15 (it has 4 bits)"),
        ("26bit:-1:5", "'26bit:-1:5': facility code must be a decimal number 0-255"),
        ("26bit:0x1:5", "'26bit:0x1:5': facility code must be a decimal number 0-255"),
        ("26bit:1:", "'26bit:1:': card number must be a decimal number 0-65535"),
        ("raw:x:1", "'raw:x:1': bit count must be a decimal number 0-128"),
        ("raw:8:1e3", "'raw:8:1e3': number must be a decimal number 0-255"),
        ("raw:8:" + "9" * 50, "number must be a decimal number 0-255"),
        ("wiegand:1:2", "'wiegand:1:2': unknown format 'wiegand': use 26bit:FACILITY:CARD"),
        ("26bit:1", "'26bit:1': use 26bit:FACILITY:CARD, 37bit:FACILITY:CARD or raw:BITS:NUMBER"),
        ("26bit:1:2:3", "'26bit:1:2:3': use 26bit:FACILITY:CARD"),
        ("", "'': use 26bit:FACILITY:CARD"),
    ],
)
def test_bad_text_is_a_one_line_error_naming_it_and_the_range(text, message):
    with pytest.raises(CredentialError) as caught:
        parse_credential(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, GateError)  # the CLI prints it as one line


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("26bit", 1, None), "facility code must be 0-255"),
        (("26bit", True, 1), "card number must be 0-65535"),
        (("raw", 1, 2, 8), "a raw credential has no facility code"),
        (("raw", 256, None, 8), "number must be 0-255"),
        (("raw", 1, None, 0), "bit count must be 1-128"),
        (("35bit", 1, 1), "unknown format '35bit'"),
    ],
)
def test_a_credential_is_checked_when_made(fields, message):
    with pytest.raises(CredentialError, match=message):
        Credential(*fields)


# --- storage and the log --------------------------------------------------------------


def test_a_credential_is_stored_canonical_and_belongs_to_one_person(db):
    for name in ("ada", "bob"):
        db.enroll(name, [])
    ada, bob = db.person("ada")["id"], db.person("bob")["id"]
    assert db.credential(ada) is None and db.credential(9999) is None
    db.set_person("ada", credential="H10301:012:34567")
    assert db.credential(ada) == "26bit:12:34567"
    assert {p["name"]: p["credential"] for p in db.people()} == {
        "ada": "26bit:12:34567",
        "bob": None,
    }
    db.set_person("ada", credential="26bit:12:34567")  # the same again: no conflict with herself
    with pytest.raises(StoreError, match=r"^credential 26bit:12:34567 already belongs to ada$"):
        db.set_person("bob", credential="26bit:12:34567", enabled=False)
    assert db.credential(bob) is None
    assert db.people()[1]["enabled"] is True  # nothing of the refused change was made
    with pytest.raises(StoreError, match="facility code must be 0-255"):
        db.set_person("bob", credential="26bit:300:1")
    db.set_person("bob", credential="37bit:12:34567")  # another format: another card
    db.set_person("ada", credential=None)
    assert db.credential(ada) is None
    db.set_person("bob", credential=None)  # many people without one
    assert [p["credential"] for p in db.people()] == [None, None]


def test_the_unique_index_holds_even_for_a_writer_that_skips_the_check(db):
    for name in ("ada", "bob"):
        db.enroll(name, [])
    db.set_person("ada", credential="26bit:1:2")
    with pytest.raises(sqlite3.IntegrityError):
        db.db.execute("update people set credential = '26bit:1:2' where name = 'bob'")


def chained_event(**fields) -> AccessEvent:
    base = {"time": utc_iso(1795890000), "door": "front", "decision": "granted",
            "reason": "granted", "person_id": 1, "person": "ada", "distance": 0.4}  # fmt: skip
    return AccessEvent(**{**base, **fields})


def test_an_event_with_a_credential_is_chained_and_verifies(db, tmp_path):
    db.add_event(chained_event(credential="26bit:12:34567"))
    db.add_event(chained_event())
    found = db.verify_log()
    assert found.ok, found.problem
    assert found.checked == 2
    by_id = {e.id: e for e in db.events()}
    assert by_id[1].credential == "26bit:12:34567" and by_id[2].credential is None
    result = CliRunner().invoke(cli, ["--db", str(db.path), "log", "verify"])
    assert result.exit_code == 0 and "log intact: 2 event(s) checked" in result.output


@pytest.mark.parametrize(
    ("sql", "broken"),
    [
        ("update events set credential = '26bit:12:34568' where id = 1", 1),
        ("update events set credential = null where id = 1", 1),
        ("update events set credential = '26bit:1:1' where id = 2", 2),  # added afterwards
    ],
)
def test_editing_an_events_credential_breaks_the_chain(db, sql, broken):
    db.add_event(chained_event(credential="26bit:12:34567"))
    db.add_event(chained_event())
    conn = sqlite3.connect(db.path)  # as anyone with the sqlite3 tool could
    with conn:
        conn.execute(sql)
    conn.close()
    found = db.verify_log()
    assert not found.ok
    assert (found.broken_id, found.problem) == (broken, f"event {broken} was edited: it does "
                                                "not match its hash")  # fmt: skip


def test_an_event_without_a_credential_hashes_as_before_the_field_existed(db, monkeypatch):
    event_id = db.add_event(chained_event())
    columns = sorted({*logchain.COVERED})
    row = dict(zip(columns, db.db.execute(f"select {', '.join(columns)} from events").fetchone(),
                   strict=True))  # fmt: skip
    prev, stored = db.db.execute("select prev_hash, hash from events where id = ?", [event_id]
                                 ).fetchone()  # fmt: skip
    older = {k: v for k, v in logchain.COVERED.items() if k != "credential"}
    monkeypatch.setattr(logchain, "COVERED", older)
    assert logchain.link(prev, row) == stored  # events logged before m008 still verify


# --- the CLI ----------------------------------------------------------------------


def listed(gate) -> dict[str, str | None]:
    return {p["name"]: p["credential"] for p in json.loads(gate("people", "list", "--json"))}


def test_gate_people_set_credential(gate):
    out = gate("people", "set", "ada", "--credential", " h10301:12:34567 ")
    assert out.strip() == "ada: credential = 26bit:12:34567"
    assert listed(gate) == {"ada": "26bit:12:34567", "bob": None}
    (ada_line,) = [line for line in gate("people", "list").splitlines() if line.startswith("ada")]
    assert "\tcredential 26bit:12:34567" in ada_line
    (bob_line,) = [line for line in gate("people", "list").splitlines() if line.startswith("bob")]
    assert "credential" not in bob_line

    taken = gate("people", "set", "bob", "--credential", "26bit:12:34567", code=1)
    assert taken.strip().splitlines() == ["Error: credential 26bit:12:34567 already belongs to ada"]
    assert listed(gate)["bob"] is None

    bad = gate("people", "set", "bob", "--credential", "26bit:300:5", code=2)
    errors = [line for line in bad.splitlines() if line.startswith("Error")]
    assert errors == ["Error: Invalid value for '--credential': '26bit:300:5': facility code "
                      "must be 0-255"]  # fmt: skip
    assert "no person called 'carol'" in gate(
        "people", "set", "carol", "--credential", "raw:8:1", code=1
    )

    out = gate("people", "set", "ada", "--credential", "none")
    assert out.strip() == "ada: credential = None"
    assert listed(gate) == {"ada": None, "bob": None}
    gate("people", "set", "bob", "--credential", "26bit:12:34567")  # free again
    assert listed(gate)["bob"] == "26bit:12:34567"


def test_gate_people_set_with_nothing_names_credential(gate):
    out = gate("people", "set", "ada", code=2)
    assert "nothing to set: --enable/--disable, --valid-from, --valid-until, --credential" in out


# --- what is published -----------------------------------------------------------------


def test_the_mqtt_event_carries_no_card_number():
    from plugins.mqtt_actuator import MqttActuator

    sent = []

    class Link:
        def topic(self, door, what):
            return f"gate/{door}/{what}"

        def publish(self, topic, payload, qos=0):
            sent.append((topic, json.loads(payload)))

    actuator = MqttActuator.__new__(MqttActuator)  # only announce() is exercised
    actuator.link = Link()
    actuator.announce(chained_event(credential="26bit:12:34567", id=7))
    ((topic, payload),) = sent
    assert topic == "gate/front/event"
    assert "credential" not in payload and payload["id"] == 7
    assert "34567" not in json.dumps(payload)


def test_the_home_assistant_decision_carries_no_card_number():
    from types import SimpleNamespace

    from plugins.homeassistant import HomeAssistantActuator

    sent = []

    class Link:
        def publish(self, topic, payload, qos=0, retain=False):
            sent.append((topic, payload))

    actuator = HomeAssistantActuator.__new__(HomeAssistantActuator)  # only the payload
    actuator.config = SimpleNamespace(mqtt=SimpleNamespace(topic_prefix="gate"))
    actuator.link = Link()
    actuator._announce_payload("front", chained_event(credential="26bit:12:34567").public())
    published = dict(sent)
    assert published["gate/front/person"] == "ada"
    decision = json.loads(published["gate/front/decision"])
    assert decision["person"] == "ada" and "credential" not in decision
    assert "34567" not in published["gate/front/decision"]


def test_gate_log_shows_the_card_presented(gate):
    """The credential a panel was given is in gate log's line, its CSV and its JSON."""
    store = GateDB(gate.db_path)
    store.add_event(AccessEvent(time=utc_iso(1.0e9), door="front", decision="granted",
                                reason="granted", person="ada", person_id=1, distance=0.3,
                                delivered=True, credential="26bit:12:34567"))  # fmt: skip
    store.close()
    assert "delivered  card 26bit:12:34567" in gate("log", "--since", "2000-01-01")
    rows = gate("log", "--since", "2000-01-01", "--csv").splitlines()
    assert "credential" in rows[0].split(",") and "26bit:12:34567" in rows[1]
    (row,) = json.loads(gate("log", "--since", "2000-01-01", "--json"))
    assert row["credential"] == "26bit:12:34567"
