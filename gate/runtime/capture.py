"""Frame sources (camera, stream, video file, image folder) and the capture thread.

Capture never waits for recognition on a live source (or a file played in real
time): a thread reads frames into a bounded queue that drops the oldest and
counts the drops. Any other file is read when the loop asks for its next frame,
so every frame is processed and none waits in a queue. A live source that
fails is reopened with exponential backoff. A door's source (:func:`supervised`)
is also tried again when it cannot open at all, or opens and gives no frame,
and a live one whose ``read()`` hangs is replaced by a fresh one.
"""

from __future__ import annotations

import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from gate.config import CaptureConfig
from gate.errors import ImageError, SourceError
from gate.recognition.images import as_bgr, cv2, list_images, read_image

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
            hint = ""
            if self.live:
                hint = ": the stream does not open (path or login?)"
                if self.spec.isdigit() or self.spec.startswith("/dev/"):
                    hint = ": the device does not open (busy, or not a camera?)"
            raise SourceError(f"cannot open video source {self.spec!r}{hint}")
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


#: stream schemes over TCP, with their default ports: a refused connection shows at once
TCP_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}


def is_live(spec: str) -> bool:
    """Whether ``spec`` names a camera or a stream (kept open), not a file or a folder."""
    spec = str(spec).strip()
    return spec.isdigit() or "://" in spec or spec.startswith("/dev/")


def _plainly_missing(spec: str) -> str | None:
    """Why a camera or stream cannot open, when that shows without OpenCV (slow and noisy there):
    a device that is not there, a host that refuses or is unknown. None otherwise."""
    if spec.isdigit() or spec.startswith("/dev/"):
        if spec.isdigit() and not sys.platform.startswith("linux"):
            return None  # cameras are no /dev/video* files there
        device = Path(f"/dev/video{spec}" if spec.isdigit() else spec)
        return None if device.exists() else f"device missing ({device})"
    url = urlsplit(spec)
    try:
        port = url.port or TCP_PORTS.get(url.scheme.lower())
    except ValueError:
        return None
    if not url.hostname or port is None:
        return None
    try:
        with socket.create_connection((url.hostname, port), timeout=3):
            return None
    except ConnectionRefusedError:
        return f"connection refused by {url.hostname}:{port}"
    except socket.gaierror:
        return f"unknown host {url.hostname!r}"
    except TimeoutError:
        return f"no answer from {url.hostname}:{port}"
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or exc}"


def open_source(spec: str) -> Source:
    """The source a ``--source`` value names; an error that says why when there is none."""
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty video source")
    if is_live(spec):
        problem = _plainly_missing(spec)
        if problem:
            raise SourceError(f"cannot open video source {spec!r}: {problem}")
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
StatusCallback = Callable[[bool, str], None]


class Capture:
    """Hands out frames: from a capture thread and bounded queue, or read on demand.

    Given an opened ``source``, a live one is reopened with backoff when it
    fails and a file ends when it ends. Given only an ``opener`` (see
    :func:`supervised`), the capture opens the source itself and keeps trying
    for as long as it runs: a source that cannot open, or opens and gives no
    frame, is tried again with the same backoff, which starts over only once
    frames come. ``on_status(available, why)`` hears every change. With an
    ``opener``, a live source whose ``read()`` gives no frame for ``stall_s``
    (a hung driver or stream) is left to its thread and a fresh one opened.
    """

    def __init__(
        self,
        source: Source | None,
        settings: CaptureConfig,
        realtime: bool = False,
        *,
        opener: Callable[[], Source] | None = None,
        live: bool | None = None,
        on_status: StatusCallback | None = None,
        label: str = "",
    ):
        if source is None and opener is None:
            raise ValueError("a capture needs a source or an opener")
        self.source = source
        self.settings = settings
        self.realtime = realtime
        self.persistent = source is None
        self.live = bool(source.live if live is None and source is not None else live)
        self.threaded = self.live or realtime
        self.label = label or (source.spec if source is not None else "source")
        self.on_status = on_status
        self.frames: queue.Queue[Frame | None] = queue.Queue(maxsize=settings.queue_size)
        self.dropped = 0
        self.reopened = 0
        self.restarts = 0
        self.error: str | None = None
        self.stop_event = threading.Event()
        self._opener = opener
        self._given = source
        self._opened = source is not None
        self._got_frames = False  # whether the current source gave a frame
        self._tries = 0  # failures since the last frame
        self._retry_at = 0.0
        self._gave_up = False
        self._finished = False
        self._status_seen: tuple[bool, str] | None = None
        self._lock = threading.Lock()
        self._generation = 0
        self._reading_since: float | None = None
        self._thread: threading.Thread | None = None
        self._index = 0

    def start(self) -> Capture:
        if self.threaded:
            self._spawn()
        return self

    def _spawn(self) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(self._generation,), name="gate-capture", daemon=True
        )
        self._thread.start()

    def next(self, timeout: float = 0.2) -> Frame | None:
        """The next frame; END at the end; raises ``queue.Empty`` after ``timeout``."""
        if not self.threaded:
            return self._next_here(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.frames.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                self._watchdog()
                if time.monotonic() >= deadline:
                    raise

    def _frame(self, image: np.ndarray) -> Frame:
        index, now = self._index, time.monotonic()
        self._index += 1
        clock = now if self.live else index / ((self.source and self.source.fps) or 1.0)
        return Frame(image, index, time.time(), now, clock)

    def stop(self) -> None:
        """Stop reading; a thread stuck in ``read()`` closes its source once the call returns."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        elif self.source is not None:
            self.source.close()
            self.source = None

    # opening, failing, coming back ----------------------------------------

    def _open(self) -> Source | None:
        """A freshly opened source, or None (the failure said and the next try planned)."""
        try:
            if self._opener is not None:
                source = self._opener()
            else:
                source = self._given
                source.open()
        except SourceError as exc:
            self._failed(str(exc))
            return None
        except Exception as exc:  # a driver's own error: tried again like any other
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        if self._opened:
            self.reopened += 1
        self._opened = True
        self._got_frames = False
        return source

    def _failed(self, why: str) -> None:
        """Say why, and plan the next try (doubling the wait) or give up."""
        self._tries += 1
        self.error = why
        limit = self.settings.max_reopen_attempts
        if limit and self._tries > limit:
            self._gave_up = True
            self.error = f"{why}; gave up after {limit} tries"
            logger.error("%s: %s", self.label, self.error)
            self._status(False, self.error)
            return
        delay = min(
            self.settings.reopen_min_s * 2 ** min(self._tries - 1, 30), self.settings.reopen_max_s
        )
        self._retry_at = time.monotonic() + delay
        self._status(False, why, f"; trying again in {delay:.1f} s")

    def _ended(self, source: Source, problem: str | None) -> bool:
        """A read gave nothing: True when the capture is over, False when trying again."""
        source.close()
        if not self.live and (self._got_frames or not self.persistent):
            if problem:  # a file that breaks half-way is not played again
                self.error = problem
                logger.error("%s: %s", self.label, problem)
            return True
        if problem:
            why = f"{source.spec}: {problem}"
        elif self._got_frames:
            why = f"{source.spec}: stopped giving frames"
        else:
            why = f"{source.spec}: opened, but gives no frames"
        self._failed(why)
        return self._gave_up

    def _delivered(self, image: np.ndarray) -> Frame:
        self._got_frames = True
        if self._tries or self._status_seen is None or not self._status_seen[0]:
            self._tries = 0
            self.error = None
            self._status(True, "frames coming")
        return self._frame(image)

    def _status(self, available: bool, why: str, retry: str = "") -> None:
        """Log a change of state (a repeat only at info level) and tell ``on_status``."""
        changed = self._status_seen != (available, why)
        self._status_seen = (available, why)
        if available:
            if changed:
                logger.info("%s: %s", self.label, why)
        else:
            (logger.warning if changed else logger.info)("%s: %s%s", self.label, why, retry)
        if changed and self.on_status is not None:
            try:
                self.on_status(available, why)
            except Exception:
                logger.exception("%s: status observer failed", self.label)

    @staticmethod
    def _read(source: Source) -> tuple[np.ndarray | None, str | None]:
        try:
            return source.read(), None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"

    # read on demand (a file, not in real time) -------------------------------

    def _next_here(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while not self._finished and not self._gave_up:
            if self.source is None:
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    if self.stop_event.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                        break
                    if time.monotonic() >= deadline:
                        raise queue.Empty
                    continue
                self.source = self._open()
                continue
            image, problem = self._read(self.source)
            if image is not None:
                return self._delivered(image)
            self._finished = self._ended(self.source, problem)
            self.source = None
        self._finished = True
        return END

    # the capture thread (a live source, or a file in real time) --------------

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self.stop_event.is_set()

    def _run(self, generation: int) -> None:
        source = self.source if generation == 0 else None
        pace = 1.0 / source.fps if source and self.realtime and source.fps > 0 else 0.0
        next_at = time.monotonic()
        try:
            while self._current(generation) and not self._gave_up:
                if source is None:
                    wait = self._retry_at - time.monotonic()
                    if wait > 0 and self.stop_event.wait(wait):
                        break
                    source = self._open()
                    with self._lock:
                        if generation != self._generation:
                            break
                        self.source = source
                    if source is None:
                        continue
                    pace = 1.0 / source.fps if self.realtime and source.fps > 0 else 0.0
                    next_at = time.monotonic()
                with self._lock:
                    self._reading_since = time.monotonic()
                image, problem = self._read(source)
                with self._lock:
                    if generation != self._generation:
                        break  # left behind by the watchdog: a fresh source took over
                    self._reading_since = None
                if image is None:
                    over = self._ended(source, problem)
                    source = None
                    if over:
                        break
                    continue
                if pace:
                    next_at += pace
                    delay = next_at - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                self._put(self._delivered(image))
        except Exception as exc:  # a bug, not a source failure: capture ends, the reason kept
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("%s: capture failed", self.label)
        finally:
            if source is not None:
                source.close()
            if generation == self._generation:
                self._put(END)

    def _watchdog(self) -> None:
        """Leave a source whose ``read()`` hangs to its thread; a fresh one takes over."""
        since = self._reading_since
        stall = self.settings.stall_s
        if self._opener is None or since is None or time.monotonic() - since < stall:
            return
        with self._lock:
            if self._reading_since != since or self.stop_event.is_set():
                return
            self._generation += 1
            self._reading_since = None
            stuck, self.source = self.source, None
            self.restarts += 1
        spec = stuck.spec if stuck is not None else "source"
        self._failed(f"{spec}: no frame for {stall:g} s (read() hangs); restarting it")
        self._spawn()

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


def supervised(
    spec: str,
    settings: CaptureConfig,
    *,
    realtime: bool = False,
    on_status: StatusCallback | None = None,
    label: str = "",
) -> Capture:
    """A door's capture: opened from ``spec`` here, and tried again for as long as it runs."""
    return Capture(
        None,
        settings,
        realtime,
        opener=lambda: open_source(spec),
        live=is_live(spec),
        on_status=on_status,
        label=label or spec,
    )
