"""Motion gating: whether a door's face detector runs on a frame at all.

An empty corridor should cost almost nothing. Each frame is shrunk to a small
grey image, blurred, and compared with a running average of the frames before
it (the background); pixels that moved by more than ``motion_threshold`` grey
levels are counted, and the frame moves when their share reaches
``motion_min_area``. That takes well under a millisecond at 640x480.

Skipping detection must never cost a decision, so the detector also runs on
the first frame, on every frame while a face track is open (a person standing
still in front of the door is still followed until the track ends), and at
least every ``detect_every_s`` seconds of the frames' clock without motion.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from gate.config import CaptureConfig
from gate.recognition.images import cv2

#: why the detector ran on a frame (None: it did not)
Reason = Literal["always", "start", "tracking", "motion", "keep_alive"]


class MotionDetector:
    """A cheap frame difference against a running-average background.

    ``threshold`` is in grey levels (0-255); ``min_area`` the share of the
    frame that must change; ``width`` the width frames are shrunk to first;
    ``alpha`` how fast the background follows the frames (per frame).
    """

    def __init__(
        self,
        threshold: int = 25,
        min_area: float = 0.005,
        *,
        width: int = 160,
        alpha: float = 0.2,
    ):
        self.threshold = threshold
        self.min_area = min_area
        self.width = width
        self.alpha = alpha
        self.background: np.ndarray | None = None
        self._cv = cv2()

    def _small_grey(self, image: np.ndarray) -> np.ndarray:
        cv = self._cv
        h, w = image.shape[:2]
        width = min(self.width, w)
        height = max(1, round(h * width / w))
        small = cv.resize(image, (width, height), interpolation=cv.INTER_AREA)
        if small.ndim == 3:
            code = cv.COLOR_BGRA2GRAY if small.shape[2] == 4 else cv.COLOR_BGR2GRAY
            small = cv.cvtColor(small, code)
        return cv.GaussianBlur(small, (5, 5), 0)

    def changed(self, image: np.ndarray) -> float:
        """The share of the frame that moved (1.0 for the first frame); learns the frame."""
        cv = self._cv
        grey = self._small_grey(image)
        if self.background is None or self.background.shape != grey.shape:
            self.background = grey.astype(np.float32)
            return 1.0
        diff = cv.absdiff(grey, cv.convertScaleAbs(self.background))
        moved = cv.countNonZero(cv.threshold(diff, self.threshold, 255, cv.THRESH_BINARY)[1])
        cv.accumulateWeighted(grey, self.background, self.alpha)
        return moved / grey.size

    def moving(self, image: np.ndarray) -> bool:
        """Whether this frame moved enough to look for faces in it."""
        return self.changed(image) >= self.min_area


class DetectionGate:
    """Says, frame by frame, whether the face detector runs; counts the frames it skips.

    ``enabled`` overrides ``settings.motion`` (a door's own setting). Times are
    the frames' clock (:attr:`gate.runtime.capture.Frame.clock`).
    """

    def __init__(self, settings: CaptureConfig, enabled: bool | None = None):
        self.enabled = settings.motion if enabled is None else enabled
        self.every_s = settings.detect_every_s
        self.motion = MotionDetector(settings.motion_threshold, settings.motion_min_area)
        self.skipped = 0
        self.reason: Reason | None = None  # why the last frame was detected on
        self._last_run: float | None = None

    def wanted(self, image: np.ndarray, clock: float, tracking: bool) -> bool:
        """Whether to detect faces in ``image``; ``tracking``: a face track is open."""
        if not self.enabled:
            self.reason = "always"
            return True
        moving = self.motion.moving(image)  # always: the background keeps learning
        last = self._last_run
        if last is None:
            self.reason = "start"
        elif tracking:
            self.reason = "tracking"
        elif moving:
            self.reason = "motion"
        elif clock - last >= self.every_s or clock < last:
            self.reason = "keep_alive"
        else:
            self.reason = None
            self.skipped += 1
            return False
        self._last_run = clock
        return True
