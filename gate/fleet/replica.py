"""What the fleet replicates: people, groups, rules and doors, as versioned objects.

An object is one row and what belongs to it: a person with their templates
(embeddings with their encoder and space; face crops only with ``[fleet]
share_face_crops``) and the ids of their groups; a group; a rule; a door with
its settings. Ids are the authority's: an edge stores each object under the
same id, so a rename changes one row and the events edges forward name the
authority's people. Objects may reach an edge in any order: a group that a
person or a rule names before the group itself arrives is kept as a
placeholder until it does (and not at all when it was removed); a person
whose name or panel credential another holds here for now takes it, the other
parked under a placeholder name or left without a credential until its own
change comes.

``fleet_objects`` holds each object's version (a tombstone's digest is null):
on the authority with the signed message, on an edge as applied. The
fingerprint of the live objects' versions is what the authority's head
states, so an edge knows when it holds exactly the head's data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from typing import Any

from sqlite_utils import Database

from gate.actions.signing import canonical

logger = logging.getLogger("gate.fleet")

#: template columns that stay on the authority unless ``[fleet] share_face_crops``
CROP_COLUMNS = ("face_crop", "crop_face")
#: what a person or group is called while another takes its name (until its own change comes)
PARKED = "~fleet-"

_warned: set[tuple[str, str]] = set()


def _out(value: Any) -> Any:
    """A column's value in JSON: bytes as ``{"base64": ...}``, a float that is not finite as
    None."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _in(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"base64"}:
            raise ValueError("a column value that is an object other than base64 bytes")
        return base64.b64decode(value["base64"], validate=True)
    return value


def _one(db: Database, sql: str, params: list) -> dict[str, Any] | None:
    rows = list(db.query(sql, params))
    return rows[0] if rows else None


def _without(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    return {k: _out(v) for k, v in row.items() if k not in columns}


def _id(key: str) -> int:
    """A person's, group's or rule's key as its id; refused unless a plain decimal."""
    if not key.isdigit() or str(int(key)) != key:
        raise ValueError(f"bad id {key!r}")
    return int(key)


def body(db: Database, kind: str, key: str, *, crops: bool = False) -> dict[str, Any] | None:
    """The object as the authority publishes it; None when it does not exist (any more)."""
    if kind == "door":
        row = _one(db, "select * from doors where name = ?", [key])
        return None if row is None else _without(row, "name")
    table = {"person": "people", "group": "groups", "rule": "rules"}.get(kind)
    if table is None or not key.isdigit():
        return None
    row = _one(db, f"select * from {table} where id = ?", [int(key)])
    if row is None or kind != "person":
        return None if row is None else _without(row, "id")
    hidden = ("id", "person_id") + (() if crops else CROP_COLUMNS)
    templates = db.query(
        "select * from templates where person_id = ? order by space, source_sha256, id", [row["id"]]
    )
    groups = db.execute(
        "select group_id from memberships where person_id = ? order by group_id", [row["id"]]
    )
    return {
        **_without(row, "id"),
        "templates": [_without(t, *hidden) for t in templates],
        "groups": [g for (g,) in groups],
    }


def digest(data: dict[str, Any]) -> str:
    """SHA-256 of an object's canonical JSON: whether it changed."""
    return hashlib.sha256(canonical(data)).hexdigest()


def fingerprint(db: Database) -> tuple[str, int]:
    """The live objects' kinds, keys and versions, hashed, and how many there are."""
    hashed, count = hashlib.sha256(), 0
    for row in db.execute(
        "select kind, key, version from fleet_objects where digest is not null order by kind, key"
    ):
        hashed.update(json.dumps(list(row)).encode("utf-8") + b"\n")
        count += 1
    return hashed.hexdigest(), count


def every_object(db: Database) -> list[tuple[str, str]]:
    """Every object the tables hold, and every one the fleet holds live: what to check."""
    return [
        tuple(row)
        for row in db.execute(
            "select 'person', cast(id as text) from people "
            "union select 'group', cast(id as text) from groups "
            "union select 'rule', cast(id as text) from rules union select 'door', name from doors "
            "union select kind, key from fleet_objects where digest is not null"
        )
    ]


def version_of(db: Database, kind: str, key: str) -> int:
    """The version of an object held here; 0 when none."""
    row = db.execute(
        "select version from fleet_objects where kind = ? and key = ?", [kind, key]
    ).fetchone()
    return int(row[0]) if row else 0


def newest_version(db: Database) -> int:
    return int(db.execute("select coalesce(max(version), 0) from fleet_objects").fetchone()[0])


def record(
    db: Database, kind: str, key: str, version: int, data_digest: str | None, payload=None
) -> None:
    """Note the version of an object held here (``data_digest`` None: a tombstone)."""
    db.execute(
        "insert or replace into fleet_objects (kind, key, version, digest, payload) "
        "values (?, ?, ?, ?, ?)",
        [kind, key, version, data_digest, payload],
    )


def get_state(db: Database, name: str) -> str | None:
    row = db.execute("select value from fleet_state where name = ?", [name]).fetchone()
    return row[0] if row else None


def set_state(db: Database, name: str, value: str) -> None:
    db.execute("insert or replace into fleet_state (name, value) values (?, ?)", [name, value])


# an edge applies ------------------------------------------------------------------------


def apply(db: Database, kind: str, key: str, data: dict[str, Any] | None) -> None:
    """Make this database hold ``data`` for the object (None: remove it); inside a
    transaction. Raises ``ValueError`` (or sqlite's errors) when it cannot."""
    if data is not None and not isinstance(data, dict):
        raise ValueError("an object's data must be a JSON object or null")
    if kind == "door":
        if data is None:
            db.execute("delete from doors where name = ?", [key])
        else:
            db["doors"].upsert(_fit(db, "doors", {**data, "name": key}), pk="name")
        return
    ident = _id(key)
    if kind == "person":
        _apply_person(db, ident, data)
    elif kind == "group":
        if data is None:
            _drop_group(db, ident)
        else:
            row = _fit(db, "groups", {**data, "id": ident})
            _park(db, "groups", row.get("name"), ident)
            db["groups"].upsert(row, pk="id")
    elif kind == "rule":
        if data is None or not _group_here(db, data.get("group_id")):
            db.execute("delete from rules where id = ?", [ident])
        else:
            db["rules"].upsert(_fit(db, "rules", {**data, "id": ident}), pk="id")
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _apply_person(db: Database, ident: int, data: dict[str, Any] | None) -> None:
    if data is None:
        _drop_person(db, ident)
        return
    data = dict(data)
    templates, groups = data.pop("templates", []), data.pop("groups", [])
    if not isinstance(templates, list) or not isinstance(groups, list):
        raise ValueError("a person's templates and groups must be lists")
    row = _fit(db, "people", {**data, "id": ident})
    _park(db, "people", row.get("name"), ident)
    _pass_card(db, row.get("credential"), ident)
    db["people"].upsert(row, pk="id")
    db.execute("delete from templates where person_id = ?", [ident])
    for template in templates:
        if not isinstance(template, dict):
            raise ValueError("a template must be a JSON object")
        db["templates"].insert(_fit(db, "templates", {**template, "person_id": ident}))
    db.execute("delete from memberships where person_id = ?", [ident])
    for group_id in groups:
        if _group_here(db, group_id):
            db["memberships"].insert({"person_id": ident, "group_id": group_id})


def _fit(db: Database, table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` decoded, with the columns this database has (others dropped, said once)."""
    columns = db[table].columns_dict
    for column in row.keys() - columns.keys():
        if (table, column) not in _warned:
            _warned.add((table, column))
            logger.warning("the authority sends %s.%s: not a column here", table, column)
    return {k: _in(v) for k, v in row.items() if k in columns}


def _park(db: Database, table: str, name: Any, ident: int) -> None:
    """Rename whoever else holds ``name`` here for now: its own change will name it."""
    if name is not None:
        db.execute(
            f"update {table} set name = ? || id where name = ? and id != ?", [PARKED, name, ident]
        )


def _pass_card(db: Database, credential: Any, ident: int) -> None:
    """Clear the panel credential of whoever else holds ``credential`` here (the card went
    from them to this person): their own change, coming later, says what theirs is now."""
    if credential is not None:
        db.execute(
            "update people set credential = null where credential = ? and id != ?",
            [credential, ident],
        )


def _group_here(db: Database, group_id: Any) -> bool:
    """Whether group ``group_id`` is here, made a placeholder if it has not arrived yet; False
    when it was removed (or is no id)."""
    if not isinstance(group_id, int) or isinstance(group_id, bool):
        raise ValueError(f"bad group id {group_id!r}")
    if db.execute("select 1 from groups where id = ?", [group_id]).fetchone():
        return True
    known = db.execute(
        "select digest from fleet_objects where kind = 'group' and key = ?", [str(group_id)]
    ).fetchone()
    if known is not None and known[0] is None:
        return False
    db["groups"].insert({"id": group_id, "name": f"{PARKED}group-{group_id}"})
    return True


def _drop_person(db: Database, ident: int) -> None:
    for table in ("templates", "memberships", "passages"):
        db.execute(f"delete from {table} where person_id = ?", [ident])
    db.execute("delete from people where id = ?", [ident])


def _drop_group(db: Database, ident: int) -> None:
    for table in ("memberships", "rules"):
        db.execute(f"delete from {table} where group_id = ?", [ident])
    db.execute("delete from groups where id = ?", [ident])


def prune(db: Database) -> int:
    """Remove people, groups and rules the fleet does not hold (an edge's own, from before it
    joined): once an edge holds the head's data, it holds nothing else. Doors stay: an edge
    may run one of its own. Returns how many went."""
    live = {
        kind: {key for (key,) in db.execute(
            "select key from fleet_objects where kind = ? and digest is not null", [kind]
        )}
        for kind in ("person", "group", "rule")
    }  # fmt: skip
    gone = 0
    for kind, table, drop in (
        ("rule", "rules", lambda i: db.execute("delete from rules where id = ?", [i])),
        ("person", "people", lambda i: _drop_person(db, i)),
        ("group", "groups", lambda i: _drop_group(db, i)),
    ):
        for (ident,) in db.execute(f"select id from {table}").fetchall():
            if str(ident) not in live[kind]:
                drop(ident)
                gone += 1
    return gone
