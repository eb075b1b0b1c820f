"""Presentation attacks: what a liveness check sees of a face track, and what it answers.

Before any grant by face, gate asks every ``presentation_attack`` plugin
(:mod:`gate.hookspecs`) about the track: its frames' face crops, boxes,
landmarks and times. One verdict of ``attack`` denies (reason
``presentation_attack``); a check that raises denies too (``liveness_error``):
fail secure. With no liveness plugin active, nothing is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gate.components import Face


@dataclass(frozen=True)
class TrackFrame:
    """One frame of a face track: when, where the face was, and a crop of it."""

    clock: float  # seconds (monotonic for live sources, frame time for files)
    face: Face  # in the frame's coordinates
    crop: np.ndarray  # BGR, the face with a margin, scaled to ~96 px
    counted: bool  # above the quality floor (a view the fused embedding is made of)


@dataclass(frozen=True)
class LivenessVerdict:
    """A liveness check's answer: ``score`` in [0, 1] (1 = surely live) and why."""

    attack: bool
    score: float
    reason: str = ""
    check: str = ""  # the plugin's name, filled in by gate when empty
