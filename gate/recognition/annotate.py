"""Drawing what gate saw on an image: boxes, landmarks, names, distances and reasons.

Used by ``gate identify --annotate``. Colours say the verdict at a glance: green for a
match (a face that would be let in), red for unknown, amber for a face gate will not
decide on (ambiguous, low quality, too small).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gate.components import Face
from gate.errors import ImageError
from gate.recognition.images import cv2

#: BGR colours of the box, landmarks and label edge, by match status.
GREEN = (60, 200, 60)
RED = (40, 40, 230)
AMBER = (0, 180, 255)
COLOURS = {
    "match": GREEN,
    "unknown": RED,
    "ambiguous": AMBER,
    "low_quality": AMBER,
    "too_small": AMBER,
}
BACKING = (25, 25, 25)
TEXT = (255, 255, 255)


@dataclass(frozen=True)
class Label:
    """One face to draw: where it is, its verdict (a match status) and the lines to write."""

    face: Face
    status: str
    lines: tuple[str, ...]

    @property
    def colour(self) -> tuple[int, int, int]:
        """The colour of this verdict (amber for anything unforeseen)."""
        return COLOURS.get(self.status, AMBER)


def describe(face: dict) -> tuple[str, ...]:
    """Label lines for one face of ``gate identify --json``'s report."""
    status = face["status"]
    distance = face.get("distance")
    threshold = face.get("threshold")
    limit = "" if threshold is None else f"threshold {threshold:.3f}"
    near = ""
    if face.get("nearest") and distance is not None:
        near = f"nearest {face['nearest']} {distance:.3f}"
    if status == "match":
        shown = "" if distance is None else f" {distance:.3f}"
        return tuple(line for line in (f"{face['person']}{shown}", limit) if line)
    if status == "unknown":
        lines = ["unknown", near, limit]
    elif status == "ambiguous":
        margin = face.get("margin")
        lines = [
            "ambiguous",
            near + ("" if margin is None else f", margin {margin:.3f}"),
            limit,
        ]
    elif status == "low_quality":
        lines = ["low quality", *(face.get("why") or "").split("; "), limit]
    elif status == "too_small":
        lines = ["too small", f"face {min(face['box'][2:]):.0f} px"]
    else:
        lines = [status.replace("_", " "), near, limit]
    return tuple(line for line in lines if line)


def _scale(image: np.ndarray) -> tuple[int, float]:
    """Line thickness and font scale that stay readable from thumbnails to 4K frames."""
    side = min(image.shape[:2])
    return max(2, round(side / 250)), max(0.45, side / 900)


def draw(image: np.ndarray, labels: list[Label]) -> np.ndarray:
    """A copy of ``image`` (BGR) with each face's box, landmarks and label drawn."""
    cv = cv2()
    out = image.copy()
    height, width = out.shape[:2]
    thick, font_scale = _scale(out)
    font = cv.FONT_HERSHEY_SIMPLEX
    text_thick = max(1, thick // 2)
    for label in labels:
        colour = label.colour
        x, y, w, h = (round(float(v)) for v in label.face.box)
        cv.rectangle(out, (x, y), (x + w, y + h), colour, thick, cv.LINE_AA)
        if label.face.landmarks is not None:
            for px, py in np.asarray(label.face.landmarks, float).reshape(-1, 2):
                if np.isfinite(px) and np.isfinite(py):
                    cv.circle(out, (round(px), round(py)), thick + 1, colour, -1, cv.LINE_AA)
        sizes = [cv.getTextSize(line, font, font_scale, text_thick) for line in label.lines]
        if not sizes:
            continue
        pad = max(3, thick)
        step = max(s[0][1] + s[1] for s in sizes) + pad
        block_w = max(s[0][0] for s in sizes) + 2 * pad
        block_h = step * len(sizes) + pad
        top = y - thick - block_h  # above the box, else below it, else inside the image
        if top < 0:
            top = y + h + thick
        top = max(0, min(top, height - block_h))
        left = max(0, min(x - thick // 2, width - block_w))
        cv.rectangle(out, (left, top), (left + block_w, top + block_h), BACKING, -1)
        cv.rectangle(out, (left, top), (left + thick, top + block_h), colour, -1)
        for row, line in enumerate(label.lines):
            baseline = top + pad + step * row + sizes[row][0][1]
            cv.putText(
                out, line, (left + pad + thick, baseline), font, font_scale, TEXT,
                text_thick, cv.LINE_AA,
            )  # fmt: skip
    return out


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write ``image`` as JPEG or PNG, by the path's suffix (also where OpenCV cannot name it)."""
    path = Path(path)
    cv = cv2()
    suffix = path.suffix.lower()
    params = [cv.IMWRITE_JPEG_QUALITY, 92] if suffix in (".jpg", ".jpeg") else []
    ok, data = cv.imencode(suffix, image, params)
    if not ok:
        raise ImageError(f"{path}: could not encode the annotated image")
    path.write_bytes(data.tobytes())
