"""Who may pass which door when: the request a policy answers, and gate's built-in rules.

The policy is the ``access_policy`` hook (first answer wins); gate's rules are
the last implementation asked, so a plugin can veto or allow before them, or
return None to leave the decision to them. The built-in rules, in order:
disabled, not yet valid, expired, no rule for this door, outside its hours,
anti-passback. A site with no rules at all lets every enrolled person through
every door unless ``[policy] without_rules = "deny"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = 0b1111111


def parse_days(text: str) -> int:
    """``mon-fri``, ``sat,sun``, ``daily`` or ``mon,wed-fri`` as a bitmask (Monday = bit 0)."""
    text = text.strip().lower()
    if text in ("daily", "all", "*"):
        return ALL_DAYS
    mask = 0
    for part in text.split(","):
        ends = part.strip().split("-")
        if len(ends) not in (1, 2) or any(e not in DAYS for e in ends):
            raise ValueError(f"{text!r}: days are mon..sun, e.g. mon-fri or sat,sun")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        span = range(first, last + 1) if first <= last else [*range(first, 7), *range(last + 1)]
        for day in span:
            mask |= 1 << day
    return mask


def format_days(mask: int) -> str:
    """The inverse of :func:`parse_days`, for display."""
    if mask == ALL_DAYS:
        return "daily"
    return ",".join(day for i, day in enumerate(DAYS) if mask >> i & 1)


def parse_clock(text: str) -> time:
    """``HH:MM`` (24 h); ``24:00`` means the end of the day."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match:
        raise ValueError(f"{text!r}: use HH:MM")
    hours, minutes = int(match[1]), int(match[2])
    if (hours, minutes) == (24, 0):
        return time.max
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r}: not a time of day")
    return time(hours, minutes)


@dataclass(frozen=True)
class Window:
    """Weekly hours: on the given days, from ``start`` to ``end`` (past midnight if end < start)."""

    days: int
    start: time
    end: time

    def contains(self, when: datetime) -> bool:
        """Whether a local time is in the window; overnight hours belong to their start day."""
        now, day = when.time(), when.weekday()
        if self.start <= self.end:
            return bool(self.days >> day & 1) and self.start <= now < self.end
        if now >= self.start:
            return bool(self.days >> day & 1)
        return bool(self.days >> ((day - 1) % 7) & 1) and now < self.end


@dataclass(frozen=True)
class Rule:
    """Members of ``group`` may pass ``door`` (``*`` for every door) during ``window``."""

    id: int
    group: str
    door: str
    window: Window


@dataclass(frozen=True)
class PersonInfo:
    """What the policy knows of a recognised person."""

    id: int
    name: str
    enabled: bool = True
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DoorInfo:
    """A door as the policy sees it: ``direction`` is ``in``, ``out`` or None."""

    name: str
    direction: str | None = None
    area: str | None = None


@dataclass(frozen=True)
class AccessRequest:
    """May ``person`` pass ``door`` at ``when`` (aware, in the site's time zone)?

    ``last_passage`` is the person's last granted direction in the door's area
    (None when unknown or the door has no area).
    """

    person: PersonInfo
    door: DoorInfo
    when: datetime
    rules: tuple[Rule, ...] = ()
    last_passage: str | None = None
    anti_passback: bool = True
    without_rules: str = "allow"


@dataclass(frozen=True)
class Verdict:
    """A policy's answer; ``reason`` is one of :data:`gate.storage.events.REASONS`' keys."""

    allowed: bool
    reason: str


def builtin_policy(request: AccessRequest) -> Verdict:
    """gate's own rules (see the module docstring for their order)."""
    person, door, when = request.person, request.door, request.when
    if not person.enabled:
        return Verdict(False, "disabled")
    if person.valid_from is not None and when < person.valid_from:
        return Verdict(False, "not_yet_valid")
    if person.valid_until is not None and when >= person.valid_until:
        return Verdict(False, "expired")
    if request.rules:
        here = [r for r in request.rules if r.door in (door.name, "*") and r.group in person.groups]
        if not here:
            return Verdict(False, "not_allowed")
        if not any(r.window.contains(when) for r in here):
            return Verdict(False, "outside_hours")
    elif request.without_rules != "allow":
        return Verdict(False, "not_allowed")
    if (
        request.anti_passback
        and door.area
        and door.direction == "in"
        and request.last_passage == "in"
    ):
        return Verdict(False, "anti_passback")
    return Verdict(True, "granted")
