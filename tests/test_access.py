"""Access rules: doors, groups, weekly hours (fixed clock), validity, disabled, anti-passback."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gate import hookimpl
from gate.policy.access import (
    AccessRequest,
    DoorInfo,
    Verdict,
    Window,
    builtin_policy,
    format_days,
    parse_clock,
    parse_days,
)
from gate.storage.database import Template

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_9 = datetime(2026, 11, 30, 9, 0, tzinfo=BERLIN)  # a Monday
SATURDAY_9 = datetime(2026, 12, 5, 9, 0, tzinfo=BERLIN)


def test_days_and_clock_parsing():
    assert parse_days("mon-fri") == 0b0011111
    assert parse_days("sat,sun") == 0b1100000
    assert parse_days("fri-mon") == 0b1110001  # wraps over the weekend
    assert format_days(parse_days("daily")) == "daily"
    assert format_days(parse_days("mon,wed-thu")) == "mon,wed,thu"
    assert parse_clock("07:30") == time(7, 30)
    assert parse_clock("24:00") == time.max
    for bad in ("monday", "mon-xyz", ""):
        with pytest.raises(ValueError):
            parse_days(bad)
    for bad in ("7", "25:00", "12:60"):
        with pytest.raises(ValueError):
            parse_clock(bad)


def test_windows_including_overnight():
    office = Window(parse_days("mon-fri"), time(8), time(18))
    assert office.contains(MONDAY_9)
    assert not office.contains(MONDAY_9.replace(hour=18))
    assert not office.contains(SATURDAY_9)
    night = Window(parse_days("fri"), time(22), time(6))  # Friday 22:00 to Saturday 06:00
    assert night.contains(datetime(2026, 12, 4, 23, 0, tzinfo=BERLIN))
    assert night.contains(datetime(2026, 12, 5, 5, 59, tzinfo=BERLIN))
    assert not night.contains(datetime(2026, 12, 5, 6, 0, tzinfo=BERLIN))
    assert not night.contains(datetime(2026, 12, 1, 23, 0, tzinfo=BERLIN))  # a Tuesday


@pytest.fixture
def site(db):
    """ada (staff), bob (visitors, valid this week), cy (staff, disabled); doors front, lab."""
    for name in ("ada", "bob", "cy"):
        vector = np.random.default_rng(len(name)).normal(size=128).astype(np.float32)
        db.enroll(name, [Template(vector, "e", "1", "s", name, "x.jpg", 100, 100)])
    db.add_door("front")
    db.add_door("lab")
    db.add_door("turnstile-in", direction="in", area="lobby")
    db.add_door("turnstile-out", direction="out", area="lobby")
    db.add_group("staff")
    db.add_group("visitors")
    db.join("staff", ["ada", "cy"])
    db.join("visitors", ["bob"])
    db.add_rule("staff", "*", parse_days("mon-fri"), "07:00", "19:00")
    db.add_rule("visitors", "front", parse_days("daily"), "09:00", "17:00")
    db.set_person(
        "bob", valid_from="2026-11-30T00:00:00+01:00", valid_until="2026-12-05T00:00:00+01:00"
    )
    db.set_person("cy", enabled=False)
    return db


def ask(db, name: str, door: str, when: datetime) -> Verdict:
    person = db.person_info(db.person(name)["id"])
    row = db.door(door)
    info = DoorInfo(door, row["direction"], row["area"])
    last = db.last_passage(row["area"], person.id) if row["area"] else None
    return builtin_policy(AccessRequest(person, info, when, tuple(db.rules()), last))


def test_rules_decide_across_doors_groups_and_hours(site):
    assert ask(site, "ada", "lab", MONDAY_9) == Verdict(True, "granted")
    assert ask(site, "ada", "lab", SATURDAY_9).reason == "outside_hours"
    assert ask(site, "ada", "front", MONDAY_9.replace(hour=6, minute=59)).reason == "outside_hours"
    assert ask(site, "bob", "front", MONDAY_9) == Verdict(True, "granted")
    assert ask(site, "bob", "lab", MONDAY_9).reason == "not_allowed"
    assert ask(site, "bob", "front", MONDAY_9.replace(hour=8)).reason == "outside_hours"
    assert ask(site, "cy", "front", MONDAY_9).reason == "disabled"


def test_visitors_expire_and_are_not_valid_before_their_start(site):
    assert ask(site, "bob", "front", datetime(2026, 11, 29, 10, tzinfo=BERLIN)).reason == (
        "not_yet_valid"
    )
    assert ask(site, "bob", "front", datetime(2026, 12, 4, 16, 59, tzinfo=BERLIN)).allowed
    assert ask(site, "bob", "front", SATURDAY_9.replace(hour=10)).reason == "expired"


def test_anti_passback_refuses_a_second_entry_until_an_exit_and_can_be_reset(site):
    ada = site.person("ada")["id"]
    assert ask(site, "ada", "turnstile-in", MONDAY_9).allowed
    site.record_passage("lobby", ada, "in", "2026-11-30T08:00:00.000Z", 1)
    assert ask(site, "ada", "turnstile-in", MONDAY_9).reason == "anti_passback"
    assert ask(site, "ada", "turnstile-out", MONDAY_9).allowed
    site.record_passage("lobby", ada, "out", "2026-11-30T08:05:00.000Z", 2)
    assert ask(site, "ada", "turnstile-in", MONDAY_9).allowed
    site.record_passage("lobby", ada, "in", "2026-11-30T08:10:00.000Z", 3)
    assert site.reset_passages("ada") == 1  # the override
    assert ask(site, "ada", "turnstile-in", MONDAY_9).allowed


def test_without_rules_everyone_enrolled_passes_unless_the_site_says_deny(db):
    vector = np.ones(128, np.float32)
    db.enroll("ada", [Template(vector, "e", "1", "s", "a", "x.jpg", 100, 100)])
    person = db.person_info(db.person("ada")["id"])
    request = AccessRequest(person, DoorInfo("front"), MONDAY_9)
    assert builtin_policy(request).allowed
    strict = AccessRequest(person, DoorInfo("front"), MONDAY_9, without_rules="deny")
    assert builtin_policy(strict).reason == "not_allowed"


def test_a_plugin_policy_vetoes_before_the_built_in_rules(pm, site):
    class Alarm:
        armed = True

        @hookimpl
        def access_policy(self, request):
            return Verdict(False, "alarm_armed") if self.armed else None

    alarm = Alarm()
    pm.register_plugin(alarm, "alarm", "0", "test")
    person = site.person_info(site.person("ada")["id"])
    request = AccessRequest(person, DoorInfo("lab"), MONDAY_9, tuple(site.rules()))
    assert pm.hook.access_policy(request=request) == Verdict(False, "alarm_armed")
    alarm.armed = False  # returning None hands the decision on to gate's rules
    assert pm.hook.access_policy(request=request) == Verdict(True, "granted")


@pytest.fixture
def obama_at_the_door(tmp_path, pm):
    """obama enrolled, door front watching a folder of four photos of him."""
    import shutil

    from gate.config import parse_config
    from gate.demo import sample_path
    from gate.recognition.enrollment import enroll
    from gate.recognition.pipeline import Pipeline
    from gate.storage.database import GateDB

    photo = sample_path("people", "obama", "obama.jpg")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        shutil.copy(photo, folder / f"{i}.jpg")
    config = parse_config(
        {"pipeline": {"actuators": ["log"]}, "decision": {"confirm_frames": 2, "window_frames": 3}}
    )
    pipeline = Pipeline(config, pm.registry)
    db = GateDB(tmp_path / "gate.db")
    assert enroll(db, pipeline, "obama", [photo]).stored
    db.add_door("front", source=str(folder))
    db.add_door("back")
    yield pipeline, db
    pipeline.close()
    db.close()


def run_front(pipeline, db, pm):
    from gate.runtime.doors import doors_for_run
    from gate.runtime.runner import Runner

    return Runner(
        pipeline, db.path, doors_for_run(db, pipeline.config, [], None), hook=pm.hook
    ).run()


def test_the_loop_logs_a_refused_person_with_the_reason_and_sends_nothing(obama_at_the_door, pm):
    pipeline, db = obama_at_the_door
    db.add_group("staff")
    db.join("staff", ["obama"])
    db.add_rule("staff", "back", parse_days("daily"), "00:00", "24:00")
    stats = run_front(pipeline, db, pm)["front"]
    assert stats.granted == 0
    (event,) = db.events()
    assert (event.decision, event.reason, event.person) == ("denied", "not_allowed", "obama")
    db.add_rule("staff", "front", parse_days("daily"), "00:00", "24:00")
    run_front(pipeline, db, pm)
    assert db.events()[0].decision == "granted"


def test_a_failing_policy_plugin_denies(obama_at_the_door, pm):
    pipeline, db = obama_at_the_door

    class Broken:
        @hookimpl
        def access_policy(self, request):
            raise RuntimeError("alarm panel unreachable")

    pm.register_plugin(Broken(), "broken", "0", "test")
    run_front(pipeline, db, pm)
    (event,) = db.events()
    assert (event.decision, event.reason) == ("denied", "policy_error")
