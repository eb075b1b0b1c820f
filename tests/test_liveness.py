"""Presentation attacks: the ``presentation_attack`` hook denies before any grant (and when it
fails), and the built-in baseline (``gate_plugins.liveness``) catches a still photo played as
the camera while the real clip's known people pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gate import hookimpl
from gate.components import Face
from gate.config import LivenessConfig, parse_config
from gate.demo import sample_path
from gate.policy.liveness import LivenessVerdict, TrackFrame
from gate.recognition.enrollment import enroll
from gate.recognition.pipeline import Pipeline
from gate.runtime.doors import doors_for_run
from gate.runtime.runner import Runner
from gate.storage.database import GateDB
from gate_plugins import liveness
from tests.conftest import data_path

CONFIG = {"pipeline": {"actuators": ["log"]}, "decision": {"snapshots": False}}


@pytest.fixture(scope="module")
def pipeline(pm_module):
    built = Pipeline(parse_config(CONFIG), pm_module.registry)
    yield built
    built.close()


@pytest.fixture(scope="module")
def guarded(pm_module):
    """A pipeline whose config turns the baseline on, at its shipped thresholds."""
    built = Pipeline(parse_config({**CONFIG, "liveness": {"enabled": True}}), pm_module.registry)
    yield built
    built.close()


@pytest.fixture(scope="module")
def pm_module():
    from gate.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False)


def still_photo_source(tmp_path: Path, copies: int = 6) -> Path:
    """The issue's attack: copies of one photo of an enrolled person, played as the camera."""
    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(copies):
        shutil.copy(sample_path("people", "obama", "obama.jpg"), folder / f"{i:02d}.jpg")
    return folder


def run_door(pipeline, pm, db: GateDB, source: Path) -> list:
    """Run the real loop over ``source``; the logged events."""
    doors = doors_for_run(db, pipeline.config, ["front"], str(source))
    Runner(pipeline, db.path, doors, hook=pm.hook).run()
    return db.events()


def enroll_obama(db: GateDB, pipeline) -> None:
    assert enroll(db, pipeline, "obama", [sample_path("people", "obama", "obama.jpg")]).stored


class SaysAttack:
    """A third-party liveness check that calls every track an attack, and remembers them."""

    def __init__(self):
        self.seen: list[list[TrackFrame]] = []

    @hookimpl
    def presentation_attack(self, door, person_id, frames):
        self.seen.append(frames)
        return LivenessVerdict(True, 0.1, "test says attack")


class Raises:
    @hookimpl
    def presentation_attack(self, frames):
        raise RuntimeError("liveness model missing")


def test_without_a_liveness_check_the_still_photo_is_granted(pipeline, pm_module, db, tmp_path):
    enroll_obama(db, pipeline)
    events = run_door(pipeline, pm_module, db, still_photo_source(tmp_path))
    assert [(e.decision, e.reason, e.person) for e in events] == [("granted", "granted", "obama")]


def test_a_check_that_says_attack_denies_the_grant(pipeline, pm_module, db, tmp_path):
    enroll_obama(db, pipeline)
    plugin = SaysAttack()
    pm_module.register_plugin(plugin, "says-attack", "0", "test")
    try:
        events = run_door(pipeline, pm_module, db, still_photo_source(tmp_path))
    finally:
        pm_module.unregister(name="says-attack")
    assert [(e.decision, e.reason) for e in events] == [("denied", "presentation_attack")]
    (frames,) = plugin.seen  # asked once, before the grant, with the track's frames
    assert len(frames) >= pipeline.config.decision.confirm_frames
    assert all(isinstance(f, TrackFrame) and f.crop.ndim == 3 for f in frames)
    assert all(f.face.landmarks is not None and f.counted for f in frames)


def test_a_check_that_fails_denies_the_grant(pipeline, pm_module, db, tmp_path):
    enroll_obama(db, pipeline)
    pm_module.register_plugin(Raises(), "raises", "0", "test")
    try:
        events = run_door(pipeline, pm_module, db, still_photo_source(tmp_path))
    finally:
        pm_module.unregister(name="raises")
    assert [(e.decision, e.reason) for e in events] == [("denied", "liveness_error")]


def test_the_baseline_denies_the_still_photo(guarded, pm_module, db, tmp_path):
    enroll_obama(db, guarded)
    events = run_door(guarded, pm_module, db, still_photo_source(tmp_path))
    assert [(e.decision, e.reason) for e in events] == [("denied", "presentation_attack")]


def test_the_baseline_denies_the_demo_clip_of_zoomed_photos(guarded, pm_module, db):
    for person in ("obama", "biden"):
        folder = sample_path("people", person)
        assert enroll(db, guarded, person, sorted(folder.iterdir())).stored
    events = run_door(guarded, pm_module, db, sample_path("door.mp4"))
    assert not [e for e in events if e.decision == "granted"]
    # both enrolled people's photos were recognised, and both were caught
    assert [e.reason for e in events].count("presentation_attack") == 2


@pytest.mark.slow
def test_the_baseline_lets_the_clips_known_people_through(guarded, pm_module, db):
    known = data_path("video", "hamilton_known")
    people = ("alex_lacamoire", "lin_manuel_miranda")
    for person in people:
        assert enroll(db, guarded, person, [known / f"{person}.png"]).stored
    events = run_door(guarded, pm_module, db, data_path("video", "hamilton_short.mp4"))
    assert {e.person for e in events if e.decision == "granted"} == set(people)
    assert "presentation_attack" not in {e.reason for e in events}


def frame(crop, landmarks=True, box=(40.0, 40.0, 60.0, 60.0), clock=0.0) -> TrackFrame:
    marks = None
    if landmarks:
        marks = np.array([[55, 60], [85, 60], [70, 75], [58, 88], [82, 88]], np.float32)
    return TrackFrame(clock, Face(box, 0.9, marks), crop, True)


def test_the_baseline_never_raises_on_odd_input():
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 255, (96, 96, 3), np.uint8)
    on = LivenessConfig(enabled=True)
    odd = {
        "no frames": [],
        "one frame": [frame(textured)],
        "no landmarks": [frame(textured, landmarks=False, clock=i) for i in range(4)],
        "grey crops": [frame(textured[:, :, 0], clock=i) for i in range(4)],
        "flat grey": [frame(np.full((96, 96, 3), 128, np.uint8), clock=i) for i in range(4)],
        "tiny crops": [frame(np.zeros((2, 3, 3), np.uint8), clock=i) for i in range(4)],
        "empty crops": [frame(np.zeros((0, 0, 3), np.uint8), clock=i) for i in range(4)],
        "float crops": [frame(textured.astype(np.float64) * np.nan, clock=i) for i in range(4)],
        "four channels": [
            frame(np.dstack([textured, textured[:, :, :1]]), clock=i) for i in range(4)
        ],
        "zero box": [frame(textured, box=(0.0, 0.0, 0.0, 0.0), clock=i) for i in range(4)],
        "nan landmarks": [
            TrackFrame(
                i, Face((40, 40, 60, 60), 0.9, np.full((5, 2), np.nan, np.float32)), textured, True
            )
            for i in range(4)
        ],
    }
    for name, frames in odd.items():
        verdict = liveness.judge(frames, on)
        assert isinstance(verdict, LivenessVerdict), name
        assert 0.0 <= verdict.score <= 1.0, name
        assert verdict.check == "liveness", name
    # frames it cannot make sense of are no evidence of life: an attack, not an exception
    boxless = [TrackFrame(i, Face((1.0,), 0.9, None), textured, True) for i in range(4)]
    assert liveness.judge(boxless, on).attack
    # too little evidence is an attack, not an abstention: fail secure
    assert liveness.judge([frame(textured)], on).attack
    assert liveness.judge([], on).attack
    # identical frames are a picture held still
    assert liveness.judge([frame(textured, clock=i) for i in range(4)], on).attack


def test_disabled_the_baseline_abstains():
    still = [frame(np.zeros((96, 96, 3), np.uint8), clock=i) for i in range(3)]
    off = parse_config(CONFIG)
    assert liveness.presentation_attack(frames=still, config=off) is None
    on = parse_config({**CONFIG, "liveness": {"enabled": True}})
    assert liveness.presentation_attack(frames=still, config=on).attack


def test_the_baseline_aligns_the_loops_crops_like_the_whole_frame(pipeline):
    from gate.recognition.align import CHIP_SIZE, chip_matrix, extract_chip
    from gate.recognition.images import cv2, face_region, read_image

    image = read_image(sample_path("people", "obama", "obama.jpg")).pixels
    (face,) = pipeline.detector.detect(image)
    crop, _ = face_region(image, face, pad=0.3, face_px=96)  # as the loop cuts it
    from_crop = liveness._aligned(TrackFrame(0.0, face, crop, True))
    matrix = chip_matrix(face) * (liveness.FACE_SIDE / CHIP_SIZE)
    from_frame = extract_chip(image, matrix, liveness.FACE_SIDE)
    from_frame = cv2().cvtColor(from_frame, cv2().COLOR_BGR2GRAY).astype(np.float32)
    inner = liveness._MASK
    assert np.abs(from_crop - from_frame)[inner].mean() < 8.0  # grey levels, of 255
