"""What gate keeps private: the database's file modes, removing a person whole, --erase."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from click.testing import CliRunner

from gate.cli import cli
from gate.demo import sample_path
from gate.storage.database import GateDB, Template
from gate.storage.events import AccessEvent, utc_iso

FACE = sample_path("people", "obama", "obama.jpg").read_bytes()  # a real JPEG of a face
OTHER_FACE = sample_path("people", "biden", "biden.jpg").read_bytes()


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_is_private_to_its_owner(tmp_path):
    path = tmp_path / "data" / "gate" / "gate.db"
    store = GateDB(path)
    store.add_event(AccessEvent(utc_iso(0), "front", "denied", "unknown", snapshot=FACE))
    assert mode(path.parent) == 0o700
    for each in (path, path.with_name("gate.db-wal"), path.with_name("gate.db-shm")):
        assert mode(each) == 0o600, each
    store.close()


def test_an_old_world_readable_database_is_made_private_and_its_folder_left_alone(tmp_path, caplog):
    path = tmp_path / "gate.db"
    GateDB(path).close()
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    GateDB(path).close()
    assert mode(path) == 0o600
    assert f"{path} was open to others (mode 644): now 600" in caplog.text
    assert mode(tmp_path) == 0o755  # may be the working directory: not ours to change


@pytest.fixture
def site(tmp_path, monkeypatch):
    """ada and bob enrolled; ada in a group with an anti-passback place; a log of both."""
    monkeypatch.delenv("GATE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "gate.db"
    store = GateDB(path)
    ids = {}
    for seed, name in enumerate(("ada", "bob")):
        vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
        ids[name], _ = store.enroll(name, [Template(vector, "e", "1", "s", name, "x.jpg", 99, 99)])
    store.add_group("staff")
    store.join("staff", ["ada", "bob"])
    for name, reason in (("ada", "granted"), ("bob", "granted"), ("ada", "outside_hours")):
        decision = "granted" if reason == "granted" else "denied"
        store.add_event(
            AccessEvent(utc_iso(1e9), "lobby", decision, reason, person_id=ids[name],
                        person=name, distance=0.3, snapshot=FACE if name == "ada" else OTHER_FACE)
        )  # fmt: skip
    store.set_delivered(1, True)
    store.record_passage("lobby", ids["ada"], "in", utc_iso(1e9), 1)
    store.close()

    def gate(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--db", str(path), *args], catch_exceptions=False)
        return result.exit_code, result.output

    gate.path, gate.ids = path, ids
    return gate


def test_removing_a_person_in_a_group_removes_all_of_theirs(site):
    """Issue 10: an IntegrityError traceback while their memberships were left behind."""
    assert site("people", "remove", "ada", "--yes") == (0, "removed ada (1 template(s))\n")
    store = GateDB(site.path)
    assert [p["name"] for p in store.people()] == ["bob"]
    assert store.groups() == [{"name": "staff", "members": ["bob"]}]
    assert store.db["memberships"].count_where("person_id = ?", [site.ids["ada"]]) == 0
    assert store.db["passages"].count == 0
    logged = {e.id: (e.person, e.snapshot) for e in store.events(snapshots=True)}
    assert logged == {
        1: ("ada", FACE),
        2: ("bob", OTHER_FACE),
        3: ("ada", FACE),
    }  # the log keeps them
    assert store.verify_log().ok
    store.close()


def test_remove_erase_takes_the_name_and_faces_out_of_past_events(site):
    ada = site.ids["ada"]
    code, output = site("people", "remove", "ada", "--yes", "--erase")
    assert code == 0
    assert output == f"removed ada (1 template(s)); 2 past event(s) now show #{ada}\n"
    store = GateDB(site.path)
    logged = {e.id: (e.person, e.person_id, e.snapshot) for e in store.events(snapshots=True)}
    assert logged == {1: (f"#{ada}", ada, None), 2: ("bob", site.ids["bob"], OTHER_FACE),
                      3: (f"#{ada}", ada, None)}  # fmt: skip
    assert store.db["events"].count_where("person_salt is null and person_id = ?", [ada]) == 2
    assert store.events(person="ada") == []
    found = store.verify_log()
    assert found.ok and found.erased == 2, found.problem
    store.close()
    code, output = site("log", "verify")
    assert code == 0 and "2 event(s) with their person's name erased" in output


def test_remove_asks_first_and_names_what_erase_will_do(site):
    result = CliRunner().invoke(
        cli, ["--db", str(site.path), "people", "remove", "ada", "--erase"], input="n\n"
    )
    assert result.exit_code == 1
    assert "Remove ada and all their templates and erase them from 2 past event(s)?" in (
        result.output
    )
    store = GateDB(site.path)
    assert [p["name"] for p in store.people()] == ["ada", "bob"]
    assert store.events(snapshots=True)[0].snapshot == FACE
    store.close()


def test_an_erased_face_is_overwritten_in_the_file_not_just_unlinked(site):
    piece = FACE[len(FACE) // 2 : len(FACE) // 2 + 64]  # from the middle of the JPEG's data
    assert piece in site.path.read_bytes()  # the fixture's connection closed: checkpointed
    assert site("people", "remove", "ada", "--yes", "--erase")[0] == 0
    store = GateDB(site.path)  # the last connection to close checkpoints the write-ahead log
    store.close()
    data = site.path.read_bytes()
    assert piece not in data
    assert OTHER_FACE[len(OTHER_FACE) // 2 : len(OTHER_FACE) // 2 + 64] in data  # bob's stays
