"""Capture: every frame of a file, drop-oldest on live sources, reopening a source that fails."""

from __future__ import annotations

import itertools
import queue
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gate.config import CaptureConfig
from gate.demo import sample_path
from gate.errors import SourceError
from gate.runtime.capture import END, Capture, Source, open_source


class FlakyCamera(Source):
    """A live source that dies after some frames and refuses to reopen a few times."""

    live = True

    def __init__(self, frames_per_life: int, refusals: int):
        super().__init__("flaky")
        self.frames_per_life = frames_per_life
        self.refusals = refusals
        self.opens = 0
        self.left = 0

    def open(self) -> None:
        if self.opens and self.refusals > 0:
            self.refusals -= 1
            raise SourceError("camera unplugged")
        self.opens += 1
        self.left = self.frames_per_life

    def read(self):
        if self.left <= 0:
            return None
        self.left -= 1
        time.sleep(0.002)
        return np.zeros((8, 8, 3), np.uint8)


def drain(capture: Capture, limit: int, slow: float = 0.0) -> list:
    frames = []
    while len(frames) < limit:
        try:
            frame = capture.next(timeout=2)
        except queue.Empty:
            break
        if frame is END:
            break
        frames.append(frame)
        time.sleep(slow)
    return frames


def test_a_file_gives_every_frame_in_order_with_its_video_time():
    source = open_source(str(sample_path("door.mp4")))
    capture = Capture(source, CaptureConfig()).start()
    frames = drain(capture, 1000)
    capture.stop()
    assert len(frames) == 120
    assert [f.index for f in frames] == list(range(120))
    assert frames[50].clock == pytest.approx(5.0)
    assert capture.dropped == 0


def test_a_dead_camera_is_reopened_with_backoff():
    camera = FlakyCamera(frames_per_life=5, refusals=2)
    settings = CaptureConfig(reopen_min_s=0.05, reopen_max_s=0.2)
    capture = Capture(camera, settings).start()
    started = time.monotonic()
    frames = drain(capture, 12)
    capture.stop()
    assert len(frames) == 12
    assert capture.reopened >= 2
    assert time.monotonic() - started >= 0.05 + 0.1  # waited, doubling, between tries
    assert all(b.index == a.index + 1 for a, b in itertools.pairwise(frames))


def test_giving_up_after_the_configured_attempts_ends_the_run_with_a_reason():
    camera = FlakyCamera(frames_per_life=3, refusals=100)
    settings = CaptureConfig(reopen_min_s=0.01, reopen_max_s=0.02, max_reopen_attempts=3)
    capture = Capture(camera, settings).start()
    frames = drain(capture, 100)
    capture.stop()
    assert len(frames) == 3
    assert "gave up after 3 tries" in capture.error


def test_a_slow_consumer_makes_a_live_source_drop_the_oldest_frames():
    camera = FlakyCamera(frames_per_life=200, refusals=0)
    settings = CaptureConfig(queue_size=2, max_reopen_attempts=1, reopen_min_s=0.01)
    capture = Capture(camera, settings).start()
    frames = drain(capture, 10, slow=0.05)
    capture.stop()
    assert capture.dropped > 0
    assert frames[-1].index - frames[0].index > len(frames)  # skipped ahead, stayed fresh


def test_ctrl_c_ends_gate_run_cleanly(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('[pipeline]\nactuators = ["log"]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gate", "--db", str(tmp_path / "gate.db"), "--config", str(config),
         "run", "--realtime", "--source", str(sample_path("door.mp4"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    assert "stopped" in err
    assert " frames, " in out  # the run's summary is still printed
