"""From faces over frames to decisions: one decision per face track, cooldown, rate-limited denials.

Each face is followed as a track (:mod:`gate.runtime.tracking`). Once a track holds
``confirm_frames`` good views (above the quality floor), its fused embedding
is judged against the gallery at the calibrated threshold, and again with
every further good view (the fused embedding keeps the last
``window_frames``): granted as soon as it matches, denied when the track ends
without a match. A granted track is never granted again, nor is the same
person at that door until ``cooldown_s`` has passed; two people in view are two
tracks. Tracks shorter than ``confirm_frames`` frames end without a decision.
Denials are logged at most once per ``unknown_interval_s`` per door.

Pure logic with an injectable clock and judge, so it is tested without
cameras or time. Unknown, uncertain or low quality never grants: only a
``match`` of the fused evidence does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gate.components import Match
from gate.config import DecisionConfig
from gate.policy.liveness import TrackFrame
from gate.recognition.pipeline import Recognition
from gate.runtime.tracking import Track, Tracker

#: judges a track from its fused embedding, the views' spread around it and the views
Judge = Callable[[np.ndarray, float, list[Recognition]], tuple[Match, float]]


@dataclass(frozen=True)
class Outcome:
    """A decision to log (and, when granted, to act on)."""

    decision: str
    reason: str
    recognition: Recognition  # the face shown in the log (the track's best view)
    track: int | None = None
    frames: int = 0  # good views fused into the decision
    match: Match | None = None  # the fused evidence's match
    threshold: float | None = None
    quality: float | None = None  # mean quality of the fused views
    snapshot: np.ndarray | None = None  # the picture of ``recognition`` the track kept
    history: tuple[TrackFrame, ...] = ()  # the track's recent frames, for liveness checks


class DoorDecider:
    """Follows the faces of one door and says when to grant or deny."""

    def __init__(
        self,
        settings: DecisionConfig,
        judge: Judge,
        gap_s: float = 0.7,
        crop: Callable[[np.ndarray, Recognition], np.ndarray] | None = None,
    ):
        self.settings = settings
        self.judge = judge
        self.crop = crop
        self.tracker = Tracker(gap_s=gap_s, window=settings.window_frames)
        self._cooldown_until: dict[int, float] = {}
        self._next_denial = float("-inf")
        self._judged: dict[int, tuple[Match, float]] = {}

    def observe(
        self, recognitions: list[Recognition], now: float, image: np.ndarray | None = None
    ) -> list[Outcome]:
        """Take one frame's recognitions (``now`` in monotonic seconds); return decisions.

        With ``image`` (the frame) and a ``crop`` function, each track keeps a
        crop of its face in every frame (for liveness checks) and of its best
        view (for the log).
        """
        faces = [r for r in recognitions if r.match is None or r.match.status != "too_small"]
        counts = [_counts(r) for r in faces]
        seen, ended = self.tracker.update(faces, now, counts)
        if image is not None and self.crop is not None:
            for track, counted in zip(seen, _counted(seen, faces, counts), strict=True):
                crop = self.crop(image, track.latest)
                track.history.append(TrackFrame(now, track.latest.face, crop, counted))
                if track.snapshot is None or track.best is track.latest:
                    track.snapshot = crop
        outcomes = [o for track in ended if (o := self._end(track, now)) is not None]
        ready = []
        for track in seen:
            if track.granted is not None or track.evidence < self.settings.confirm_frames:
                continue
            match, limit = self.judge(*track.fused(), track.recognitions())
            self._judged[track.id] = (match, limit)
            if match.status == "match" and match.person_id is not None:
                ready.append((match.distance, track, match, limit))
        for _, track, match, limit in sorted(ready, key=lambda r: r[0]):
            person = match.person_id
            track.granted = person
            if now < self._cooldown_until.get(person, float("-inf")):
                continue  # granted moments ago at this door: no second unlock
            self._cooldown_until[person] = now + self.settings.cooldown_s
            outcomes.append(self._outcome("granted", "granted", track, match, limit))
        return outcomes

    def finish(self, now: float) -> list[Outcome]:
        """End every track (the source ended); denials for those that never matched."""
        return [o for t in self.tracker.end_all() if (o := self._end(t, now)) is not None]

    def _end(self, track: Track, now: float) -> Outcome | None:
        judged = self._judged.pop(track.id, None)
        if track.granted is not None or track.frames < self.settings.confirm_frames:
            return None
        if now < self._next_denial:
            return None
        if judged is None:
            outcome = self._outcome("denied", "low_quality", track, None, None)
        else:
            match, limit = judged
            reason = "ambiguous" if match.status == "ambiguous" else "unknown"
            outcome = self._outcome("denied", reason, track, match, limit)
        self._next_denial = now + self.settings.unknown_interval_s
        return outcome

    def _outcome(self, decision, reason, track: Track, match, limit) -> Outcome:
        views = track.recognitions()
        quality = [r.quality.value for r in views if r.quality is not None]
        return Outcome(
            decision,
            reason,
            track.best or track.latest,
            track=track.id,
            frames=len(views),
            match=match,
            threshold=limit,
            quality=float(np.mean(quality)) if quality else None,
            snapshot=track.snapshot,
            history=tuple(track.history),
        )


def _counted(seen: list[Track], faces: list[Recognition], counts: list[bool]) -> list[bool]:
    """Whether each seen track's face in this frame was a good view."""
    by_face = {id(face): count for face, count in zip(faces, counts, strict=True)}
    return [by_face.get(id(track.latest), False) for track in seen]


def _counts(rec: Recognition) -> bool:
    """Whether a face is good enough to be evidence for a grant."""
    return rec.match is not None and rec.match.status in ("match", "unknown", "ambiguous")
