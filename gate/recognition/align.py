"""Face alignment: 5 landmarks -> the 150x150 chip (padding 0.25) dlib's ResNet was trained on.

A least-squares similarity transform (rotation, uniform scale, shift) takes the
landmarks onto a template in chip coordinates, and the chip is cut with
bilinear sampling from an image pyramid (halved while the face would shrink
more than 2x), the way dlib cuts its own chips. The templates were fitted
from dlib's chips by ``tools/fit_alignment_templates.py``, on photos that are
not LFW.
"""

from __future__ import annotations

import numpy as np

from gate.components import Face

CHIP_SIZE = 150

#: Where each landmark scheme sits in dlib's 150x150 chip (padding 0.25), fitted on 186
#: faces of ../shared/data/people and multi (not LFW) by tools/fit_alignment_templates.py.
TEMPLATES: dict[str, np.ndarray] = {
    "yunet5": np.array(
        [[46.744, 45.414], [101.72, 45.333], [73.831, 77.781], [50.915, 101.848], [98.361, 102.245]]
    ),
    "dlib5": np.array(
        [[110.533, 46.169], [89.407, 46.924], [36.6, 46.234], [57.553, 47.034], [73.436, 87.228]]
    ),
}


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix minimising ``sum |M @ src_i - dst_i|^2`` (no reflection)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var = (s**2).sum()
    if var <= 1e-12:
        raise ValueError("landmarks collapse to a point")
    a = (s * d).sum() / var  # scale * cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var  # scale * sin
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (mu_d - linear @ mu_s)[:, None]])


def template(scheme: str) -> np.ndarray:
    """The chip positions of a landmark scheme's 5 points."""
    try:
        return TEMPLATES[scheme]
    except KeyError:
        raise ValueError(f"no alignment template for landmark scheme {scheme!r}") from None


def chip_matrix(face: Face) -> np.ndarray:
    """The 2x3 map from image to chip coordinates for a face's landmarks."""
    if face.landmarks is None:
        raise ValueError("this face has no landmarks to align on")
    points = np.asarray(face.landmarks, np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"expected 5 finite landmarks, got shape {points.shape}")
    return similarity_fit(points, template(face.scheme))


def box_matrix(face: Face) -> np.ndarray:
    """A last resort without landmarks: the box, upright, filling the chip's face area."""
    x, y, w, h = face.box
    side = max(w, h, 1.0)
    scale = 0.6 * CHIP_SIZE / side  # dlib's chips show the face over about 60% of the width
    centre = np.array([x + w / 2, y + h / 2])
    offset = np.full(2, (CHIP_SIZE - 1) / 2) - scale * centre
    return np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]])


def extract_chip(image: np.ndarray, image_to_chip: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Cut a ``size`` x ``size`` chip; pixels outside the image are black."""
    from gate.recognition.images import cv2

    cv = cv2()
    forward = np.vstack([image_to_chip, [0.0, 0.0, 1.0]])
    backward = np.linalg.inv(forward)[:2]  # chip -> image
    scale = float(np.sqrt(abs(np.linalg.det(backward[:, :2]))))
    source = image
    while scale > 2.0 and min(source.shape[:2]) >= 8:
        source = cv.pyrDown(source)
        backward = backward / 2.0
        scale /= 2.0
    return cv.warpAffine(
        source,
        backward,
        (size, size),
        flags=cv.INTER_LINEAR | cv.WARP_INVERSE_MAP,
        borderMode=cv.BORDER_CONSTANT,
    )
