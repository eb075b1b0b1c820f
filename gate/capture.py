"""Frame sources (camera, stream, video file, image folder) and the capture thread.

Capture never waits for recognition on a live source (or a file played in real
time): a thread reads frames into a bounded queue that drops the oldest and
counts the drops. Any other file is read when the loop asks for its next frame,
so every frame is processed and none waits in a queue. A live source that
fails is reopened with exponential backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gate.config import CaptureConfig
from gate.errors import ImageError, SourceError
from gate.images import as_bgr, cv2, list_images, read_image

logger = logging.getLogger("gate.capture")


@dataclass(frozen=True)
class Frame:
    """One captured image with its capture time (epoch and monotonic seconds).

    ``clock`` is the time decisions count in: monotonic seconds for a live
    source, the position in the video for a file (so cooldowns and N-of-M mean
    the same at any processing speed), one second per image for a folder.
    """

    image: np.ndarray
    index: int
    captured_at: float
    captured_mono: float
    clock: float


class Source:
    """Something frames come from. ``live`` sources are reopened when they fail."""

    live = False
    fps = 0.0

    def __init__(self, spec: str):
        self.spec = spec

    def open(self) -> None:
        """Open (or reopen); raises :class:`SourceError` when it cannot."""

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end (or on failure)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class VideoSource(Source):
    """A camera index, an RTSP/HTTP URL or a video file, through OpenCV."""

    def __init__(self, spec: str, live: bool):
        super().__init__(spec)
        self.live = live
        self._cap = None

    def open(self) -> None:
        cv = cv2()
        target: int | str = int(self.spec) if self.spec.isdigit() else self.spec
        cap = cv.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video source {self.spec!r}")
        self.fps = float(cap.get(cv.CAP_PROP_FPS) or 0.0)
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            return None
        return as_bgr(image)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource(Source):
    """Every image in a folder, in name order; unreadable files are skipped."""

    fps = 1.0

    def open(self) -> None:
        self._paths = iter(list_images(Path(self.spec)))

    def read(self) -> np.ndarray | None:
        for path in self._paths:
            try:
                return read_image(path).pixels
            except ImageError as exc:
                logger.warning("skipping %s", exc)
        return None


def open_source(spec: str) -> Source:
    """The source a ``--source`` value names; an error that says why when there is none."""
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty video source")
    if spec.isdigit() or "://" in spec:
        source: Source = VideoSource(spec, live=True)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            source = FolderSource(str(path))
        elif path.is_file():
            source = VideoSource(str(path), live=False)
        else:
            raise SourceError(f"{spec}: no such file, folder or camera")
    source.open()
    return source


END = None  # what the queue carries once the source is finished


class Capture:
    """Hands out frames: from a capture thread and bounded queue, or read on demand."""

    def __init__(self, source: Source, settings: CaptureConfig, realtime: bool = False):
        self.source = source
        self.settings = settings
        self.realtime = realtime
        self.threaded = source.live or realtime
        self.frames: queue.Queue[Frame | None] = queue.Queue(maxsize=settings.queue_size)
        self.dropped = 0
        self.reopened = 0
        self.error: str | None = None
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gate-capture", daemon=True)
        self._index = 0

    def start(self) -> Capture:
        if self.threaded:
            self._thread.start()
        return self

    def next(self, timeout: float = 0.2) -> Frame | None:
        """The next frame; END at the end; raises ``queue.Empty`` after ``timeout``."""
        if self.threaded:
            return self.frames.get(timeout=timeout)
        image = self.source.read()
        return END if image is None else self._frame(image)

    def _frame(self, image: np.ndarray) -> Frame:
        index, now = self._index, time.monotonic()
        self._index += 1
        clock = now if self.source.live else index / (self.source.fps or 1.0)
        return Frame(image, index, time.time(), now, clock)

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.source.close()

    def _run(self) -> None:
        pace = 1.0 / self.source.fps if self.realtime and self.source.fps > 0 else 0.0
        next_at = time.monotonic()
        try:
            while not self.stop_event.is_set():
                image = self.source.read()
                if image is None:
                    if self.source.live and self._reopen():
                        continue
                    break
                if pace:
                    next_at += pace
                    delay = next_at - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                self._put(self._frame(image))
        except Exception as exc:  # a source that raises ends capture, with the reason kept
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("capture failed: %s", self.error)
        finally:
            self._put(END)

    def _put(self, item: Frame | None) -> None:
        """Queue a frame, dropping the oldest when full; END waits for room unless stopping."""
        while True:
            if item is END and not self.stop_event.is_set():
                try:
                    self.frames.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _reopen(self) -> bool:
        """Reopen a failed live source with backoff; False when giving up or stopping."""
        delay = self.settings.reopen_min_s
        attempts = 0
        self.source.close()
        while not self.stop_event.is_set():
            limit = self.settings.max_reopen_attempts
            if limit and attempts >= limit:
                self.error = f"source {self.source.spec!r} lost; gave up after {attempts} tries"
                logger.error(self.error)
                return False
            logger.warning("source %r failed; reopening in %.1fs", self.source.spec, delay)
            if self.stop_event.wait(delay):
                return False
            attempts += 1
            try:
                self.source.open()
                self.reopened += 1
                return True
            except SourceError:
                delay = min(delay * 2, self.settings.reopen_max_s)
        return False
