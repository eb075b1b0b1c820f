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
