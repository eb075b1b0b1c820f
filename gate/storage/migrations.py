"""The database schema, as numbered migrations. Never rename or edit an applied one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("gate")


@migrations()
def m001_initial(db: Database) -> None:
    """People, their face templates, doors and access events."""
    db["people"].create(
        {"id": int, "name": str, "created_at": str},
        pk="id",
        not_null={"name", "created_at"},
    )
    db["people"].create_index(["name"], unique=True)
    db["templates"].create(
        {
            "id": int,
            "person_id": int,
            "encoder": str,
            "encoder_version": str,
            "space": str,
            "dim": int,
            "embedding": bytes,
            "source_sha256": str,
            "source_name": str,
            "face_size": float,
            "quality": float,
            "face_crop": bytes,
            "crop_face": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("person_id", "people", "id")],
        not_null={"person_id", "encoder", "space", "dim", "embedding", "created_at"},
    )
    db["templates"].create_index(["person_id"])
    db["templates"].create_index(["person_id", "source_sha256", "encoder"], unique=True)
    db["doors"].create({"name": str, "created_at": str}, pk="name", not_null={"created_at"})
    db["events"].create(
        {
            "id": int,
            "time": str,
            "door": str,
            "decision": str,
            "reason": str,
            "person_id": int,
            "person": str,
            "distance": float,
            "margin": float,
            "latency_ms": float,
            "delivered": int,
            "snapshot": bytes,
        },
        pk="id",
        not_null={"time", "door", "decision", "reason"},
    )
    for columns in (["time"], ["door", "time"], ["person_id", "time"], ["decision", "time"]):
        db["events"].create_index(columns)


@migrations()
def m002_sites(db: Database) -> None:
    """Doors with their own settings, groups, rules, visitors' validity, anti-passback."""
    db["people"].add_column("enabled", int, not_null_default=1)
    db["people"].add_column("valid_from", str)
    db["people"].add_column("valid_until", str)
    for column, kind in (
        ("source", str),
        ("direction", str),
        ("area", str),
        ("threshold", float),
        ("min_margin", float),
        ("confirm_frames", int),
        ("window_frames", int),
        ("cooldown_s", float),
        ("relock_s", float),
    ):
        db["doors"].add_column(column, kind)
    db["doors"].add_column("enabled", int, not_null_default=1)
    db["groups"].create({"id": int, "name": str, "created_at": str}, pk="id", not_null={"name"})
    db["groups"].create_index(["name"], unique=True)
    db["memberships"].create(
        {"person_id": int, "group_id": int},
        pk=("person_id", "group_id"),
        foreign_keys=[("person_id", "people", "id"), ("group_id", "groups", "id")],
    )
    db["rules"].create(
        {"id": int, "group_id": int, "door": str, "days": int, "start": str, "end": str,
         "created_at": str},
        pk="id",
        foreign_keys=[("group_id", "groups", "id")],
        not_null={"group_id", "door", "days", "start", "end"},
    )  # fmt: skip
    db["passages"].create(
        {"area": str, "person_id": int, "direction": str, "time": str, "event_id": int},
        pk=("area", "person_id"),
    )
    db["events"].add_column("actor", str)
    db["events"].add_column("note", str)
    db["templates"].create_index(["person_id", "source_sha256", "space"], unique=True)
    db.execute("drop index if exists idx_templates_person_id_source_sha256_encoder")


@migrations()
def m003_open_set(db: Database) -> None:
    """Decisions per face track (track, good views fused, threshold, quality); template pose."""
    for column, kind in (("track", int), ("frames", int), ("threshold", float), ("quality", float)):
        db["events"].add_column(column, kind)
    for column, kind in (("yaw", float), ("grey", int), ("detector_score", float)):
        db["templates"].add_column(column, kind)


@migrations()
def m004_log_chain(db: Database) -> None:
    """The access log's hash chain; its head and anchor (events before it are not covered)."""
    for column in (
        "person_digest", "person_salt", "snapshot_sha256", "prev_hash", "hash", "delivered_seal"
    ):  # fmt: skip
        db["events"].add_column(column, str)
    db["log_chain"].create(
        {"name": str, "event_id": int, "hash": str, "time": str, "purged": int},
        pk="name",
        not_null={"event_id", "hash"},
    )
    last = db.execute("select coalesce(max(id), 0) from events").fetchone()[0]
    for name in ("head", "anchor"):
        db["log_chain"].insert({"name": name, "event_id": last, "hash": "0" * 64, "purged": 0})


@migrations()
def m005_door_detection(db: Database) -> None:
    """A door's own motion gating and detection width (None: the config's)."""
    db["doors"].add_column("motion", int)
    db["doors"].add_column("detect_width", int)


#: a random UUID (version 4) in SQL, for the events logged before they had one
_UUID4_SQL = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random()) % 4, 1) || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
)

#: what a change to each table marks for the fleet: the object's kind and its key
_FLEET_OBJECTS = {
    "people": ("person", "id"),
    "templates": ("person", "person_id"),
    "memberships": ("person", "person_id"),
    "groups": ("group", "id"),
    "rules": ("rule", "id"),
    "doors": ("door", "name"),
}


@migrations()
def m006_fleet(db: Database) -> None:
    """A fleet of gates (gate.fleet): events get a UUID, the node that logged them and an
    acknowledgement; replicated objects' versions; triggers that mark changed objects;
    refused fleet messages."""
    for column in ("uuid", "node", "acked_at"):
        db["events"].add_column(column, str)
    db.execute(f"update events set uuid = {_UUID4_SQL}")
    db["events"].create_index(["uuid"], unique=True)
    db.execute(
        "create index idx_events_outbox on events (id) where node is null and acked_at is null"
    )
    db["fleet_objects"].create(
        {"kind": str, "key": str, "version": int, "digest": str, "payload": bytes},
        pk=("kind", "key"),
        not_null={"version"},
    )
    db["fleet_objects"].create_index(["version"])
    db["fleet_dirty"].create({"kind": str, "key": str}, pk=("kind", "key"))
    db["fleet_state"].create({"name": str, "value": str}, pk="name")
    db["fleet_refusals"].create(
        {"id": int, "time": str, "topic": str, "reason": str},
        pk="id",
        not_null={"time", "topic", "reason"},
    )
    for table, (kind, key) in _FLEET_OBJECTS.items():
        for change, rows in (("insert", ["new"]), ("update", ["old", "new"]), ("delete", ["old"])):
            marks = " ".join(  # no conflict to resolve: an UPSERT's own policy would win
                f"insert into fleet_dirty (kind, key) select '{kind}', {row}.{key} where not "
                f"exists (select 1 from fleet_dirty where kind = '{kind}' and key = {row}.{key});"
                for row in rows
            )
            db.execute(
                f"create trigger fleet_{table}_{change} after {change} on {table} begin {marks} end"
            )


@migrations()
def m007_fleet_marks_by_index(db: Database) -> None:
    """The fleet's change marks compare keys as text, so that they use fleet_dirty's primary
    key: an integer key beside a text column made every template written scan the table."""
    for table, (kind, key) in _FLEET_OBJECTS.items():
        for change, rows in (("insert", ["new"]), ("update", ["old", "new"]), ("delete", ["old"])):
            marks = " ".join(
                f"insert into fleet_dirty (kind, key) select '{kind}', "
                f"cast({row}.{key} as text) where not exists (select 1 from fleet_dirty "
                f"where kind = '{kind}' and key = cast({row}.{key} as text));"
                for row in rows
            )
            db.execute(f"drop trigger if exists fleet_{table}_{change}")
            db.execute(
                f"create trigger fleet_{table}_{change} after {change} on {table} begin {marks} end"
            )


@migrations()
def m008_credentials(db: Database) -> None:
    """A person's panel credential (gate.actions.credentials, canonical text; one person's
    only), and the credential gate presented to a panel for an event."""
    db["people"].add_column("credential", str)
    db["people"].create_index(["credential"], unique=True)  # many NULLs are allowed
    db["events"].add_column("credential", str)
