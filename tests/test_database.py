"""The SQLite store: exact schema from migrations, all-or-nothing enrollment, the event log."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gate.errors import StoreError
from gate.storage.database import GateDB, Template
from gate.storage.events import AccessEvent, utc_iso

SCHEMA = {
    "people": {
        "id": "INTEGER",
        "name": "TEXT",
        "created_at": "TEXT",
        "enabled": "INTEGER",
        "valid_from": "TEXT",
        "valid_until": "TEXT",
    },
    "templates": {
        "id": "INTEGER",
        "person_id": "INTEGER",
        "encoder": "TEXT",
        "encoder_version": "TEXT",
        "space": "TEXT",
        "dim": "INTEGER",
        "embedding": "BLOB",
        "source_sha256": "TEXT",
        "source_name": "TEXT",
        "face_size": "REAL",
        "quality": "REAL",
        "face_crop": "BLOB",
        "crop_face": "TEXT",
        "created_at": "TEXT",
        "yaw": "REAL",
        "grey": "INTEGER",
        "detector_score": "REAL",
    },
    "doors": {
        "name": "TEXT",
        "created_at": "TEXT",
        "source": "TEXT",
        "direction": "TEXT",
        "area": "TEXT",
        "threshold": "REAL",
        "min_margin": "REAL",
        "confirm_frames": "INTEGER",
        "window_frames": "INTEGER",
        "cooldown_s": "REAL",
        "relock_s": "REAL",
        "enabled": "INTEGER",
    },
    "events": {
        "id": "INTEGER",
        "time": "TEXT",
        "door": "TEXT",
        "decision": "TEXT",
        "reason": "TEXT",
        "person_id": "INTEGER",
        "person": "TEXT",
        "distance": "REAL",
        "margin": "REAL",
        "latency_ms": "REAL",
        "delivered": "INTEGER",
        "snapshot": "BLOB",
        "actor": "TEXT",
        "note": "TEXT",
        "track": "INTEGER",
        "frames": "INTEGER",
        "threshold": "REAL",
        "quality": "REAL",
        "person_digest": "TEXT",
        "person_salt": "TEXT",
        "snapshot_sha256": "TEXT",
        "prev_hash": "TEXT",
        "hash": "TEXT",
        "delivered_seal": "TEXT",
    },
    "log_chain": {
        "name": "TEXT",
        "event_id": "INTEGER",
        "hash": "TEXT",
        "time": "TEXT",
        "purged": "INTEGER",
    },
    "groups": {"id": "INTEGER", "name": "TEXT", "created_at": "TEXT"},
    "memberships": {"person_id": "INTEGER", "group_id": "INTEGER"},
    "rules": {
        "id": "INTEGER",
        "group_id": "INTEGER",
        "door": "TEXT",
        "days": "INTEGER",
        "start": "TEXT",
        "end": "TEXT",
        "created_at": "TEXT",
    },
    "passages": {
        "area": "TEXT",
        "person_id": "INTEGER",
        "direction": "TEXT",
        "time": "TEXT",
        "event_id": "INTEGER",
    },
}


def template(seed: int, sha: str = "a" * 64) -> Template:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return Template(vector, "dlib", "resnet_v1", "dlib-resnet-v1", sha, "x.jpg", 120.0, 300.0)


def test_migrations_give_the_exact_schema(db):
    tables = {t.name: {c.name: c.type for c in t.columns} for t in db.db.tables}
    tables.pop("_sqlite_migrations")
    assert tables == SCHEMA
    assert db.db.journal_mode == "wal"
    assert db.db["templates"].foreign_keys[0].other_table == "people"


def test_migrations_apply_once_and_reopen_cleanly(tmp_path):
    first = GateDB(tmp_path / "g.db")
    first.enroll("ada", [template(1)])
    first.close()
    again = GateDB(tmp_path / "g.db")
    applied = list(again.db.query("select name from _sqlite_migrations"))
    assert applied == [
        {"name": n} for n in ("m001_initial", "m002_sites", "m003_open_set", "m004_log_chain")
    ]
    assert [p["name"] for p in again.people()] == ["ada"]


def test_a_database_of_the_first_schema_is_upgraded_keeping_its_data(tmp_path):
    from sqlite_utils import Database

    from gate.storage.migrations import migrations

    old = Database(tmp_path / "old.db")
    migrations.apply(old, stop_before="m002_sites")
    old["people"].insert({"name": "ada", "created_at": "2026-01-01T00:00:00.000Z"})
    old["doors"].insert({"name": "front", "created_at": "2026-01-01T00:00:00.000Z"})
    old.close()
    upgraded = GateDB(tmp_path / "old.db")
    (ada,) = upgraded.people()
    assert ada["name"] == "ada" and ada["enabled"] is True and ada["groups"] == []
    assert upgraded.door("front")["enabled"] == 1
    assert upgraded.person_info(ada["id"]).enabled


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match="not a usable gate database"):
        GateDB(path)


def test_enroll_stores_embeddings_exactly_and_skips_a_photo_enrolled_twice(db):
    t = template(7)
    person_id, added = db.enroll("ada", [t])
    assert added == 1
    assert db.enroll("ada", [t]) == (person_id, 0)
    vectors, ids = db.load_templates("dlib-resnet-v1")
    assert ids.tolist() == [person_id]
    np.testing.assert_array_equal(vectors[0], t.embedding)
    assert db.load_templates("another-space")[0].shape == (0, 0)


def test_enroll_is_all_or_nothing(db):
    good = template(1, "b" * 64)
    broken = Template(None, "dlib", "1", "dlib-resnet-v1", "c" * 64, "y.jpg", 1.0, 1.0)
    with pytest.raises(StoreError, match="not a finite 1-D embedding"):
        db.enroll("bob", [good, broken])
    assert db.people() == []
    assert db.db["templates"].count == 0


def test_people_remove_and_rename(db):
    db.enroll("ada", [template(1)])
    db.enroll("bob", [template(2, "d" * 64), template(3, "e" * 64)])
    assert [(p["name"], p["templates"]) for p in db.people()] == [("ada", 1), ("bob", 2)]
    with pytest.raises(StoreError, match="already a person called 'ada'"):
        db.rename_person("bob", "ada")
    db.rename_person("bob", "robert")
    assert db.remove_person("robert") == 2
    assert [p["name"] for p in db.people()] == ["ada"]
    with pytest.raises(StoreError, match="no person called 'robert'"):
        db.remove_person("robert")
    with pytest.raises(StoreError, match="invalid name"):
        db.enroll("  ", [template(4)])


def test_events_filter_by_time_person_door_and_decision(db):
    base = time.time() - 3600
    rows = [
        (0, "front", "granted", "ada"),
        (600, "back", "denied", None),
        (1200, "front", "granted", "bob"),
        (1800, "front", "denied", None),
    ]
    for offset, door, decision, person in rows:
        db.add_event(
            AccessEvent(
                time=utc_iso(base + offset),
                door=door,
                decision=decision,
                reason="granted" if person else "unknown",
                person=person,
                distance=0.4,
                margin=float("inf"),
                snapshot=b"\xff\xd8jpeg",
            )
        )
    assert [e.person for e in db.events(decision="granted")] == ["bob", "ada"]
    assert [e.door for e in db.events(door="back")] == ["back"]
    assert [e.person for e in db.events(person="ada")] == ["ada"]
    since = db.events(since=utc_iso(base + 900))
    assert len(since) == 2
    assert len(db.events(until=utc_iso(base + 900))) == 2
    assert db.events(limit=1)[0].time == utc_iso(base + 1800)
    assert db.events()[0].snapshot is None
    assert db.events(snapshots=True)[0].snapshot == b"\xff\xd8jpeg"
    assert db.events()[0].margin is None  # inf is stored as "no other person"
