"""Who may command a door from outside (Home Assistant and others), and how often.

MQTT 3.1.1 does not tell a subscriber who published a message, so a remote
command names its sender itself: ``{"action": "UNLOCK", "actor": "...",
"secret": "..."}``. The site allows senders by name (trust in the name is
the broker's ACL's to give), by a shared secret, or both. With neither, every
remote command is refused. Retained messages are always refused.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gate.messaging.homeassistant import LOCK_COMMANDS as ACTIONS


@dataclass(frozen=True)
class RemoteRequest:
    """One remote command as received: what it asks and who it says it is from."""

    door: str
    action: str | None
    actor: str
    secret: str | None = None
    retained: bool = False


def _actor(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return None


def parse_request(door: str, payload: bytes, retained: bool = False) -> RemoteRequest:
    """Read a plain ``UNLOCK``, ``LOCK`` or ``OPEN``, or a JSON command; else ``action`` is None."""
    text = payload.decode("utf-8", "replace").strip()
    if not text.startswith("{"):
        return RemoteRequest(door, ACTIONS.get(text.upper()), "unknown", None, retained)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return RemoteRequest(door, None, "unknown", None, retained)
    action = data.get("action")
    secret = data.get("secret")
    return RemoteRequest(
        door,
        ACTIONS.get(action.upper()) if isinstance(action, str) else None,
        _actor(data.get("actor")) or "unknown",
        secret if isinstance(secret, str) else None,
        retained,
    )


class RemotePolicy:
    """Allow-list, shared secret and per-door rate limits for remote commands.

    ``per_minute`` commands a door obeys in any 60 s; once ``refused_per_minute``
    were refused for a wrong sender or secret, the door refuses every remote
    command for the rest of that minute (no guessing the secret).
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        secret: str | None = None,
        *,
        per_minute: int = 6,
        refused_per_minute: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.allow = frozenset(allow)
        self.secret = secret or None
        self.per_minute, self.refused_per_minute = per_minute, refused_per_minute
        self.clock = clock
        self._obeyed: dict[str, deque[float]] = defaultdict(deque)
        self._refused: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any remote command can be obeyed at all."""
        return bool(self.allow or self.secret)

    def decide(self, request: RemoteRequest) -> str | None:
        """None to obey ``request``; otherwise why it is refused."""
        if request.retained:
            return "a retained command is never obeyed"
        if request.action is None:
            return "not a command (LOCK, UNLOCK, OPEN)"
        if not self.enabled:
            return "remote commands are off: no remote_allow or remote_secret configured"
        with self._lock:
            now = self.clock()
            refused = self._recent(self._refused, request.door, now)
            if len(refused) >= self.refused_per_minute:
                return f"{len(refused)} refused in the last minute: refusing all for now"
            if self.allow and request.actor not in self.allow:
                refused.append(now)
                return f"sender {request.actor!r} is not allowed"
            if self.secret and not (
                request.secret is not None
                and hmac.compare_digest(request.secret.encode(), self.secret.encode())
            ):
                refused.append(now)
                return "wrong or missing secret"
            obeyed = self._recent(self._obeyed, request.door, now)
            if len(obeyed) >= self.per_minute:
                return f"rate limit: at most {self.per_minute} per minute"
            obeyed.append(now)
            return None

    @staticmethod
    def _recent(log: dict[str, deque[float]], door: str, now: float) -> deque[float]:
        times = log[door]
        while times and times[0] <= now - 60.0:
            times.popleft()
        return times
