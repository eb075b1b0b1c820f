"""gate's SQLite file: people, face templates, doors and the access log."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlite_utils import Database

from gate.errors import StoreError
from gate.events import AccessEvent, utc_iso
from gate.migrations import migrations


def default_db_path() -> Path:
    """``gate.db`` in the user's data directory."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("gate")) / "gate.db"


def check_name(name: str) -> str:
    """A person's or door's name, trimmed; refuses empty or control characters."""
    clean = name.strip()
    if not clean or len(clean) > 100 or any(ord(c) < 32 for c in clean):
        raise StoreError(f"invalid name {name!r}: 1 to 100 printable characters")
    return clean


@dataclass(frozen=True)
class Template:
    """A face template ready to store: the embedding and where it came from."""

    embedding: np.ndarray
    encoder: str
    encoder_version: str
    space: str
    source_sha256: str
    source_name: str
    face_size: float
    quality: float
    face_crop: bytes | None = None
    crop_face: str | None = None


class GateDB:
    """One SQLite file in WAL mode, migrated to the current schema on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = Database(self.path)
            self.db.enable_wal()
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.execute("PRAGMA busy_timeout = 5000")
            migrations.apply(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable gate database ({exc})") from None

    def close(self) -> None:
        self.db.close()

    # people -----------------------------------------------------------------

    def person(self, name: str) -> dict[str, Any] | None:
        """The person called ``name``, or None."""
        rows = list(self.db["people"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def people(self) -> list[dict[str, Any]]:
        """Every person with a count of templates, by name."""
        return list(
            self.db.query(
                "select p.id, p.name, p.created_at, count(t.id) as templates "
                "from people p left join templates t on t.person_id = p.id "
                "group by p.id order by p.name"
            )
        )

    def names(self) -> dict[int, str]:
        """Person id to name."""
        return {row["id"]: row["name"] for row in self.db["people"].rows}

    def remove_person(self, name: str) -> int:
        """Delete a person and their templates; returns how many templates went."""
        person = self._existing(name)
        with self.db.atomic():
            count = self.db["templates"].count_where("person_id = ?", [person["id"]])
            self.db["templates"].delete_where("person_id = ?", [person["id"]])
            self.db["people"].delete(person["id"])
        return count

    def rename_person(self, old: str, new: str) -> None:
        """Rename; past events keep the name they were logged with."""
        person = self._existing(old)
        new = check_name(new)
        if self.person(new):
            raise StoreError(f"there is already a person called {new!r}")
        self.db["people"].update(person["id"], {"name": new})

    def _existing(self, name: str) -> dict[str, Any]:
        person = self.person(name)
        if person is None:
            raise StoreError(f"no person called {name!r}")
        return person

    # templates --------------------------------------------------------------

    def enroll(self, name: str, templates: Iterable[Template]) -> tuple[int, int]:
        """Add templates to ``name`` (created if new), all or nothing.

        Returns ``(person_id, templates added)``; a photo already enrolled for
        this person with the same encoder is skipped.
        """
        name = check_name(name)
        templates = list(templates)
        now = utc_iso(time.time())
        with self.db.atomic():
            person = self.person(name)
            if person is None:
                person_id = self.db["people"].insert({"name": name, "created_at": now}).last_pk
            else:
                person_id = person["id"]
            added = 0
            for template in templates:
                vector = np.asarray(template.embedding, dtype="<f4")
                if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
                    raise StoreError(f"{template.source_name}: not a finite 1-D embedding")
                if self.db["templates"].count_where(
                    "person_id = ? and source_sha256 = ? and encoder = ?",
                    [person_id, template.source_sha256, template.encoder],
                ):
                    continue
                self.db["templates"].insert(
                    {
                        "person_id": person_id,
                        "encoder": template.encoder,
                        "encoder_version": template.encoder_version,
                        "space": template.space,
                        "dim": int(vector.shape[0]),
                        "embedding": vector.tobytes(),
                        "source_sha256": template.source_sha256,
                        "source_name": template.source_name,
                        "face_size": float(template.face_size),
                        "quality": float(template.quality),
                        "face_crop": template.face_crop,
                        "crop_face": template.crop_face,
                        "created_at": now,
                    }
                )
                added += 1
        return int(person_id), added

    def load_templates(self, space: str) -> tuple[np.ndarray, np.ndarray]:
        """All templates of one embedding space: ``(T, dim)`` float32 and person ids ``(T,)``."""
        rows = list(
            self.db.query(
                "select person_id, dim, embedding from templates where space = ? order by id",
                [space],
            )
        )
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        dims = {row["dim"] for row in rows}
        if len(dims) != 1:
            raise StoreError(f"templates of space {space!r} disagree on dimension: {sorted(dims)}")
        vectors = np.stack([np.frombuffer(row["embedding"], dtype="<f4") for row in rows])
        ids = np.array([row["person_id"] for row in rows], dtype=np.int64)
        return vectors.astype(np.float32), ids

    def template_spaces(self) -> dict[str, int]:
        """How many templates each embedding space holds."""
        return {
            row["space"]: row["n"]
            for row in self.db.query("select space, count(*) as n from templates group by space")
        }

    # doors and events ---------------------------------------------------------

    def ensure_door(self, name: str) -> None:
        """Record a door the first time it is used."""
        self.db["doors"].insert(
            {"name": check_name(name), "created_at": utc_iso(time.time())}, ignore=True
        )

    def add_event(self, event: AccessEvent) -> int:
        """Store a decision; sets and returns ``event.id``."""
        row = {k: v for k, v in event.__dict__.items() if k != "id"}
        if row["margin"] == float("inf"):
            row["margin"] = None
        event.id = int(self.db["events"].insert(row).last_pk)
        return event.id

    def set_delivered(self, event_id: int, delivered: bool) -> None:
        """Record whether the unlock for an event reached the broker."""
        self.db["events"].update(event_id, {"delivered": int(delivered)})

    def events(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        person: str | None = None,
        door: str | None = None,
        decision: str | None = None,
        limit: int | None = None,
        snapshots: bool = False,
    ) -> list[AccessEvent]:
        """Logged events, newest first, filtered by time (ISO UTC), person, door, decision."""
        where, params = [], []
        for clause, value in (
            ("time >= ?", since),
            ("time < ?", until),
            ("person = ?", person),
            ("door = ?", door),
            ("decision = ?", decision),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        names = [c for c in self.db["events"].columns_dict if c != "snapshot"]
        columns = ", ".join(names) + (", snapshot" if snapshots else ", null as snapshot")
        sql = f"select {columns} from events"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by time desc, id desc"
        if limit:
            sql += f" limit {int(limit)}"
        out = []
        for row in self.db.query(sql, params):
            row = dict(row)
            if row["delivered"] is not None:
                row["delivered"] = bool(row["delivered"])
            out.append(AccessEvent(**row))
        return out
