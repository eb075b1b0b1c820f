"""The admin's commands for the site: doors, groups, rules, people's validity, the log."""

from __future__ import annotations

import csv
import io
import json

from gate.storage.database import GateDB
from gate.storage.events import AccessEvent, utc_iso


def test_doors_add_list_set_and_validation(gate):
    gate("doors", "add", "lobby-in", "--source", "0", "--direction", "in", "--area", "lobby",
         "--confirm-frames", "2", "--window-frames", "4")  # fmt: skip
    rows = json.loads(gate("doors", "list", "--json"))
    assert [(r["name"], r["direction"], r["area"], r["confirm_frames"]) for r in rows] == [
        ("lobby-in", "in", "lobby", 2)
    ]
    gate("doors", "set", "lobby-in", "--threshold", "0.5", "--disable")
    (row,) = json.loads(gate("doors", "list", "--json"))
    assert row["threshold"] == 0.5 and row["enabled"] == 0
    out = gate("doors", "set", "lobby-in", "--confirm-frames", "9", code=1)
    assert "must not exceed window_frames" in out
    assert json.loads(gate("doors", "list", "--json"))[0]["confirm_frames"] == 2  # unchanged
    assert "already a door" in gate("doors", "add", "lobby-in", code=1)
    assert "invalid door name" in gate("doors", "add", "front/door", code=1)
    assert "Invalid value for '--direction'" in gate(
        "doors", "add", "x", "--direction", "up", code=2
    )


def test_groups_rules_and_people_validity(gate):
    gate("doors", "add", "front")
    gate("groups", "add", "staff")
    gate("groups", "join", "staff", "ada", "bob")
    gate("groups", "leave", "staff", "bob")
    assert json.loads(gate("groups", "list", "--json")) == [{"name": "staff", "members": ["ada"]}]
    assert "no rules: [policy] without_rules = 'allow'" in gate("rules", "list")
    gate("rules", "add", "--group", "staff", "--door", "front", "--days", "mon-fri",
         "--from", "08:00", "--to", "18:00")  # fmt: skip
    (rule,) = json.loads(gate("rules", "list", "--json"))
    assert (rule["group"], rule["door"], rule["days"], rule["from"], rule["to"]) == (
        "staff", "front", "mon,tue,wed,thu,fri", "08:00", "18:00",
    )  # fmt: skip
    assert "no door called 'lab'" in gate(
        "rules", "add", "--group", "staff", "--door", "lab", code=1
    )
    assert "days are mon..sun" in gate(
        "rules", "add", "--group", "staff", "--days", "weekdays", code=2
    )
    gate("people", "set", "bob", "--valid-from", "2026-12-01", "--valid-until", "2026-12-03")
    gate("people", "set", "ada", "--disable")
    people = {p["name"]: p for p in json.loads(gate("people", "list", "--json"))}
    assert people["ada"]["enabled"] is False and people["ada"]["groups"] == ["staff"]
    assert people["bob"]["valid_from"].startswith("2026-12-01T00:00:00")
    assert people["bob"]["valid_until"].startswith("2026-12-04T00:00:00")  # through the 3rd
    gate("groups", "remove", "staff")
    assert json.loads(gate("rules", "list", "--json")) == []


def test_log_filters_and_formats(gate):
    db = GateDB(gate.db_path)
    for door, decision, person, reason in [
        ("front", "granted", "ada", "granted"),
        ("back", "denied", None, "unknown"),
        ("front", "denied", "bob", "outside_hours"),
    ]:
        db.add_event(AccessEvent(utc_iso(1795890000), door, decision, reason, person=person))
    db.close()
    rows = json.loads(gate("log", "--door", "front", "--json"))
    assert sorted(r["reason"] for r in rows) == ["granted", "outside_hours"]
    table = list(csv.DictReader(io.StringIO(gate("log", "--decision", "denied", "--csv"))))
    assert sorted(r["reason"] for r in table) == ["outside_hours", "unknown"]
    assert "snapshot" not in table[0]
    assert json.loads(gate("log", "--person", "ada", "--json"))[0]["decision"] == "granted"
    assert json.loads(gate("log", "--since", "1h", "--json")) == []
    assert "use 30m, 2h, 7d or an ISO" in gate("log", "--since", "yesterday", code=2)


def test_doors_key_shows_rotates_and_keeps_it_private(gate, tmp_path):
    import os
    import stat

    gate("doors", "add", "front")
    key = gate("doors", "key", "front").splitlines()[0]
    assert len(key) == 64 and int(key, 16) >= 0
    assert gate("doors", "key", "front").splitlines()[0] == key  # the same until rotated
    path = tmp_path / "keys" / "front.key"  # beside the database
    assert path.read_text().strip() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    rotated = gate("doors", "key", "front", "--rotate").splitlines()[0]
    assert rotated != key and path.read_text().strip() == rotated
    assert "no door called 'back'" in gate("doors", "key", "back", code=1)
    os.chmod(path, 0o640)
    out = gate("doors", "key", "front", code=1)
    assert "others may read this key" in out and "Traceback" not in out
