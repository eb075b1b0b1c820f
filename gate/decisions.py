"""From per-frame matches to decisions: N of the last M frames, cooldown, rate-limited denials.

A person is granted when they win in N of the door's last M frames; the same
person is not granted again at that door until the cooldown has passed, while
someone else may be (each person passing a turnstile needs a grant of their
own). Denials are logged at most once per ``unknown_interval_s`` per door.

Pure logic with an injectable clock, so it is tested without cameras or time.
Unknown or uncertain never grants: only a ``match`` counts towards a grant.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gate.config import DecisionConfig
from gate.pipeline import Recognition


@dataclass(frozen=True)
class Outcome:
    """A decision to log (and, when granted, to act on)."""

    decision: str
    reason: str
    recognition: Recognition


class DoorDecider:
    """Keeps the recent frames of one door and says when to grant or deny."""

    def __init__(self, settings: DecisionConfig):
        self.settings = settings
        self._wins: deque[frozenset[int]] = deque(maxlen=settings.window_frames)
        self._doubts: deque[bool] = deque(maxlen=settings.window_frames)
        self._cooldown_until: dict[int, float] = {}
        self._next_denial = float("-inf")

    def observe(self, recognitions: list[Recognition], now: float) -> list[Outcome]:
        """Take one frame's recognitions (``now`` in monotonic seconds); return decisions."""
        best: dict[int, Recognition] = {}
        doubtful: Recognition | None = None
        for rec in recognitions:
            match = rec.match
            if match is not None and match.status == "too_small":
                continue  # too far away to decide on, either way
            if match is not None and match.status == "match" and match.person_id is not None:
                held = best.get(match.person_id)
                if held is None or match.distance < held.match.distance:
                    best[match.person_id] = rec
            elif doubtful is None or rec.face.size > doubtful.face.size:
                doubtful = rec
        self._wins.append(frozenset(best))
        self._doubts.append(doubtful is not None)

        outcomes: list[Outcome] = []
        need = self.settings.confirm_frames
        ready = [
            person
            for person in best
            if sum(person in won for won in self._wins) >= need
            and now >= self._cooldown_until.get(person, float("-inf"))
        ]
        for person in sorted(ready, key=lambda p: best[p].match.distance):
            outcomes.append(Outcome("granted", "granted", best[person]))
            self._cooldown_until[person] = now + self.settings.cooldown_s
        if ready:
            self._wins = deque(
                (won - frozenset(ready) for won in self._wins), maxlen=self._wins.maxlen
            )
        if doubtful is not None and sum(self._doubts) >= need and now >= self._next_denial:
            reason = doubtful.match.status if doubtful.match else "unknown"
            outcomes.append(Outcome("denied", reason, doubtful))
            self._next_denial = now + self.settings.unknown_interval_s
            self._doubts.clear()
        return outcomes
