"""A stated stranger acceptance becomes a threshold that follows the gallery, on real faces."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.calibration import CONDITIONS, calibrate, look_alikes
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images, read_image
from gate.recognition.pipeline import Pipeline
from gate.storage.database import GateDB
from gate_plugins._dlib import impostor_model
from tests.conftest import data_path


@pytest.fixture(scope="module")
def bbt():
    root = data_path("people", "bbt")
    return {d.name: list_images(d) for d in sorted(root.iterdir()) if d.is_dir()}


def make_pipeline(**recognition) -> Pipeline:
    config = parse_config({"recognition": recognition, "pipeline": {"actuators": ["log"]}})
    return Pipeline(config, make_plugin_manager(entry_points=False).registry)


def test_the_shipped_model_covers_every_condition_and_is_monotone():
    model = impostor_model()
    assert model.space == "dlib-resnet-v1"
    assert set(model.conditions) == set(CONDITIONS)
    for condition in model.conditions.values():
        assert np.all(np.diff(condition.log_far, axis=1) >= 0)  # F_k(t) grows with t
        assert np.all(np.diff(condition.log_far, axis=0) >= -1e-9)  # and with k
        assert condition.images > 1000


def test_more_people_lower_the_threshold_and_a_smaller_risk_lowers_it_too():
    model = impostor_model()
    small, large = [2] * 10, [2] * 500
    assert model.threshold("colour", large, 0.01) < model.threshold("colour", small, 0.01)
    assert model.threshold("colour", small, 0.001) < model.threshold("colour", small, 0.01)
    t = model.threshold("colour", large, 0.01)
    assert model.acceptance("colour", large, t) == pytest.approx(0.01, rel=0.05)


def test_grey_and_small_faces_get_a_stricter_threshold_than_colour():
    model = impostor_model()
    ks = [3] * 40
    colour = model.threshold("colour", ks, 0.01)
    assert model.threshold("grey", ks, 0.01) < colour
    assert model.threshold("grey-small", ks, 0.01) < colour


def test_enrolling_and_removing_people_moves_the_threshold(tmp_path, bbt):
    pipeline = make_pipeline()
    db = GateDB(tmp_path / "gate.db")
    thresholds, model_part = [], []
    for name, photos in bbt.items():
        assert enroll(db, pipeline, name, photos, skip_refused=True).stored
        pipeline.load_templates(db)
        cal = pipeline.calibration
        thresholds.append(cal.threshold("colour"))
        model_part.append(cal.threshold("colour") - cal.site_shift["colour"])
    # each person enrolled lowers the model's distance; the site's own people may only
    # lower it further (their shift is never positive)
    assert all(b < a for a, b in itertools.pairwise(model_part))
    assert all(t <= m for t, m in zip(thresholds, model_part, strict=True))
    for name in list(bbt)[:4]:
        db.remove_person(name)
    pipeline.load_templates(db)
    assert pipeline.calibration.people == len(bbt) - 4
    after = pipeline.calibration.threshold("colour") - pipeline.calibration.site_shift["colour"]
    assert after > model_part[-1]  # fewer people: a looser distance again
    assert after == pytest.approx(model_part[3], abs=0.003)  # as for four people enrolled
    pipeline.close()


def test_a_fixed_threshold_looser_than_the_stated_risk_says_so(tmp_path, bbt, caplog):
    pipeline = make_pipeline(threshold=0.6, stranger_acceptance=0.001)
    db = GateDB(tmp_path / "gate.db")
    for name, photos in bbt.items():
        enroll(db, pipeline, name, photos, skip_refused=True)
    with caplog.at_level(logging.WARNING, logger="gate.pipeline"):
        pipeline.load_templates(db)
    cal = pipeline.calibration
    assert cal.source == "override" and set(cal.thresholds.values()) == {0.6}
    assert max(cal.acceptance.values()) > 0.001
    assert "overrides stranger_acceptance 0.001" in caplog.text
    assert "of strangers as someone" in caplog.text
    pipeline.close()


def test_a_stated_risk_looser_than_the_default_says_so(tmp_path, bbt, caplog):
    pipeline = make_pipeline(stranger_acceptance=0.02)
    db = GateDB(tmp_path / "gate.db")
    name, photos = next(iter(bbt.items()))
    enroll(db, pipeline, name, photos, skip_refused=True)
    with caplog.at_level(logging.WARNING, logger="gate.pipeline"):
        pipeline.load_templates(db)
    assert "stranger_acceptance 0.02 is looser than gate's default 0.005" in caplog.text
    assert pipeline.calibration.acceptance["colour"] == pytest.approx(0.02, rel=0.05)
    pipeline.close()


def test_a_site_whose_people_sit_closer_than_the_model_expects_gets_a_lower_threshold(bbt):
    """Enrolled people are strangers to each other: a blurred, grey camera is measured.

    The bbt faces are shrunk to a fifth (about 30 px) and blown up again, in
    grey: everyone looks more alike, so the site's cross-person distances run
    below the model's, and every condition's threshold is lowered by as much.
    """
    import cv2

    pipeline = make_pipeline()
    vectors, owners = [], []
    for person, photos in enumerate(bbt.values()):
        for photo in photos:
            pixels = read_image(photo).pixels
            small = cv2.resize(pixels, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
            blurred = cv2.resize(small, pixels.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            grey = cv2.cvtColor(cv2.cvtColor(blurred, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            faces = pipeline.detector.detect(grey)
            if faces:
                vectors.append(pipeline.encoder.encode(grey, faces[:1])[0])
                owners.append(person)
    vectors, owners = np.stack(vectors), np.array(owners)
    model = impostor_model()
    site = calibrate(model, vectors, owners, 0.01)
    ks = np.bincount(owners)
    assert site.site_shift["colour"] < -0.01
    for condition, shift in site.site_shift.items():
        assert shift <= 0.0  # the site's own people only ever make it stricter
        expected = model.threshold(condition, ks, 0.01) + shift
        assert site.thresholds[condition] == pytest.approx(expected)
        assert site.thresholds[condition] < model.threshold(condition, ks, 0.01) or shift == 0
    pipeline.close()


def test_look_alikes_are_pairs_of_people_within_the_threshold():
    vectors = np.array([[0.0, 0], [0.1, 0], [1.0, 0], [1.05, 0], [5.0, 0]])
    owners = np.array([1, 1, 2, 2, 3])
    assert look_alikes(vectors, owners, 0.5) == []
    (pair,) = look_alikes(vectors, owners, 0.95)
    assert pair[:2] == (1, 2) and pair[2] == pytest.approx(0.9)


def test_bbt3_stranger_is_not_named_alex(tmp_path):
    """A 52 px face of a stranger was named alex_lacamoire (0.515) at the old fixed 0.55."""
    pipeline = make_pipeline()
    db = GateDB(tmp_path / "gate.db")
    root = data_path("people", "face_recognition")
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        enroll(db, pipeline, person.name, list_images(person), skip_refused=True)
    pipeline.load_templates(db)
    names = db.names()
    recognitions = pipeline.recognise(read_image(data_path("multi", "bbt3.jpg")).pixels)
    assert recognitions
    named = [names[r.match.person_id] for r in recognitions if r.match.status == "match"]
    assert "alex_lacamoire" not in named
    pipeline.close()


def test_people_close_to_someone_else_get_a_stricter_distance():
    from gate.recognition.calibration import look_alike_caps
    from gate.recognition.quality import FaceQuality

    # ada and bea sit 0.45 apart on a circle of radius 1.414; cy is far from both
    def at(angle: float) -> np.ndarray:
        v = np.zeros(128, np.float32)
        v[0], v[1] = np.cos(angle), np.sin(angle)
        return v * 1.414

    apart = 2 * np.arcsin(0.45 / 2 / 1.414)
    templates = np.stack([at(0.0), at(apart), at(np.pi)])
    caps = look_alike_caps(templates, np.array([1, 2, 3]), margin=0.04)
    assert caps[1] == pytest.approx(0.41, abs=1e-4) and caps[2] == pytest.approx(0.41, abs=1e-4)
    assert caps[3] > 1.0
    pipeline = make_pipeline(threshold=0.5, min_margin=0.04)
    pipeline.fit(templates, np.array([1, 2, 3]))
    quality = FaceQuality(size=120, sharpness=100, yaw=0, roll=0, score=0.9, grey=False)
    # 0.43 from ada (within 0.5) and farther from bea by more than the margin, on the far side
    probe = at(-2 * np.arcsin(0.43 / 2 / 1.414))
    ((match, _),) = pipeline.match(probe[None], [quality])
    assert match.distance == pytest.approx(0.43, abs=1e-3) and match.margin > 0.04
    assert match.status == "ambiguous"  # beyond ada's cap of 0.41
    probe = at(-2 * np.arcsin(0.40 / 2 / 1.414))
    ((match, _),) = pipeline.match(probe[None], [quality])
    assert (match.status, match.person_id) == ("match", 1)
    pipeline.close()
