"""Enrolments and removals while gate runs: the faiss matcher is updated in place, and the
result is what a full load of the database gives."""

from __future__ import annotations

import stat
import time

import numpy as np
import pytest

import gate.recognition.pipeline as pipeline_module
from gate.config import parse_config
from gate.plugins import make_plugin_manager
from gate.recognition.calibration import look_alike_caps
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.recognition.pipeline import Pipeline
from gate.storage import index_cache
from gate.storage.database import GateDB
from tests.conftest import data_path


@pytest.fixture(scope="module")
def bbt():
    root = data_path("people", "bbt")
    return {d.name: list_images(d) for d in sorted(root.iterdir()) if d.is_dir()}


_enroller: list[Pipeline] = []


def admin() -> Pipeline:
    """The admin's pipeline (``gate enroll`` runs in a process of its own)."""
    if not _enroller:
        _enroller.append(make_pipeline("nearest"))
    return _enroller[0]


def make_pipeline(matcher: str = "faiss") -> Pipeline:
    config = parse_config({"pipeline": {"matcher": matcher, "actuators": ["log"]}})
    return Pipeline(config, make_plugin_manager(entry_points=False).registry)


def answers(pipeline: Pipeline, db: GateDB) -> list[tuple]:
    """The matcher's verdict on every stored template, as the door would ask."""
    x, _ = db.load_templates(pipeline.encoder.space)
    matches = pipeline.matcher.match(pipeline.normalise(x), threshold=0.55, min_margin=0.05)
    return [(m.status, m.person_id, m.candidate_id, round(m.distance, 4)) for m in matches]


def same_as_a_full_load(pipeline: Pipeline, db: GateDB) -> None:
    fresh = make_pipeline()
    fresh.load_templates(db)
    assert answers(pipeline, db) == answers(fresh, db)
    assert pipeline.calibration.people == fresh.calibration.people
    assert pipeline.calibration.templates == fresh.calibration.templates
    assert pipeline.calibration.thresholds == pytest.approx(fresh.calibration.thresholds)
    fresh.close()


def test_enrolments_and_removals_update_the_index_in_place(tmp_path, bbt):
    names = list(bbt)
    db = GateDB(tmp_path / "gate.db")
    pipeline = make_pipeline()
    for name in names[:3]:
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    assert pipeline.load_templates(db) > 0
    gallery = pipeline.matcher._gallery
    for name in names[3:]:
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    db.remove_person(names[0])
    held = pipeline.refresh(db)
    assert pipeline.matcher._gallery is gallery  # changed in place, not rebuilt
    assert held == sum(db.template_counts(pipeline.encoder.space).values())
    assert len(pipeline.matcher) == len(names) - 1  # one mean per person
    same_as_a_full_load(pipeline, db)
    removed = db.person(names[1])["id"]
    db.remove_person(names[1])
    pipeline.refresh(db)
    assert removed not in {a[2] for a in answers(pipeline, db)}
    same_as_a_full_load(pipeline, db)
    pipeline.close()
    db.close()


def test_templates_changed_in_place_load_everything_again(tmp_path, bbt):
    names = list(bbt)[:3]
    db = GateDB(tmp_path / "gate.db")
    pipeline = make_pipeline()
    for name in names:
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    pipeline.load_templates(db)
    gallery = pipeline.matcher._gallery
    person = db.person(names[0])["id"]
    (first,) = db.db.execute(
        "select min(id) from templates where person_id = ?", [person]
    ).fetchone()
    db.db.execute("delete from templates where id = ?", [first])  # as a re-encode does
    db.db.conn.commit()
    pipeline.refresh(db)
    assert pipeline.matcher._gallery is not gallery  # rebuilt from the database
    same_as_a_full_load(pipeline, db)
    pipeline.close()
    db.close()


def test_a_large_gallery_gets_its_look_alike_caps_in_the_background(tmp_path, bbt, monkeypatch):
    monkeypatch.setattr(pipeline_module, "EXACT_NEIGHBOURS_UP_TO", 2)  # "large" from 3 people
    db = GateDB(tmp_path / "gate.db")
    pipeline = make_pipeline("nearest")
    for name in list(bbt)[:5]:
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    pipeline.load_templates(db)
    deadline = time.monotonic() + 30
    while not pipeline._caps and time.monotonic() < deadline:
        time.sleep(0.05)
    x, ids = db.load_templates(pipeline.encoder.space)
    expected = look_alike_caps(pipeline.normalise(x), ids, pipeline.config.recognition.min_margin)
    assert pipeline._caps.keys() == expected.keys() and len(expected) == 5
    assert np.allclose([pipeline._caps[p] for p in expected], list(expected.values()))
    pipeline.close()
    db.close()


def test_a_large_gallery_starts_from_its_kept_index(tmp_path, bbt, monkeypatch):
    """The built index is kept beside the database and read back at the next start, with what
    was enrolled since added; removing anyone deletes it (it holds their embeddings)."""
    monkeypatch.setattr(pipeline_module, "INDEX_CACHE_ABOVE", 1)
    names = list(bbt)
    db = GateDB(tmp_path / "gate.db")
    for name in names[:3]:
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    first = make_pipeline()
    first.load_templates(db)
    kept = index_cache.cache_path(db.path, first.encoder.space, "faiss")
    assert kept.exists() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    first.close()
    for name in names[3:5]:  # enrolled while gate was stopped
        assert enroll(db, admin(), name, bbt[name], skip_refused=True).stored
    restarted = make_pipeline()
    restored = []
    original = restarted.matcher.restore
    restarted.matcher.restore = lambda state: restored.append(1) or original(state)
    restarted.load_templates(db)
    assert restored == [1]  # read back, not built
    same_as_a_full_load(restarted, db)
    restarted.close()
    db.remove_person(names[0])
    assert not kept.exists()
    db.close()
