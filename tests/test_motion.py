"""Motion gating and detection at a door's own resolution, on real clips.

A still corridor costs no face detection (bar the keep-alive), a face walking
in starts it, a person standing still is followed until decided, and the
demo clip's decisions are the same with the gate on and off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gate.config import parse_config
from gate.demo import sample_path
from gate.errors import ConfigError
from gate.recognition.enrollment import enroll
from gate.recognition.images import cv2, list_images
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import DoorSettings, doors_for_run, spec_from_row
from gate.runtime.loop import RunStats, detect_faces
from gate.runtime.motion import DetectionGate, MotionDetector
from gate.runtime.runner import Runner
from gate.storage.database import GateDB
from tests.conftest import data_path

pytestmark = pytest.mark.slow

FPS = 10
SIZE = (640, 480)
#: door.mp4's scenes, in frames at 10 fps (tools/make_sample_clip.py)
OBAMA = range(30, 55)
#: where a door's camera would look in pedestrians_1080p.mp4: faces of 70-100 px walking in
WALKWAY = (480, 480)


def read_frames(path: Path, step: float = 1.0, crop: tuple[int, int] | None = None) -> list:
    """Every ``step``-th frame of a clip at 640x480: shrunk, or cut out at ``crop`` (x, y)."""
    cv = cv2()
    capture = cv.VideoCapture(str(path))
    frames, index, wanted = [], 0, 0.0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index >= round(wanted):
            if crop is not None:
                x, y = crop
                frames.append(np.ascontiguousarray(image[y : y + SIZE[1], x : x + SIZE[0]]))
            else:
                frames.append(cv.resize(image, SIZE, interpolation=cv.INTER_AREA))
            wanted += step
        index += 1
    capture.release()
    return frames


def still(image: np.ndarray, count: int, seed: int = 0) -> list[np.ndarray]:
    """``image`` held for ``count`` frames, with a camera's sensor noise (sigma 2 grey levels)."""
    rng = np.random.default_rng(seed)
    noisy = []
    for _ in range(count):
        noise = rng.normal(0.0, 2.0, image.shape).round().astype(np.int16)
        noisy.append(np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return noisy


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    cv = cv2()
    writer = cv.VideoWriter(str(path), cv.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def pm_module():
    from gate.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False)


@pytest.fixture(scope="module")
def base(pm_module):
    """Built once: the models are slow to load; the pipelines below share them."""
    built = Pipeline(parse_config({"pipeline": {"actuators": ["log"]}}), pm_module.registry)
    yield built
    built.close()


def pipeline_with(base: Pipeline, pm_module, **capture) -> Pipeline:
    config = parse_config({"pipeline": {"actuators": ["log"]}, "capture": capture})
    pipeline = Pipeline(config, pm_module.registry)
    pipeline.detector = base.detector
    pipeline.encoder = base.encoder
    return pipeline


@pytest.fixture(scope="module")
def door_frames() -> list[np.ndarray]:
    return read_frames(sample_path("door.mp4"))


@pytest.fixture(scope="module")
def corridor() -> np.ndarray:
    """A real camera's view with no usable face (people seen from above), to hold still."""
    return read_frames(data_path("video", "crowd_no_faces.mp4"))[0]


def run_door(pipeline: Pipeline, db: GateDB, clip: Path, **door) -> tuple[RunStats, list]:
    """The real runner over ``clip`` as door ``front``; its stats and the events logged."""
    db.add_door("front", source=str(clip), **door)
    (spec,) = doors_for_run(db, pipeline.config, [], None)
    stats = Runner(pipeline, db.path, [spec]).run()["front"]
    events = [(e.decision, e.reason, e.person) for e in db.events()]
    return stats, events


def enroll_samples(db: GateDB, pipeline: Pipeline) -> None:
    for person in sorted(p for p in sample_path("people").iterdir() if p.is_dir()):
        assert enroll(db, pipeline, person.name, list_images(person)).stored


def test_a_still_corridor_runs_the_detector_only_to_start_and_once_a_second(
    base, pm_module, corridor, tmp_path
):
    frames = still(corridor, 100)  # 10 s
    gate = DetectionGate(parse_config({}).capture)
    reasons = [
        gate.reason if gate.wanted(f, i / FPS, tracking=False) else None
        for i, f in enumerate(frames)
    ]
    ran = {i: r for i, r in enumerate(reasons) if r is not None}
    assert ran == {0: "start"} | {i: "keep_alive" for i in range(10, 100, 10)}
    assert gate.skipped == 90

    db = GateDB(tmp_path / "gate.db")
    stats, events = run_door(
        pipeline_with(base, pm_module), db, write_clip(tmp_path / "c.mp4", frames)
    )
    assert stats.frames == 100 and stats.skipped == 90 and events == []
    db.close()


def test_without_motion_gating_every_frame_is_detected(base, pm_module, corridor, tmp_path):
    db = GateDB(tmp_path / "gate.db")
    clip = write_clip(tmp_path / "c.mp4", still(corridor, 30))
    stats, _ = run_door(pipeline_with(base, pm_module, motion=False), db, clip)
    assert stats.frames == 30 and stats.skipped == 0
    db.close()
    db = GateDB(tmp_path / "door.db")  # a door's own setting beats the config
    stats, _ = run_door(pipeline_with(base, pm_module), db, clip, motion=False)
    assert stats.frames == 30 and stats.skipped == 0
    db.close()


def test_people_walking_in_start_the_detector(base, pm_module, corridor, tmp_path):
    clip = data_path("video", "pedestrians_1080p.mp4")
    walking = read_frames(clip, step=2.5, crop=WALKWAY)  # 25 -> 10 fps
    frames = still(corridor, 30) + walking
    gate = DetectionGate(parse_config({}).capture)
    ran = [gate.wanted(f, i / FPS, tracking=False) for i, f in enumerate(frames)]
    assert sum(ran[:30]) == 3  # start, 1 s, 2 s
    assert all(ran[30:]), "every frame of people walking in moves"

    db = GateDB(tmp_path / "gate.db")
    enroll_samples(db, base)
    clip = write_clip(tmp_path / "walk.mp4", frames)
    stats, events = run_door(pipeline_with(base, pm_module), db, clip)
    assert stats.skipped == 27
    assert events and all(decision == "denied" and person is None for decision, _, person in events)
    db.close()
    db = GateDB(tmp_path / "ungated.db")
    enroll_samples(db, base)
    _, ungated = run_door(pipeline_with(base, pm_module, motion=False), db, clip)
    assert ungated == events
    db.close()


def test_a_person_standing_still_is_followed_until_decided(
    base, pm_module, corridor, door_frames, tmp_path
):
    face = door_frames[OBAMA[10]]
    frames = still(corridor, 20) + still(face, 100, seed=1) + still(corridor, 20, seed=2)
    motion = MotionDetector()
    moving = [motion.moving(f) for f in frames]
    assert not any(moving[40:120]), "after a second or two the still face is background"

    db = GateDB(tmp_path / "gate.db")
    enroll_samples(db, base)
    clip = write_clip(tmp_path / "still.mp4", frames)
    pipeline = pipeline_with(base, pm_module, detect_every_s=60.0)  # no keep-alive to help
    # 80 good views to decide: only a track kept open on still frames gets there
    stats, events = run_door(pipeline, db, clip, confirm_frames=80, window_frames=80)
    assert events == [("granted", "granted", "obama")]
    assert stats.frames == 140
    assert 19 <= stats.skipped <= 39  # corridor frames only (40, the first one detected)
    db.close()


def test_the_demo_door_decides_the_same_with_motion_gating_on_and_off(base, pm_module, tmp_path):
    clip = sample_path("door.mp4")
    outcomes = {}
    for motion in (True, False):
        db = GateDB(tmp_path / f"{motion}.db")
        enroll_samples(db, base)
        stats, events = run_door(pipeline_with(base, pm_module, motion=motion), db, clip)
        assert stats.frames == 120
        outcomes[motion] = events
        db.close()
    assert outcomes[True] == outcomes[False]
    granted = {person for decision, _, person in outcomes[True] if decision == "granted"}
    assert granted == {"biden", "obama"}
    denied = [e for e in outcomes[True] if e[0] == "denied"]
    assert denied and all(person is None for _, _, person in denied)


def test_detection_on_a_shrunk_frame_finds_the_faces_where_they_are(base, door_frames):
    for index in (OBAMA[5], 95):  # obama, biden
        image = door_frames[index]
        (full,) = detect_faces(base.detector, image)
        (small,) = detect_faces(base.detector, image, 320)
        assert np.allclose(small.box, full.box, atol=0.1 * full.size)  # the detector, not scaling
        assert np.abs(small.landmarks - full.landmarks).max() < 0.1 * full.size
    wider = detect_faces(base.detector, image, 1280)  # not wider than the frame: as it is
    assert [f.box for f in wider] == [f.box for f in detect_faces(base.detector, image)]


def test_a_door_has_its_own_detection_width_and_motion_setting(tmp_path):
    config = parse_config({"capture": {"detect_width": 480}})
    row = {"name": "front", "source": "0"}
    assert spec_from_row(row, config).detect_width is None  # the config's 480 applies
    spec = spec_from_row({**row, "detect_width": 0, "motion": 0}, config)
    assert spec.detect_width == 0 and spec.motion is False
    with pytest.raises(ConfigError, match="detect_width"):
        spec_from_row({**row, "detect_width": 100}, config)
    with pytest.raises(ValueError):
        DoorSettings(detect_width=64)
    with pytest.raises(ConfigError, match=r"capture\.detect_width"):
        parse_config({"capture": {"detect_width": 100}})


def test_the_run_summary_counts_the_frames_without_detection(capsys):
    from gate.cli.running import echo_stats

    echo_stats(RunStats(frames=100, skipped=90), "front")
    assert "front: face detection skipped on 90 of 100 frames" in capsys.readouterr().out
