"""Liveness ``liveness``: a baseline check for a photo or a screen held up to the camera.

Two cues over the frames of a face track (:class:`gate.policy.liveness.TrackFrame`):

* **still**: a live face never quite holds still. Each frame's face is aligned
  on its landmarks and fitted onto the first frame's with a flat picture's
  motion (affine); ``motion`` is what the fit leaves of the face's detail
  (band-passed, so that light and a screen's banding do not count), the most
  over the track, in units of the detail's spread. A print or a screen, held
  still or moved by a hand, leaves little more than camera noise.
* **screen**: a screen's pixel grid, recaptured by a camera, leaves moiré:
  narrow peaks in the high frequencies of the face crop's spectrum. ``screen``
  is the strongest peak over the median of its band, the median over frames.

Fewer than ``min_frames`` frames is too little evidence: an attack (fail
secure). The settings are ``[liveness]`` in the config; off by default: on the
shared clips it takes one live face track in five for a picture
(``docs/security.md``, "Presentation attacks").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gate import hookimpl
from gate.config import GateConfig, LivenessConfig
from gate.policy.liveness import LivenessVerdict, TrackFrame

NAME = "liveness"
#: the loop's crops: the face box grown by this much each side ...
CROP_PAD = 0.3
#: ... and shrunk so the face is at most this many pixels
CROP_FACE_PX = 96.0
#: side of the aligned face the still cue compares
FACE_SIDE = 64
#: spectrum band (cycles per pixel) where a screen's grid shows
SCREEN_BAND = (0.25, 0.5)


@hookimpl
def presentation_attack(frames: list[TrackFrame], config: GateConfig) -> LivenessVerdict | None:
    """The baseline's verdict on a track about to be granted; abstains when disabled."""
    chosen = config.liveness
    if not chosen.enabled:
        return None
    return judge(frames, chosen)


def judge(frames: Sequence[TrackFrame], chosen: LivenessConfig) -> LivenessVerdict:
    """Attack when too few frames, too still, or a screen's moiré; ``score`` 0.5 at the line."""
    usable = [f for f in frames if _usable(f)]
    if len(usable) < chosen.min_frames:
        return LivenessVerdict(
            True, 0.0, f"{len(usable)} usable frames, fewer than {chosen.min_frames}", NAME
        )
    try:
        motion, screen = cues(usable)
    except Exception as exc:  # frames it cannot read are no evidence of life
        return LivenessVerdict(True, 0.0, f"cannot check: {type(exc).__name__}: {exc}", NAME)
    still = motion / chosen.min_motion
    flat = chosen.max_screen / screen if screen > 0 else 2.0
    score = float(np.clip(0.5 * min(still, flat), 0.0, 1.0))
    if still < 1.0:
        return LivenessVerdict(True, score, f"too still: motion {motion:.3f}", NAME)
    if flat < 1.0:
        return LivenessVerdict(True, score, f"screen moiré {screen:.2f}", NAME)
    return LivenessVerdict(False, score, f"motion {motion:.3f}, screen {screen:.2f}", NAME)


def cues(frames: Sequence[TrackFrame]) -> tuple[float, float]:
    """``(motion, screen)`` of a track's frames (see the module's docstring)."""
    faces = [_aligned(f) for f in frames]
    reference = faces[0]
    motion = max((_residual(reference, face) for face in faces[1:]), default=0.0)
    screen = float(np.median([_moire(_grey(f.crop)) for f in frames]))
    return float(motion), screen


def _usable(frame: TrackFrame) -> bool:
    crop = getattr(frame, "crop", None)
    return (
        isinstance(crop, np.ndarray)
        and crop.ndim in (2, 3)
        and min(crop.shape[:2]) >= 8
        and getattr(frame, "face", None) is not None
    )


def _grey(crop: np.ndarray) -> np.ndarray:
    from gate.recognition.images import cv2

    image = np.asarray(crop)
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float32)), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] >= 3:
        image = cv2().cvtColor(image[:, :, :3], cv2().COLOR_BGR2GRAY)
    elif image.ndim == 3:
        image = image[:, :, 0]
    return image.astype(np.float32)


def _crop_to_chip(frame: TrackFrame) -> np.ndarray:
    """The 2x3 map from the crop to the aligned face (``FACE_SIDE`` pixels)."""
    from gate.recognition.align import CHIP_SIZE, box_matrix, chip_matrix

    face = frame.face
    try:
        to_chip = chip_matrix(face)
    except ValueError:  # no landmarks, or unusable ones: the box
        to_chip = box_matrix(face)
    x, y, w, h = face.box
    origin = np.array([max(0.0, np.floor(x - CROP_PAD * w)), max(0.0, np.floor(y - CROP_PAD * h))])
    scale = min(1.0, CROP_FACE_PX / max(face.size, 1.0))
    linear = to_chip[:, :2] / scale
    shift = to_chip[:, :2] @ origin + to_chip[:, 2]
    return np.hstack([linear, shift[:, None]]) * (FACE_SIDE / CHIP_SIZE)


def _aligned(frame: TrackFrame) -> np.ndarray:
    """The frame's face, aligned on its landmarks, grey, ``FACE_SIDE`` pixels square."""
    from gate.recognition.images import cv2

    cv = cv2()
    matrix = _crop_to_chip(frame)
    if not np.isfinite(matrix).all():
        matrix = np.array([[FACE_SIDE / max(frame.crop.shape[1], 1), 0, 0],
                           [0, FACE_SIDE / max(frame.crop.shape[0], 1), 0]])  # fmt: skip
    return cv.warpAffine(
        _grey(frame.crop), matrix, (FACE_SIDE, FACE_SIDE), flags=cv.INTER_LINEAR,
        borderMode=cv.BORDER_REPLICATE,
    )  # fmt: skip


def _mask() -> np.ndarray:
    """The inner face: an ellipse clear of the aligned face's borders."""
    ys, xs = np.mgrid[0:FACE_SIDE, 0:FACE_SIDE].astype(np.float32)
    c = (FACE_SIDE - 1) / 2
    return ((xs - c) / (0.42 * FACE_SIDE)) ** 2 + ((ys - c) / (0.47 * FACE_SIDE)) ** 2 <= 1.0


_MASK = _mask()


def _soft(face: np.ndarray) -> np.ndarray:
    """Blurred and scaled to zero mean, unit spread on the inner face (for the fit)."""
    from gate.recognition.images import cv2

    soft = cv2().GaussianBlur(face, (0, 0), 1.0)
    values = soft[_MASK]
    return (soft - values.mean()) / max(float(values.std()), 2.0)


def _detail(face: np.ndarray) -> np.ndarray:
    """The face's features without slow shading (light, a screen's banding): a band-pass."""
    from gate.recognition.images import cv2

    cv = cv2()
    return cv.GaussianBlur(face, (0, 0), 1.0) - cv.GaussianBlur(face, (0, 0), 4.0)


def _residual(reference: np.ndarray, face: np.ndarray) -> float:
    """What an affine fit of ``face`` onto ``reference`` leaves of the features' detail,
    as mean |difference| over the reference detail's spread."""
    from gate.recognition.images import cv2

    cv = cv2()
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv.TERM_CRITERIA_EPS | cv.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        _, warp = cv.findTransformECC(
            _soft(reference), _soft(face), warp, cv.MOTION_AFFINE, criteria,
            _MASK.astype(np.uint8), 1,
        )  # fmt: skip
    except cv.error:  # no fit (a blank face, no texture): compare them as aligned
        warp = np.eye(2, 3, dtype=np.float32)
    fitted = cv.warpAffine(
        face, warp, (FACE_SIDE, FACE_SIDE), flags=cv.INTER_LINEAR | cv.WARP_INVERSE_MAP,
        borderMode=cv.BORDER_REPLICATE,
    )  # fmt: skip
    ref = _detail(reference)
    spread = max(float(ref[_MASK].std()), 1.0)
    return float(np.abs(ref - _detail(fitted))[_MASK].mean() / spread)


def _moire(grey: np.ndarray) -> float:
    """The strongest high-frequency peak of the crop's spectrum over its band's median."""
    h, w = grey.shape
    if min(h, w) < 16:
        return 0.0
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window)))
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    band = spectrum[(radius >= SCREEN_BAND[0]) & (radius <= SCREEN_BAND[1])]
    median = float(np.median(band)) if band.size else 0.0
    if median <= 1e-6:
        return 0.0
    return float(band.max() / median)
