"""The SQLite store: exact schema from migrations, all-or-nothing enrollment, the event log."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlite_utils import Database

from gate.errors import StoreError
from gate.storage.database import GateDB, Template
from gate.storage.events import AccessEvent, utc_iso

#: every table as the migrations leave it, read back with sqlite's PRAGMAs (see :func:`schema_of`):
#: each column's type, NOT NULL and default; the primary key; every other index, unique or not;
#: the foreign keys, with their ON DELETE / ON UPDATE actions when not NO ACTION
SCHEMA = {
    "people": {
        "columns": {
            "id": "INTEGER",
            "name": "TEXT NOT NULL",
            "created_at": "TEXT NOT NULL",
            "enabled": "INTEGER NOT NULL DEFAULT 1",
            "valid_from": "TEXT",
            "valid_until": "TEXT",
            "credential": "TEXT",
        },
        "primary_key": ("id",),
        "indexes": {
            "idx_people_name": "UNIQUE (name)",
            "idx_people_credential": "UNIQUE (credential)",
        },
        "foreign_keys": {},
    },
    "templates": {
        "columns": {
            "id": "INTEGER",
            "person_id": "INTEGER NOT NULL",
            "encoder": "TEXT NOT NULL",
            "encoder_version": "TEXT",
            "space": "TEXT NOT NULL",
            "dim": "INTEGER NOT NULL",
            "embedding": "BLOB NOT NULL",
            "source_sha256": "TEXT",
            "source_name": "TEXT",
            "face_size": "REAL",
            "quality": "REAL",
            "face_crop": "BLOB",
            "crop_face": "TEXT",
            "created_at": "TEXT NOT NULL",
            "yaw": "REAL",
            "grey": "INTEGER",
            "detector_score": "REAL",
        },
        "primary_key": ("id",),
        "indexes": {
            "idx_templates_person_id": "(person_id)",
            "idx_templates_person_id_source_sha256_space": (
                "UNIQUE (person_id, source_sha256, space)"
            ),
        },
        "foreign_keys": {"person_id": "people(id)"},
    },
    "doors": {
        "columns": {
            "name": "TEXT",
            "created_at": "TEXT NOT NULL",
            "source": "TEXT",
            "direction": "TEXT",
            "area": "TEXT",
            "threshold": "REAL",
            "min_margin": "REAL",
            "confirm_frames": "INTEGER",
            "window_frames": "INTEGER",
            "cooldown_s": "REAL",
            "relock_s": "REAL",
            "enabled": "INTEGER NOT NULL DEFAULT 1",
            "motion": "INTEGER",
            "detect_width": "INTEGER",
        },
        "primary_key": ("name",),
        "indexes": {},
        "foreign_keys": {},
    },
    "events": {
        "columns": {
            "id": "INTEGER",
            "time": "TEXT NOT NULL",
            "door": "TEXT NOT NULL",
            "decision": "TEXT NOT NULL",
            "reason": "TEXT NOT NULL",
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
            "uuid": "TEXT",
            "node": "TEXT",
            "acked_at": "TEXT",
            "credential": "TEXT",
        },
        "primary_key": ("id",),
        "indexes": {
            "idx_events_time": "(time)",
            "idx_events_door_time": "(door, time)",
            "idx_events_person_id_time": "(person_id, time)",
            "idx_events_decision_time": "(decision, time)",
            "idx_events_uuid": "UNIQUE (uuid)",
            "idx_events_outbox": "(id) WHERE ...",
        },
        "foreign_keys": {},  # the log outlives the people and doors it names
    },
    "log_chain": {
        "columns": {
            "name": "TEXT",
            "event_id": "INTEGER NOT NULL",
            "hash": "TEXT NOT NULL",
            "time": "TEXT",
            "purged": "INTEGER",
        },
        "primary_key": ("name",),
        "indexes": {},
        "foreign_keys": {},
    },
    "groups": {
        "columns": {"id": "INTEGER", "name": "TEXT NOT NULL", "created_at": "TEXT"},
        "primary_key": ("id",),
        "indexes": {"idx_groups_name": "UNIQUE (name)"},
        "foreign_keys": {},
    },
    "memberships": {
        "columns": {"person_id": "INTEGER", "group_id": "INTEGER"},
        "primary_key": ("person_id", "group_id"),
        "indexes": {},
        "foreign_keys": {"person_id": "people(id)", "group_id": "groups(id)"},
    },
    "rules": {
        "columns": {
            "id": "INTEGER",
            "group_id": "INTEGER NOT NULL",
            "door": "TEXT NOT NULL",
            "days": "INTEGER NOT NULL",
            "start": "TEXT NOT NULL",
            "end": "TEXT NOT NULL",
            "created_at": "TEXT",
        },
        "primary_key": ("id",),
        "indexes": {},
        "foreign_keys": {"group_id": "groups(id)"},
    },
    "passages": {
        "columns": {
            "area": "TEXT",
            "person_id": "INTEGER",
            "direction": "TEXT",
            "time": "TEXT",
            "event_id": "INTEGER",
        },
        "primary_key": ("area", "person_id"),
        "indexes": {},
        "foreign_keys": {},
    },
    "fleet_objects": {
        "columns": {
            "kind": "TEXT",
            "key": "TEXT",
            "version": "INTEGER NOT NULL",
            "digest": "TEXT",
            "payload": "BLOB",
        },
        "primary_key": ("kind", "key"),
        "indexes": {"idx_fleet_objects_version": "(version)"},
        "foreign_keys": {},
    },
    "fleet_dirty": {
        "columns": {"kind": "TEXT", "key": "TEXT"},
        "primary_key": ("kind", "key"),
        "indexes": {},
        "foreign_keys": {},
    },
    "fleet_state": {
        "columns": {"name": "TEXT", "value": "TEXT"},
        "primary_key": ("name",),
        "indexes": {},
        "foreign_keys": {},
    },
    "fleet_refusals": {
        "columns": {
            "id": "INTEGER",
            "time": "TEXT NOT NULL",
            "topic": "TEXT NOT NULL",
            "reason": "TEXT NOT NULL",
        },
        "primary_key": ("id",),
        "indexes": {},
        "foreign_keys": {},
    },
}


def schema_of(db: Database) -> dict:
    """Every table but sqlite-utils' own, in :data:`SCHEMA`'s terms, from sqlite's PRAGMAs."""
    tables = [
        row[0]
        for row in db.execute("select name from sqlite_master where type = 'table'")
        if row[0] != "_sqlite_migrations" and not row[0].startswith("sqlite_")
    ]
    out = {}
    for table in tables:
        columns, primary_key = {}, []
        for _cid, name, kind, not_null, default, pk in db.execute(f"pragma table_info([{table}])"):
            columns[name] = (
                kind
                + (" NOT NULL" if not_null else "")
                + (f" DEFAULT {default}" if default is not None else "")
            )
            if pk:
                primary_key.append((pk, name))
        indexes = {}
        for _seq, index, unique, origin, partial in db.execute(f"pragma index_list([{table}])"):
            if origin == "pk":
                continue  # the primary key, above
            names = [row[2] for row in db.execute(f"pragma index_info([{index}])")]
            indexes[index] = (
                ("UNIQUE " if unique else "")
                + f"({', '.join(names)})"
                + (" WHERE ..." if partial else "")
            )
        references: dict[int, tuple[str, list[str], list[str], str]] = {}
        for fk, _seq, other, src, dst, on_update, on_delete, _match in db.execute(
            f"pragma foreign_key_list([{table}])"
        ):
            actions = "".join(
                f" ON {verb} {action}"
                for verb, action in (("DELETE", on_delete), ("UPDATE", on_update))
                if action != "NO ACTION"
            )
            _, sources, targets, _ = references.setdefault(fk, (other, [], [], actions))
            sources.append(src)
            targets.append(dst)
        foreign_keys = {
            ", ".join(sources): f"{other}({', '.join(targets)}){actions}"
            for other, sources, targets, actions in references.values()
        }
        out[table] = {
            "columns": columns,
            "primary_key": tuple(name for _, name in sorted(primary_key)),
            "indexes": indexes,
            "foreign_keys": foreign_keys,
        }
    return out


def template(seed: int, sha: str = "a" * 64) -> Template:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return Template(vector, "dlib", "resnet_v1", "dlib-resnet-v1", sha, "x.jpg", 120.0, 300.0)


def test_migrations_give_the_exact_schema(db):
    assert schema_of(db.db) == SCHEMA
    assert db.db.journal_mode == "wal"
    assert db.db.execute("pragma foreign_keys").fetchone()[0] == 1  # enforced, not decoration


def test_migrations_apply_once_and_reopen_cleanly(tmp_path):
    first = GateDB(tmp_path / "g.db")
    first.enroll("ada", [template(1)])
    first.close()
    again = GateDB(tmp_path / "g.db")
    applied = list(again.db.query("select name from _sqlite_migrations"))
    assert applied == [
        {"name": n}
        for n in (
            "m001_initial",
            "m002_sites",
            "m003_open_set",
            "m004_log_chain",
            "m005_door_detection",
            "m006_fleet",
            "m007_fleet_marks_by_index",
            "m008_credentials",
        )
    ]
    assert [p["name"] for p in again.people()] == ["ada"]


def test_a_database_of_the_first_schema_is_upgraded_keeping_its_data(tmp_path):
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
    assert schema_of(upgraded.db) == SCHEMA  # upgraded or fresh: the same database


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
