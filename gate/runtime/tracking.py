"""Face tracks: the same face followed across frames, its good views fused into one embedding.

A face in a new frame joins the track whose last box it overlaps most (unless
its embedding says someone else took the place), or, when it moved too far
for that, the track whose embedding it is closest to nearby; otherwise it
starts a track of its own. A track ends once its face has been gone for
``gap_s`` (and at least one frame). Only faces above the quality floor add to
a track's evidence; the fused embedding is their quality-weighted mean.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gate.recognition.pipeline import Recognition

#: least box overlap (intersection over union) that joins a face to a track
MIN_IOU = 0.2
#: ... unless its embedding is this far from the track's last one (someone else took the place)
MAX_CHANGE = 0.55
#: frames of a track kept for liveness checks
HISTORY = 30
#: a face that overlaps no track joins the nearest one in embedding space within this
MAX_JOIN_DISTANCE = 0.45
#: ... if its box centre is within this many face widths of the track's last box
MAX_JUMP = 2.0


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / (aw * ah + bw * bh - inter))


def _centre_jump(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return float(np.hypot(ax + aw / 2 - bx - bw / 2, ay + ah / 2 - by - bh / 2) / max(aw, bw, 1))


@dataclass
class Track:
    """One face followed over frames."""

    id: int
    started: float
    last_seen: float
    box: tuple[float, float, float, float]
    window: int
    frames: int = 0
    latest: Recognition | None = None
    best: Recognition | None = None  # the best-quality face seen (for the log's snapshot)
    missed: int = 0  # frames since its face was last seen
    granted: int | None = None  # the person it was granted as
    snapshot: np.ndarray | None = None  # a picture of the best view, for the log
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # TrackFrames
    _views: deque = field(default_factory=deque)  # the good views (Recognitions)
    _last_embedding: np.ndarray | None = None

    def add(self, rec: Recognition, now: float, counts: bool) -> None:
        """Follow the track to ``rec``; ``counts`` when the face is good enough to be evidence."""
        self.box = rec.face.box
        self.last_seen = now
        self.missed = 0
        self.frames += 1
        self.latest = rec
        if len(rec.embedding):
            self._last_embedding = rec.embedding
        if counts:
            self._views.append(rec)
            while len(self._views) > self.window:
                self._views.popleft()
            if self.best is None or _weight(rec) >= _weight(self.best):
                self.best = rec

    @property
    def evidence(self) -> int:
        """How many good views the fused embedding is made of."""
        return len(self._views)

    def fused(self) -> tuple[np.ndarray, float]:
        """The good views' quality-weighted mean embedding, and their spread around it
        (the weighted mean squared distance of the views from the mean)."""
        vectors = np.stack([rec.embedding for rec in self._views])
        weights = np.array([_weight(rec) for rec in self._views])
        mean = (weights[:, None] * vectors).sum(axis=0) / weights.sum()
        deviations = ((vectors - mean) ** 2).sum(axis=1)
        return mean, float((weights * deviations).sum() / weights.sum())

    def recognitions(self) -> list[Recognition]:
        """The good views the fused embedding is made of, oldest first."""
        return list(self._views)


def _weight(rec: Recognition) -> float:
    """A view's weight in the fused embedding: its quality (never quite zero)."""
    return max(rec.quality.value if rec.quality else 1.0, 1e-3)


class Tracker:
    """Associates each frame's faces with the tracks of one door."""

    def __init__(self, gap_s: float = 0.7, window: int = 10):
        self.gap_s = gap_s
        self.window = window
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(
        self, recognitions: list[Recognition], now: float, counts: list[bool]
    ) -> tuple[list[Track], list[Track]]:
        """Add one frame's faces; returns ``(tracks seen in this frame, tracks that ended)``.

        A track ends once its face has been gone for more than ``gap_s`` and for
        more than one frame (so a slow source, a folder or a snapshot camera,
        still makes tracks).
        """
        ended = [t for t in self.tracks if now - t.last_seen > self.gap_s and t.missed >= 1]
        live = [t for t in self.tracks if t not in ended]
        pairs = []
        for i, rec in enumerate(recognitions):
            for track in live:
                distance = None
                if len(rec.embedding) and track._last_embedding is not None:
                    distance = float(np.linalg.norm(rec.embedding - track._last_embedding))
                overlap = iou(rec.face.box, track.box)
                if overlap >= MIN_IOU and (distance is None or distance <= MAX_CHANGE):
                    pairs.append((1.0 + overlap, i, track))
                elif (
                    distance is not None
                    and distance <= MAX_JOIN_DISTANCE
                    and _centre_jump(rec.face.box, track.box) <= MAX_JUMP
                ):
                    pairs.append((1.0 - distance, i, track))
        taken_recs: set[int] = set()
        taken_tracks: set[int] = set()
        seen: list[Track] = []
        for _, i, track in sorted(pairs, key=lambda p: -p[0]):
            if i in taken_recs or track.id in taken_tracks:
                continue
            taken_recs.add(i)
            taken_tracks.add(track.id)
            track.add(recognitions[i], now, counts[i])
            seen.append(track)
        for track in live:
            if track.id not in taken_tracks:
                track.missed += 1
        for i, rec in enumerate(recognitions):
            if i in taken_recs:
                continue
            track = Track(self._next_id, now, now, rec.face.box, self.window)
            self._next_id += 1
            track.add(rec, now, counts[i])
            live.append(track)
            seen.append(track)
        self.tracks = live
        return seen, ended

    def end_all(self) -> list[Track]:
        """End every track (the source ended)."""
        ended, self.tracks = self.tracks, []
        return ended
