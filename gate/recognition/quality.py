"""How good a face is to decide on: size, sharpness, pose, detector score, colour.

Every recognised face gets a :class:`FaceQuality`. Faces below the floor
(:class:`QualityFloor`) never count towards a grant: they are logged as
``low_quality``, not as strangers. The image condition (grey or colour, small
or large) picks the impostor model that calibrates the threshold
(:mod:`gate.recognition.calibration`): distances shrink on small and grey faces, so one
distance for every condition cannot hold a stated risk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gate.components import Face

#: faces below this size (px, shorter side of the box) count as ``small``
SMALL_FACE_PX = 80.0
#: a face region whose colour channels differ by less than this (mean abs, 0-255) is grey
GREY_CHROMA = 2.0


@dataclass(frozen=True)
class FaceQuality:
    """Measured properties of one face, and the condition they put it in."""

    size: float
    sharpness: float
    yaw: float
    roll: float
    score: float
    grey: bool

    @property
    def condition(self) -> str:
        """``colour`` or ``grey``, then ``-small`` below :data:`SMALL_FACE_PX`."""
        base = "grey" if self.grey else "colour"
        return f"{base}-small" if self.size < SMALL_FACE_PX else base

    @property
    def value(self) -> float:
        """One number in [0, 1] used to weigh a face among others of its track."""
        size = min(1.0, self.size / 112.0)
        sharp = min(1.0, self.sharpness / 100.0)
        frontal = 1.0 / (1.0 + (self.yaw / 0.5) ** 2)
        return float(size * (0.5 + 0.5 * sharp) * frontal * max(0.0, min(1.0, self.score)))

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class QualityFloor:
    """What a face must reach to count towards a grant."""

    min_size: float = 48.0
    min_sharpness: float = 8.0
    max_yaw: float = 1.25
    max_roll: float = 0.6
    min_score: float = 0.6

    def failures(self, quality: FaceQuality) -> list[str]:
        """Why ``quality`` is below the floor, with the numbers; empty when it is not."""
        out = []
        if quality.size < self.min_size:
            out.append(f"face {quality.size:.1f} px, need {self.min_size:g}")
        if quality.sharpness < self.min_sharpness:
            out.append(f"sharpness {quality.sharpness:.2f}, need {self.min_sharpness:g}")
        if abs(quality.yaw) > self.max_yaw:
            out.append(f"turned away (yaw {quality.yaw:+.2f}, at most {self.max_yaw:g})")
        if abs(quality.roll) > self.max_roll:
            out.append(f"tilted (roll {quality.roll:+.2f} rad, at most {self.max_roll:g})")
        if quality.score < self.min_score:
            out.append(f"detector score {quality.score:.2f}, need {self.min_score:g}")
        return out


def pose(face: Face) -> tuple[float, float]:
    """``(yaw, roll)`` from YuNet's 5 landmarks; ``(0, 0)`` without landmarks.

    Yaw is the nose tip's horizontal offset from the midpoint of the eyes,
    as a fraction of the distance between the eyes (0 frontal, about 0.5 at
    a three-quarter view); roll is the angle of the eye line, in radians.
    """
    marks = face.landmarks
    if marks is None or face.scheme != "yunet5" or len(marks) < 3:
        return 0.0, 0.0
    right_eye, left_eye, nose = (np.asarray(p, np.float64) for p in marks[:3])
    axis = left_eye - right_eye
    span = float(np.hypot(*axis))
    if span < 1e-6:
        return 1.0, 0.0
    unit = axis / span
    offset = float(np.dot(nose - (right_eye + left_eye) / 2.0, unit)) / span
    return offset, float(np.arctan2(axis[1], axis[0]))


def is_grey(image: np.ndarray, face: Face) -> bool:
    """True when the face region has no colour (an infrared or monochrome camera)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    h, w = image.shape[:2]
    x, y, bw, bh = face.box
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(w, int(x + bw)), min(h, int(y + bh))
    region = image[y0:y1, x0:x1, :3].astype(np.int16)
    if region.size == 0:
        return False
    spread = np.abs(region[:, :, 0] - region[:, :, 1]) + np.abs(region[:, :, 1] - region[:, :, 2])
    return float(spread.mean()) / 2.0 < GREY_CHROMA


def measure(image: np.ndarray, face: Face) -> FaceQuality:
    """The quality of ``face`` in the BGR (or grey) ``image``."""
    from gate.recognition.images import as_bgr, sharpness

    grey = is_grey(image, face)
    yaw, roll = pose(face)
    return FaceQuality(
        size=face.size,
        sharpness=sharpness(as_bgr(image), face),
        yaw=yaw,
        roll=roll,
        score=float(face.score),
        grey=grey,
    )
