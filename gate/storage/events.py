"""Access decisions as gate logs and publishes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

#: ``lock`` is a lock ordered by hand or from home automation: no face decided it.
Decision = Literal["granted", "denied", "lock"]

#: Why a decision went the way it did (``gate log --reason`` filters by them).
REASONS = {
    "granted": "an enrolled person was confirmed and may pass",
    "unknown": "the face matches nobody enrolled",
    "ambiguous": "the face is too close to two enrolled people",
    "low_quality": "the face was never seen well enough to decide (small, blurred, turned away)",
    "not_allowed": "no rule lets this person through this door",
    "outside_hours": "a rule covers this door, but not at this time",
    "expired": "the person's access has ended (valid until)",
    "not_yet_valid": "the person's access has not begun (valid from)",
    "disabled": "the person is disabled",
    "anti_passback": "already inside this area: no second entry before an exit",
    "policy_error": "the access policy failed, so the door stays shut",
    "presentation_attack": "a liveness check took the face for a photo, a screen or a mask",
    "liveness_error": "the liveness check failed, so the door stays shut",
    "manual": "unlocked by hand from the command line",
    "remote": "unlocked from home automation",
    "lock": "locked by hand or from home automation",
    "remote_refused": "a command from home automation was refused (sender, secret or rate)",
}


def utc_iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC string with milliseconds (sorts as text)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class AccessEvent:
    """One decision at one door, as stored in the ``events`` table."""

    time: str
    door: str
    decision: Decision
    reason: str
    person_id: int | None = None
    person: str | None = None
    distance: float | None = None
    margin: float | None = None
    latency_ms: float | None = None
    delivered: bool | None = None
    snapshot: bytes | None = None
    actor: str | None = None
    note: str | None = None
    track: int | None = None
    frames: int | None = None
    threshold: float | None = None
    quality: float | None = None
    credential: str | None = None  # the panel credential presented for it, if any
    id: int | None = None

    def public(self) -> dict[str, Any]:
        """The event without its snapshot, for JSON output and MQTT."""
        data = asdict(self)
        data.pop("snapshot")
        for key in ("distance", "margin", "threshold", "quality"):
            value = data[key]
            data[key] = None if value is None or value == float("inf") else round(value, 4)
        return data
