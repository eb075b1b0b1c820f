"""gate's SQLite file: people, face templates, doors and the access log."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from sqlite_utils import Database

from gate.actions.credentials import CredentialError, parse_credential
from gate.errors import StoreError
from gate.policy.access import PersonInfo, Rule, Window, parse_clock
from gate.storage import index_cache, logchain
from gate.storage.events import AccessEvent, utc_iso
from gate.storage.migrations import migrations


def default_db_path() -> Path:
    """``gate.db`` in the user's data directory."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("gate")) / "gate.db"


#: Unicode categories refused in names: control, format (zero-width, bidi), surrogate,
#: private, unassigned, line and paragraph separators
_HIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def check_name(name: str) -> str:
    """A person's or door's name, trimmed; refuses empty, control, invisible and bidi characters.

    Zero-width and direction-changing characters (categories Cf, and the
    like) would let two names look the same, or one look like another.
    """
    import unicodedata

    clean = name.strip()
    if not clean or len(clean) > 100:
        raise StoreError(f"invalid name {name!r}: 1 to 100 printable characters")
    hidden = [c for c in clean if unicodedata.category(c) in _HIDDEN]
    if hidden:
        codes = ", ".join(f"U+{ord(c):04X}" for c in dict.fromkeys(hidden))
        raise StoreError(
            f"invalid name {name!r}: no control, zero-width or direction characters ({codes})"
        )
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
    quality: float  # sharpness (variance of the Laplacian at 112 px)
    face_crop: bytes | None = None
    crop_face: str | None = None
    yaw: float | None = None
    grey: bool | None = None
    detector_score: float | None = None


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def create_private(path: Path) -> None:
    """Create the database's folder 0700 and file 0600 where they are missing.

    An existing folder is left as it is (it may be the working directory);
    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def keep_private(path: Path) -> None:
    """Take others' access off a database made before gate created it 0600, with a warning."""
    logger = logging.getLogger("gate.database")
    for each in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = each.stat().st_mode & 0o777
            if mode & 0o077:
                each.chmod(mode & 0o700)
                logger.warning("%s was open to others (mode %o): now %o", each, mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not the owner: say so, the owner must fix it
            logger.warning("%s is open to others and cannot be made private: %s", each, exc)


class GateDB:
    """One SQLite file in WAL mode, migrated to the current schema on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            create_private(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the database: {exc}") from None
        try:
            self.db = Database(self.path)
            self.db.enable_wal()
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.execute("PRAGMA secure_delete = ON")  # what is deleted is overwritten
            migrations.apply(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable gate database ({exc})") from None
        keep_private(self.path)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, locked from its start (BEGIN IMMEDIATE): no writer between."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.rollback()
            raise
        else:
            self.db.commit()

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction, locked from its start, for the fleet's replication."""
        return self._write()

    # people -----------------------------------------------------------------

    def person(self, name: str) -> dict[str, Any] | None:
        """The person called ``name``, or None."""
        rows = list(self.db["people"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def people(self) -> list[dict[str, Any]]:
        """Every person, by name: templates, enabled, validity, credential and groups."""
        rows = list(
            self.db.query(
                "select p.id, p.name, p.created_at, p.enabled, p.valid_from, p.valid_until, "
                "p.credential, "
                "(select count(*) from templates t where t.person_id = p.id) as templates, "
                "(select group_concat(g.name, ',') from memberships m join groups g "
                " on g.id = m.group_id where m.person_id = p.id) as groups "
                "from people p order by p.name"
            )
        )
        for row in rows:
            row["enabled"] = bool(row["enabled"])
            row["groups"] = sorted(row["groups"].split(",")) if row["groups"] else []
        return rows

    def names(self) -> dict[int, str]:
        """Person id to name."""
        return {row["id"]: row["name"] for row in self.db["people"].rows}

    def remove_person(self, name: str, *, erase: bool = False) -> int:
        """Delete a person with their templates, group memberships and anti-passback places.

        Their events stay in the log; with ``erase`` those lose their snapshot
        and the name becomes ``#<id>``. Returns how many templates went.
        """
        person = self._existing(name)
        person_id = person["id"]
        try:
            with self._write():
                count = self.db["templates"].count_where("person_id = ?", [person_id])
                for table in ("templates", "memberships", "passages"):
                    self.db.execute(f"delete from {table} where person_id = ?", [person_id])
                if erase:
                    self.db.execute(
                        "update events set person = ?, person_salt = null, snapshot = null "
                        "where person_id = ?",
                        [logchain.erased_name(person_id), person_id],
                    )
                self.db.execute("delete from people where id = ?", [person_id])
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"cannot remove {name!r}: still referenced ({exc})") from None
        index_cache.drop_all(self.path)  # it holds their embeddings too
        return count

    def count_events(self, person_id: int) -> int:
        """How many logged events name this person."""
        return self.db["events"].count_where("person_id = ?", [person_id])

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
        this person in the same embedding space is skipped.
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
                    "person_id = ? and source_sha256 = ? and space = ?",
                    [person_id, template.source_sha256, template.space],
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
                        "yaw": template.yaw,
                        "grey": None if template.grey is None else int(template.grey),
                        "detector_score": template.detector_score,
                        "created_at": now,
                    }
                )
                added += 1
        return int(person_id), added

    def load_templates(self, space: str) -> tuple[np.ndarray, np.ndarray]:
        """All templates of one embedding space: ``(T, dim)`` float32 and person ids ``(T,)``."""
        vectors, ids, _ = self.load_template_rows(space)
        return vectors, ids

    def load_template_rows(self, space: str, after: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """Templates of ``space`` with an id above ``after``: vectors, person ids, largest id.

        Read in one snapshot, straight into the arrays (a million in seconds).
        """
        con = self.db.conn
        where = "where space = ? and id > ?"
        own = not con.in_transaction
        if own:
            con.execute("BEGIN")  # one snapshot: the count and the rows agree
        try:
            count, low, high, top = con.execute(
                f"select count(*), min(dim), max(dim), max(id) from templates {where}",
                [space, after],
            ).fetchone()
            if not count:
                return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), after
            if low != high:
                raise StoreError(
                    f"templates of space {space!r} disagree on dimension: {low} and {high}"
                )
            vectors = np.empty((count, low), np.float32)
            ids = np.empty(count, np.int64)
            cursor = con.execute(
                f"select person_id, embedding from templates {where} order by id", [space, after]
            )
            done = 0
            while rows := cursor.fetchmany(65536):
                n = len(rows)
                ids[done : done + n] = [row[0] for row in rows]
                blob = b"".join(row[1] for row in rows)
                vectors[done : done + n] = np.frombuffer(blob, "<f4").reshape(n, low)
                done += n
        finally:
            if own:
                con.execute("COMMIT")
        return vectors, ids, top

    def template_counts(self, space: str) -> dict[int, int]:
        """Templates per person in ``space``."""
        rows = self.db.execute(
            "select person_id, count(*) from templates where space = ? group by person_id",
            [space],
        ).fetchall()
        return {int(person): int(n) for person, n in rows}

    def sample_templates(self, space: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """At most ``n`` templates of ``space``, spread over the gallery by a fixed hash of their
        ids (the same gallery gives the same sample): vectors and person ids."""
        rows = self.db.execute(
            "select person_id, embedding from templates where space = ? "
            "order by (id * 2654435761) % 4294967296 limit ?",
            [space, n],
        ).fetchall()
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        vectors = np.stack([np.frombuffer(blob, "<f4") for _, blob in rows]).astype(np.float32)
        return vectors, np.array([person for person, _ in rows], np.int64)

    def stale_templates(self, space: str) -> list[dict[str, Any]]:
        """Templates of other spaces whose photo has no template in ``space`` yet."""
        return list(
            self.db.query(
                "select t.* from templates t where t.space != ? and not exists ("
                " select 1 from templates u where u.space = ? and u.person_id = t.person_id"
                " and u.source_sha256 = t.source_sha256) order by t.id",
                [space, space],
            )
        )

    def drop_templates_except(self, space: str) -> int:
        """Delete every template not in ``space``; returns how many."""
        count = self.db["templates"].count_where("space != ?", [space])
        self.db["templates"].delete_where("space != ?", [space])
        return count

    def roster_version(self, space: str) -> tuple:
        """Changes whenever the templates of ``space`` or the people's names change."""
        templates = self.db.execute(
            "select count(*), max(id) from templates where space = ?", [space]
        ).fetchone()
        people = self.db.execute(
            "select count(*), max(id), group_concat(name, '/') from people"
        ).fetchone()
        return (*templates, *people)

    def set_person(self, name: str, **changes: Any) -> None:
        """Change ``enabled``, ``valid_from``, ``valid_until`` (ISO times) or ``credential``
        (text :func:`~gate.actions.credentials.parse_credential` reads, stored canonical;
        one person's only); None clears."""
        person = self._existing(name)
        unknown = set(changes) - {"enabled", "valid_from", "valid_until", "credential"}
        if unknown:
            raise StoreError(f"cannot set {', '.join(sorted(unknown))} on a person")
        if "enabled" in changes:
            changes["enabled"] = int(bool(changes["enabled"]))
        credential = changes.get("credential")
        if credential is not None:
            try:
                changes["credential"] = credential = str(parse_credential(str(credential)))
            except CredentialError as exc:
                raise StoreError(str(exc)) from None
        if not changes:
            return
        try:
            with self._write():
                if credential is not None:
                    holder = self.db.execute(
                        "select name from people where credential = ? and id != ?",
                        [credential, person["id"]],
                    ).fetchone()
                    if holder is not None:
                        raise StoreError(f"credential {credential} already belongs to {holder[0]}")
                columns = ", ".join(f"{key} = ?" for key in changes)  # the names checked above
                self.db.execute(
                    f"update people set {columns} where id = ?", [*changes.values(), person["id"]]
                )
        except sqlite3.IntegrityError as exc:  # a writer that skipped the check above
            raise StoreError(f"cannot change {name!r}: {exc}") from None

    def credential(self, person_id: int) -> str | None:
        """The person's panel credential as canonical text; None when they have none."""
        row = self.db.execute("select credential from people where id = ?", [person_id]).fetchone()
        return None if row is None else row[0]

    def person_info(self, person_id: int) -> PersonInfo | None:
        """What the access policy needs to know of a person."""
        rows = list(self.db["people"].rows_where("id = ?", [person_id]))
        if not rows:
            return None
        row = rows[0]
        groups = {
            r["name"]
            for r in self.db.query(
                "select g.name from groups g join memberships m on m.group_id = g.id "
                "where m.person_id = ?",
                [person_id],
            )
        }
        return PersonInfo(
            id=row["id"],
            name=row["name"],
            enabled=bool(row["enabled"]),
            valid_from=_moment(row["valid_from"]),
            valid_until=_moment(row["valid_until"]),
            groups=frozenset(groups),
        )

    # groups and rules -----------------------------------------------------------

    def add_group(self, name: str) -> int:
        """Create a group; its name must be new."""
        name = check_name(name)
        if self._group(name, missing_ok=True):
            raise StoreError(f"there is already a group called {name!r}")
        return int(
            self.db["groups"].insert({"name": name, "created_at": utc_iso(time.time())}).last_pk
        )

    def remove_group(self, name: str) -> None:
        """Delete a group with its memberships and rules."""
        group = self._group(name)
        with self.db.atomic():
            self.db["memberships"].delete_where("group_id = ?", [group["id"]])
            self.db["rules"].delete_where("group_id = ?", [group["id"]])
            self.db["groups"].delete(group["id"])

    def groups(self) -> list[dict[str, Any]]:
        """Every group with its members' names."""
        out = []
        for group in self.db["groups"].rows_where(order_by="name"):
            members = [
                r["name"]
                for r in self.db.query(
                    "select p.name from people p join memberships m on m.person_id = p.id "
                    "where m.group_id = ? order by p.name",
                    [group["id"]],
                )
            ]
            out.append({"name": group["name"], "members": members})
        return out

    def join(self, group: str, names: Iterable[str]) -> None:
        """Add people to a group (already members stay members)."""
        group_id = self._group(group)["id"]
        people = [self._existing(n)["id"] for n in names]
        with self.db.atomic():
            for person_id in people:
                self.db["memberships"].insert(
                    {"person_id": person_id, "group_id": group_id}, ignore=True
                )

    def leave(self, group: str, names: Iterable[str]) -> None:
        """Take people out of a group."""
        group_id = self._group(group)["id"]
        for name in names:
            self.db["memberships"].delete_where(
                "person_id = ? and group_id = ?", [self._existing(name)["id"], group_id]
            )

    def _group(self, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        rows = list(self.db["groups"].rows_where("name = ?", [name]))
        if not rows and not missing_ok:
            raise StoreError(f"no group called {name!r}")
        return rows[0] if rows else None

    def add_rule(self, group: str, door: str, days: int, start: str, end: str) -> int:
        """Let ``group`` through ``door`` (``*``: any) on ``days`` from ``start`` to ``end``."""
        group_id = self._group(group)["id"]
        if door != "*":
            self._door(door)
        row = {"group_id": group_id, "door": door, "days": days, "start": start, "end": end}
        row["created_at"] = utc_iso(time.time())
        return int(self.db["rules"].insert(row).last_pk)

    def remove_rule(self, rule_id: int) -> None:
        if not self.db["rules"].count_where("id = ?", [rule_id]):
            raise StoreError(f"no rule with id {rule_id}")
        self.db["rules"].delete(rule_id)

    def rules(self) -> list[Rule]:
        """Every rule, as the policy reads them."""
        return [
            Rule(
                id=r["id"],
                group=r["group_name"],
                door=r["door"],
                window=Window(r["days"], parse_clock(r["start"]), parse_clock(r["end"])),
            )
            for r in self.db.query(
                "select r.*, g.name as group_name from rules r join groups g on g.id = r.group_id "
                "order by r.id"
            )
        ]

    # doors ---------------------------------------------------------------------

    def ensure_door(self, name: str) -> None:
        """Record a door the first time it is used."""
        self.db["doors"].insert(
            {"name": check_name(name), "created_at": utc_iso(time.time())}, ignore=True
        )

    def add_door(self, name: str, **settings: Any) -> None:
        """Create a door with its settings (see the ``doors`` columns)."""
        name = check_name(name)
        if any(c in name for c in "/#+ "):
            raise StoreError(f"invalid door name {name!r}: no '/', '#', '+' or spaces")
        if self.door(name):
            raise StoreError(f"there is already a door called {name!r}")
        self.db["doors"].insert({"name": name, "created_at": utc_iso(time.time()), **settings})

    def update_door(self, name: str, **settings: Any) -> None:
        self._door(name)
        if settings:
            self.db["doors"].update(name, settings)

    def remove_door(self, name: str) -> None:
        """Delete a door and its rules (its events stay in the log)."""
        self._door(name)
        with self.db.atomic():
            self.db["rules"].delete_where("door = ?", [name])
            self.db["doors"].delete(name)

    def door(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db["doors"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def _door(self, name: str) -> dict[str, Any]:
        door = self.door(name)
        if door is None:
            raise StoreError(f"no door called {name!r}")
        return door

    def doors(self) -> list[dict[str, Any]]:
        return list(self.db["doors"].rows_where(order_by="name"))

    # anti-passback ---------------------------------------------------------------

    def last_passage(self, area: str, person_id: int) -> str | None:
        rows = list(self.db["passages"].rows_where("area = ? and person_id = ?", [area, person_id]))
        return rows[0]["direction"] if rows else None

    def record_passage(
        self, area: str, person_id: int, direction: str, when: str, event_id: int | None
    ) -> None:
        self.db["passages"].upsert(
            {"area": area, "person_id": person_id, "direction": direction, "time": when,
             "event_id": event_id},
            pk=("area", "person_id"),
        )  # fmt: skip

    def reset_passages(self, name: str, area: str | None = None) -> int:
        """Forget where a person is (the anti-passback override); returns areas cleared."""
        person_id = self._existing(name)["id"]
        where, params = "person_id = ?", [person_id]
        if area:
            where, params = where + " and area = ?", [*params, area]
        count = self.db["passages"].count_where(where, params)
        self.db["passages"].delete_where(where, params)
        return count

    # events --------------------------------------------------------------------

    def add_event(self, event: AccessEvent) -> int:
        """Store a decision, chained to the one before it; sets and returns ``event.id``.

        The event gets a new UUID, which names it across a fleet (``gate.fleet``).
        """
        row = self._event_row(event)
        with self._write():
            return self._append_event(event, {**row, "uuid": str(uuid4())})

    def collect_events(self, node: str, events: Iterable[tuple[str, AccessEvent]]) -> int:
        """Store events another node of the fleet logged, as ``(uuid, event)``, chained like
        our own and marked with ``node``; a UUID already stored is skipped. Returns how
        many were new."""
        added = 0
        with self._write():
            for event_uuid, event in events:
                known = self.db.execute("select 1 from events where uuid = ?", [event_uuid])
                if known.fetchone() is None:
                    row = self._event_row(event)
                    self._append_event(event, {**row, "uuid": event_uuid, "node": node})
                    added += 1
        return added

    @staticmethod
    def _event_row(event: AccessEvent) -> dict[str, Any]:
        """An event as the ``events`` table stores it, before it is chained."""
        row = {k: v for k, v in event.__dict__.items() if k != "id"}
        for key, kind in logchain.COVERED.items():
            if key in row:
                row[key] = logchain.normalise(kind, row[key])  # inf margin: no other person
        if row["delivered"] is not None:
            row["delivered"] = int(bool(row["delivered"]))
        if row["person"] is not None:
            row["person_salt"] = logchain.new_salt()
            row["person_digest"] = logchain.name_digest(row["person_salt"], row["person"])
        if row["snapshot"] is not None:
            row["snapshot_sha256"] = logchain.sha256_hex(row["snapshot"])
        return row

    def _append_event(self, event: AccessEvent, row: dict[str, Any]) -> int:
        """Insert ``row`` after the chain's head (inside a write transaction); its new id."""
        head_id, prev = logchain.mark("head", self.db)
        newest = self.db.execute("select coalesce(max(id), 0) from events").fetchone()[0]
        row["id"] = event.id = max(head_id, newest) + 1  # never an id used before a purge
        row["prev_hash"], row["hash"] = prev, logchain.link(prev, row)
        row["delivered_seal"] = logchain.delivered_seal(row["hash"], row["delivered"])
        names = list(row)
        self.db.execute(
            f"insert into events ({', '.join(names)}) values ({', '.join('?' * len(names))})",
            [row[k] for k in names],
        )
        self.db.execute(
            "update log_chain set event_id = ?, hash = ? where name = 'head'",
            [event.id, row["hash"]],
        )
        return event.id

    def set_delivered(self, event_id: int, delivered: bool) -> None:
        """Record whether the unlock for an event reached the broker (the event's second link)."""
        with self._write():
            found = self.db.execute("select hash from events where id = ?", [event_id]).fetchone()
            if found is None:
                raise StoreError(f"no event with id {event_id}")
            digest = found[0]
            self.db.execute(
                "update events set delivered = ?, delivered_seal = ? where id = ?",
                [int(delivered), logchain.delivered_seal(digest, delivered) if digest else None,
                 event_id],
            )  # fmt: skip

    def verify_log(self) -> logchain.Verification:
        """Check the log's hash chain from its anchor to its head."""
        return logchain.verify(self.db)

    def drop_snapshots(self, before: str, *, strangers_only: bool = False, batch: int = 500) -> int:
        """Delete the snapshots of events before ``before`` (ISO UTC); returns how many.

        In short transactions of ``batch`` events, so that doors logging meanwhile never wait long.
        """
        where = "time < ? and snapshot is not null"
        if strangers_only:
            where += " and person_id is null"
        total = 0
        while True:
            with self._write():
                done = self.db.execute(
                    "update events set snapshot = null where id in "
                    f"(select id from events where {where} order by id limit ?)",
                    [before, batch],
                ).rowcount
            total += done
            if done < batch:
                return total

    def purge_events(self, before: str, batch: int = 1000) -> int:
        """Delete the oldest events, up to the first at or after ``before``; returns how many.

        The chain's anchor moves to the last event deleted, so the rest still
        verifies; a broken link and what follows it are kept as evidence. Works
        in short transactions of ``batch`` events.
        """
        total = 0
        while True:
            with self._write():
                count, more = self._purge_batch(before, batch)
            total += count
            if not more:
                return total

    def _purge_batch(self, before: str, batch: int) -> tuple[int, bool]:
        """Delete up to ``batch`` of the oldest events before ``before``: (deleted, more to do)."""
        newer = self.db.execute("select min(id) from events where time >= ?", [before]).fetchone()
        oldest = self.db.execute(
            "select id from events order by id limit 1 offset ?", [batch - 1]
        ).fetchone()
        upto = newer[0] - 1 if newer[0] is not None else (1 << 62)
        more = oldest is not None and oldest[0] < upto
        upto = oldest[0] if more else upto
        anchor_id, _ = logchain.mark("anchor", self.db)
        if upto > anchor_id:
            check = logchain.verify(self.db, upto=upto)
            if check.broken_id is not None:
                logging.getLogger("gate.database").warning(
                    "retention keeps the log from event %d on: %s", check.broken_id, check.problem
                )
                upto, more = check.broken_id - 1, False
        last = self.db.execute(
            "select id, hash from events where id <= ? order by id desc limit 1", [upto]
        ).fetchone()
        if last is None:
            return 0, False
        count = self.db.execute("delete from events where id <= ?", [upto]).rowcount
        if last[0] > anchor_id:
            self.db.execute(
                "update log_chain set event_id = ?, hash = ? where name = 'anchor'", list(last)
            )
        self.db.execute(
            "update log_chain set time = ?, purged = coalesce(purged, 0) + ? where name = 'anchor'",
            [utc_iso(time.time()), count],
        )
        return count, more

    def events(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        person: str | None = None,
        door: str | None = None,
        decision: str | None = None,
        reason: str | None = None,
        node: str | None = None,
        limit: int | None = None,
        snapshots: bool = False,
    ) -> list[AccessEvent]:
        """Logged events, newest first, filtered by time (ISO UTC), person, door, decision,
        reason, and the fleet node that logged them (``""``: this one)."""
        where, params = [], []
        for clause, value in (
            ("time >= ?", since),
            ("time < ?", until),
            ("person = ?", person),
            ("door = ?", door),
            ("decision = ?", decision),
            ("reason = ?", reason),
            ("coalesce(node, '') = ?", node),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        names = [f.name for f in fields(AccessEvent) if f.name != "snapshot"]
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

    def event_nodes(self, ids: Iterable[int]) -> dict[int, str | None]:
        """The fleet node that logged each event (None: this one)."""
        ids = list(ids)
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        return dict(self.db.execute(f"select id, node from events where id in ({marks})", ids))

    # the fleet's outbox (gate.fleet) ---------------------------------------------------

    def outbox(self, settled_before: str, limit: int = 200) -> list[tuple[str, AccessEvent]]:
        """This node's events not yet acknowledged by the fleet's collector, oldest first, as
        ``(uuid, event)``, without snapshots: those whose unlock is settled (delivered or
        not, or logged before ``settled_before``, ISO UTC)."""
        names = [f.name for f in fields(AccessEvent) if f.name != "snapshot"]
        rows = self.db.execute(
            f"select uuid, {', '.join(names)} from events where node is null "
            "and acked_at is null and uuid is not null "
            "and (delivered is not null or decision = 'denied' or time < ?) order by id limit ?",
            [settled_before, limit],
        )
        out = []
        for values in rows.fetchall():
            row = dict(zip(names, values[1:], strict=True))
            if row["delivered"] is not None:
                row["delivered"] = bool(row["delivered"])
            out.append((values[0], AccessEvent(**row)))
        return out

    def outbox_size(self) -> int:
        """How many of this node's events the collector has not acknowledged yet."""
        return self.db.execute(
            "select count(*) from events where node is null and acked_at is null "
            "and uuid is not null"
        ).fetchone()[0]

    def acknowledge(self, uuids: Iterable[str]) -> int:
        """Mark events as stored by the collector; returns how many were waiting."""
        now, done = utc_iso(time.time()), 0
        with self._write():
            for event_uuid in uuids:
                done += self.db.execute(
                    "update events set acked_at = ? where uuid = ? and acked_at is null",
                    [now, event_uuid],
                ).rowcount
        return done
