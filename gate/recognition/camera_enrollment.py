"""Enrollment at the camera: good, varied views of one face from a live source, with guidance.

Each frame's face must pass the same checks as an enrollment photo
(:func:`gate.recognition.enrollment.check_face`). A view is taken only some
time after the last one, and only when it differs from every view taken so
far in pose (yaw or roll) or in embedding: small head turns, not five copies
of one frame. Guidance is said only when it changes. A camera or stream runs
on the wall clock; a file or folder on its own clock (its frame rate), so a
clip gives the same views at any processing speed.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gate.components import Face
from gate.errors import GateError
from gate.recognition.enrollment import (
    EnrollResult,
    Refusal,
    check_face,
    encode_face,
    look_alikes,
)
from gate.recognition.pipeline import Pipeline
from gate.recognition.quality import FaceQuality
from gate.runtime.capture import Source, open_source
from gate.storage.database import GateDB, Template, check_name

#: least time between two views (seconds)
MIN_GAP_S = 0.2
#: least change of yaw (nose offset, see :func:`gate.recognition.quality.pose`) between views
MIN_TURN = 0.05
#: least change of roll (radians) between views
MIN_TILT = 0.05
#: least embedding distance (normalised, as matched) between views with the same pose
MIN_CHANGE = 0.02

#: what to tell the person for each refusal kind of :func:`check_face`
GUIDANCE = {
    "no_face": "no face",
    "faces": "two faces: one person at a time",
    "small": "closer",
    "blurred": "hold still",
    "turned": "face the camera",
    "unclear": "face the camera, in good light",
}
#: how each kind of rejected frame is counted in the final message
MISSED = {
    "no_face": "no face",
    "faces": "several faces",
    "small": "face too small",
    "blurred": "blurred",
    "turned": "turned away",
    "unclear": "unclear face",
    "same": "too like a view already taken",
}

#: refusal kinds whose reason carries the numbers that decided it
NUMBERED = ("small", "blurred", "turned", "unclear")

Say = Callable[[str], None]


class CameraEnrollError(GateError):
    """Camera enrollment ended without enough views (timeout, end of the source, stopped)."""


class _Refused(Exception):
    """A view looks like someone else enrolled."""

    def __init__(self, refusals: list[Refusal]):
        super().__init__(refusals[0].reason)
        self.refusals = refusals


@dataclass(frozen=True)
class View:
    """One view chosen for enrollment."""

    frame: int
    clock: float
    template: Template
    quality: FaceQuality
    vector: np.ndarray  # normalised, as the matcher compares it


class Guide:
    """Says a line of guidance only when it differs from the last one said."""

    def __init__(self, say: Say):
        self.say = say
        self.last: str | None = None

    def __call__(self, line: str) -> None:
        if line != self.last:
            self.say(line)
            self.last = line


def differs(view: View, taken: list[View]) -> bool:
    """Whether ``view`` differs from every view in ``taken`` in yaw, roll or embedding."""
    for other in taken:
        turned = abs(view.quality.yaw - other.quality.yaw) >= MIN_TURN
        tilted = abs(view.quality.roll - other.quality.roll) >= MIN_TILT
        changed = float(np.linalg.norm(view.vector - other.vector)) >= MIN_CHANGE
        if not (turned or tilted or changed):
            return False
    return True


def turn_hint(taken: list[View]) -> str:
    """What to ask for when a view is too like those taken.

    Positive yaw is the nose towards the image's right, the person's left;
    when every view so far faces one way, ask for the other.
    """
    yaws = [v.quality.yaw for v in taken]
    if max(yaws) - min(yaws) >= MIN_TURN:
        return "turn or tilt your head slightly"
    return "turn slightly right" if float(np.mean(yaws)) >= 0 else "turn slightly left"


class Preview:
    """A window with the face's box and the guidance, when a display exists."""

    title = "gate enroll"

    def __init__(self, say: Say):
        self.cv = None
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            say("no display (DISPLAY is not set): headless, text guidance only")
            return
        from gate.recognition.images import cv2

        cv = cv2()
        try:
            cv.namedWindow(self.title, cv.WINDOW_NORMAL)
        except cv.error:
            say("cannot open a window (OpenCV without GUI support): text guidance only")
            return
        self.cv = cv

    def show(self, image: np.ndarray, faces: list[Face], line: str, good: bool) -> None:
        """Draw the faces and the guidance; Esc or q in the window stops enrollment."""
        if self.cv is None:
            return
        cv = self.cv
        canvas = image.copy()
        colour = (0, 200, 0) if good else (0, 160, 255)
        for face in faces:
            x, y, w, h = (round(v) for v in face.box)
            cv.rectangle(canvas, (x, y), (x + w, y + h), colour, 2)
        cv.rectangle(canvas, (0, 0), (canvas.shape[1], 34), (0, 0, 0), -1)
        cv.putText(canvas, line, (8, 24), cv.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv.LINE_AA)
        cv.imshow(self.title, canvas)
        if cv.waitKey(1) & 0xFF in (27, ord("q")):
            raise CameraEnrollError("stopped at the preview window")

    def close(self) -> None:
        if self.cv is not None:
            self.cv.destroyWindow(self.title)


def _missing(tally: Counter, frames: int, last: str | None) -> str:
    """What kept views from being taken: the commonest reasons, with frame counts."""
    if not tally:
        return f"{frames} frame(s) read"
    parts = [
        f"{MISSED.get(kind, kind)} in {n} of {frames} frame(s)" for kind, n in tally.most_common(3)
    ]
    text = "; ".join(parts)
    return f"{text} (last: {last})" if last else text


def collect_views(
    pipeline: Pipeline,
    source: Source,
    spec: str,
    *,
    count: int = 5,
    timeout: float = 30.0,
    say: Say = print,
    preview: Preview | None = None,
    first_view: Callable[[View], None] | None = None,
) -> list[View]:
    """Read frames until ``count`` good, varied views of one face; raise when time runs out.

    ``first_view`` is called with the first view taken (and again after a
    restart for another face) and may raise to stop.
    """
    guide = Guide(say)
    taken: list[View] = []
    tally: Counter = Counter()
    last_reason: str | None = None
    same_person = pipeline.threshold
    fps = source.fps or 1.0
    start = time.monotonic()
    index = -1
    while True:
        image = source.read()
        frames = index + 1
        if image is None:
            what = "the camera stopped giving frames" if source.live else "the source ended"
            raise CameraEnrollError(
                f"{spec}: {what} after {frames} frame(s) with {len(taken)}/{count} good views: "
                + _missing(tally, frames, last_reason)
            )
        index += 1
        clock = time.monotonic() - start if source.live else index / fps
        if clock > timeout:
            raise CameraEnrollError(
                f"{spec}: timed out after {timeout:g} s with {len(taken)}/{count} good views: "
                + _missing(tally, frames, last_reason)
            )
        faces = pipeline.detector.detect(image)
        verdict = check_face(pipeline, image, faces, f"camera:{spec}#{index}")
        if isinstance(verdict, Refusal):
            tally[verdict.kind] += 1
            if verdict.kind in NUMBERED:
                last_reason = verdict.reason
            guide(GUIDANCE.get(verdict.kind, verdict.reason))
        elif not taken or clock - taken[-1].clock >= MIN_GAP_S - 1e-6:
            template, quality = encode_face(pipeline, image, verdict, f"camera:{spec}#{index}")
            vector = pipeline.normalise(np.asarray(template.embedding)[None, :])[0]
            view = View(index, clock, template, quality, vector)
            nearest = min((float(np.linalg.norm(vector - v.vector)) for v in taken), default=0.0)
            if taken and nearest > same_person:
                guide("another face: starting again with them")
                taken = []
            if taken and not differs(view, taken):
                tally["same"] += 1
                guide(turn_hint(taken))
            else:
                if not taken and first_view is not None:
                    first_view(view)
                taken.append(view)
                guide(f"view {len(taken)}/{count}")
                if len(taken) == count:
                    return taken
        if preview is not None:
            preview.show(image, faces, guide.last or "", not isinstance(verdict, Refusal))


def enroll_at_camera(
    db: GateDB,
    pipeline: Pipeline,
    name: str,
    spec: str,
    *,
    views: int = 5,
    timeout: float = 30.0,
    force: bool = False,
    say: Say = print,
    preview: bool = False,
) -> EnrollResult:
    """Enroll ``name`` from ``views`` views taken at the camera ``spec``; store them all or none.

    Views that look like someone else enrolled are refused, as photos are
    (checked on the first view, to stop early, and on all of them), unless ``force``.
    Raises :class:`CameraEnrollError` when the views are not found in time and
    :class:`gate.errors.SourceError` when the source does not open.
    """
    name = check_name(name)

    def alike(chosen: list[View]) -> list[Refusal]:
        if force:
            return []
        faces = [(v.template.source_name, v.template, v.quality) for v in chosen]
        return look_alikes(db, pipeline, name, faces)

    def first_view(view: View) -> None:
        refusals = alike([view])
        if refusals:
            raise _Refused(refusals)

    source = open_source(spec)
    window = Preview(say) if preview else None
    try:
        chosen = collect_views(
            pipeline,
            source,
            spec,
            count=views,
            timeout=timeout,
            say=say,
            preview=window,
            first_view=first_view,
        )
    except _Refused as refused:
        return EnrollResult(name, [], refused.refusals)
    finally:
        source.close()
        if window is not None:
            window.close()
    result = EnrollResult(name, [v.template for v in chosen], alike(chosen))
    if not result.refusals:
        _, result.added = db.enroll(name, result.accepted)
        result.stored = True
    return result
