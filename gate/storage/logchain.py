"""The access log's hash chain: each event sealed to the one before it, and its check.

Each event's ``hash`` is SHA-256 over the hash of the event before it and the
decision as it was made (:data:`COVERED`, canonical JSON). Three things may
change legitimately after the insert, so the chain holds a digest of them
instead of the thing itself:

- ``person``: covered through ``person_digest`` (SHA-256 of a random salt and
  the name). ``gate people remove --erase`` replaces the name with ``#<id>``
  and drops the salt; a name so erased is accepted, any other change is not.
- ``snapshot``: covered through ``snapshot_sha256``; retention and erasure
  delete the image, which is accepted, but a replaced image is not.
- ``delivered``: set once the unlock was sent; sealed by a second link,
  ``delivered_seal`` (SHA-256 of the event's hash and the value).

The ``log_chain`` table holds the ``head`` (the newest event appended, so that
deleting the newest events shows) and the ``anchor`` (the last event that is
not checked: the last one retention deleted, or the last one logged before the
chain existed). The chain has no key: it shows edits made with a plain SQLite
tool, not edits by someone who recomputes every hash after theirs.

Fields that are null are left out of the canonical form, so a field may join
:data:`COVERED` later as long as it is null in the events logged before.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from gate.errors import StoreError

GENESIS = "0" * 64
VERSION = 1

#: The fields of an event the chain covers, with the kind SQLite stores them as.
COVERED: dict[str, type] = {
    "id": int,
    "time": str,
    "door": str,
    "decision": str,
    "reason": str,
    "person_id": int,
    "person_digest": str,
    "distance": float,
    "margin": float,
    "latency_ms": float,
    "actor": str,
    "note": str,
    "track": int,
    "frames": int,
    "threshold": float,
    "quality": float,
    "credential": str,
    "snapshot_sha256": str,
}


def normalise(kind: type, value: Any) -> Any:
    """``value`` as SQLite gives it back: floats as floats (not finite: None), ints as ints."""
    if value is None:
        return None
    if kind is float:
        number = float(value)
        return number if math.isfinite(number) else None
    if kind is int:
        return int(value)
    return str(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def name_digest(salt: str, name: str) -> str:
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()


def erased_name(person_id: int | None) -> str:
    """What ``--erase`` leaves in place of a person's name."""
    return f"#{person_id}"


def new_salt() -> str:
    return secrets.token_hex(16)


def link(prev: str, row: dict[str, Any]) -> str:
    """The hash of an event: the previous hash and the covered fields, canonical."""
    fields = {key: normalise(kind, row.get(key)) for key, kind in COVERED.items()}
    fields = {key: value for key, value in fields.items() if value is not None}
    body = json.dumps(
        {"v": VERSION, "prev": prev, **fields},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def delivered_seal(event_hash: str, delivered: bool | int | None) -> str | None:
    """The second link: whether the unlock was delivered, sealed to the event's hash."""
    if delivered is None:
        return None
    return hashlib.sha256(f"{event_hash}:delivered:{int(bool(delivered))}".encode()).hexdigest()


def mark(name: str, db: Database) -> tuple[int, str]:
    """``(event_id, hash)`` of the ``head`` or the ``anchor``."""
    row = db.execute("select event_id, hash from log_chain where name = ?", [name]).fetchone()
    if row is None:
        raise StoreError(f"the log chain's {name} is missing: the log was tampered with")
    return int(row[0]), str(row[1])


@dataclass
class Verification:
    """What ``verify`` found: how much it checked, and the first broken link if any."""

    checked: int = 0
    first_id: int | None = None
    last_id: int | None = None
    head_hash: str = GENESIS
    anchor_id: int = 0
    unchecked: int = 0  # events at or before the anchor: logged before the chain existed
    purged: int = 0
    purged_at: str | None = None
    erased: int = 0
    broken_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _row_problem(row: dict[str, Any], prev: str, prev_id: int, start: bool) -> str | None:
    """Why ``row`` does not follow ``prev`` or does not match its own hash; None when it does."""
    event_id = row["id"]
    after = "the log's start" if start else f"event {prev_id}"
    if row["hash"] is None:
        return f"event {event_id} is not chained: added or changed outside gate"
    if row["prev_hash"] != prev:
        if event_id > prev_id + 1:
            gone = (
                f"event {prev_id + 1}"
                if event_id == prev_id + 2
                else f"events {prev_id + 1} to {event_id - 1}"
            )
            return f"{gone} deleted: event {event_id} does not follow {after}"
        return f"event {event_id} does not follow {after}: one of them was edited"
    if link(prev, row) != row["hash"]:
        return f"event {event_id} was edited: it does not match its hash"
    person, digest, salt = row["person"], row["person_digest"], row["person_salt"]
    if person is None:
        if digest is not None:
            return f"event {event_id}: its person's name was deleted"
    elif digest is None:
        return f"event {event_id}: a person's name was added"
    elif salt is None:
        if person != erased_name(row["person_id"]):
            return f"event {event_id}: its person's name was edited"
    elif name_digest(salt, person) != digest:
        return f"event {event_id}: its person's name was edited"
    snapshot = row["snapshot"]
    if snapshot is not None and sha256_hex(snapshot) != row["snapshot_sha256"]:
        return f"event {event_id}: its snapshot was replaced"
    if row["delivered_seal"] != delivered_seal(row["hash"], row["delivered"]):
        return f"event {event_id}: whether its unlock was delivered was edited"
    return None


def verify(db: Database, upto: int | None = None) -> Verification:
    """Walk the chain from the anchor (to event ``upto``, or to the head) and check each link."""
    result = Verification()
    try:
        anchor_id, prev = mark("anchor", db)
        head_id, head_hash = mark("head", db)
    except StoreError as exc:
        result.problem = str(exc)
        return result
    state = db.execute("select time, purged from log_chain where name = 'anchor'").fetchone()
    result.purged_at, result.purged = state[0], int(state[1] or 0)
    result.anchor_id = anchor_id
    result.unchecked = db.execute(
        "select count(*) from events where id <= ?", [anchor_id]
    ).fetchone()[0]
    extra = {
        "person",
        "person_salt",
        "snapshot",
        "prev_hash",
        "hash",
        "delivered",
        "delivered_seal",
    }
    columns = sorted({*COVERED, *extra})
    sql = f"select {', '.join(columns)} from events where id > ?"
    params: list[Any] = [anchor_id]
    if upto is not None:
        sql += " and id <= ?"
        params.append(upto)
    cursor = db.execute(sql + " order by id", params)
    prev_id = anchor_id
    for values in cursor:
        row = dict(zip(columns, values, strict=True))
        problem = _row_problem(row, prev, prev_id, start=prev_id == anchor_id)
        if problem is not None:
            result.broken_id, result.problem = row["id"], problem
            return result
        result.checked += 1
        result.first_id = row["id"] if result.first_id is None else result.first_id
        result.last_id = prev_id = row["id"]
        prev = row["hash"]
        if row["person_salt"] is None and row["person"] is not None:
            result.erased += 1
    result.head_hash = prev
    if upto is not None:
        return result
    if head_id > prev_id:
        gone = (
            f"event {head_id}" if head_id == prev_id + 1 else f"events {prev_id + 1} to {head_id}"
        )
        result.broken_id = prev_id + 1
        result.problem = f"{gone} deleted: the log's newest event was {head_id}"
    elif (head_id, head_hash) != (prev_id, prev):
        result.broken_id = prev_id
        result.problem = f"the chain's head does not match event {prev_id}: edited"
    return result
