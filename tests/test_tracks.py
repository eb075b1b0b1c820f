"""Face tracks on real clips: two people are two tracks, each granted once; strangers never.

The hamilton clip shows its two known people on stage among others. The
clip is decoded once (every second frame, 5 frames/s of decisions) and each
test runs the real pipeline (YuNet, the torch encoder, the calibrated
matcher) and the door's decider over it.
"""

from __future__ import annotations

import numpy as np
import pytest

from gate.config import DecisionConfig
from gate.recognition.enrollment import enroll
from gate.recognition.images import list_images
from gate.runtime.decisions import DoorDecider
from gate.storage.database import GateDB
from tests.conftest import data_path

pytestmark = pytest.mark.slow
PEOPLE = ("alex_lacamoire", "lin_manuel_miranda")
STEP = 2  # every second frame of the 25 fps clip


@pytest.fixture(scope="module")
def pipeline():
    """A pipeline of its own: these tests load galleries into its matcher."""
    from gate.config import GateConfig
    from gate.plugins import make_plugin_manager
    from gate.recognition.pipeline import Pipeline

    built = Pipeline(GateConfig(), make_plugin_manager(entry_points=False).registry)
    yield built
    built.close()


@pytest.fixture(scope="module")
def frames():
    import cv2

    capture = cv2.VideoCapture(str(data_path("video", "hamilton_short.mp4")))
    out = []
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index % STEP == 0:
            out.append((index / 25.0, image))
        index += 1
    capture.release()
    return out


def gallery(db: GateDB, pipeline, folders: dict[str, list]) -> dict[int, str]:
    for name, photos in folders.items():
        assert enroll(db, pipeline, name, photos, skip_refused=True).stored, name
    pipeline.load_templates(db)
    return db.names()


def run_door(pipeline, frames, settings=None, threshold=None, blur=None):
    """Every decision over the clip, and the tracks' frame-by-frame membership."""
    import cv2

    def judge(fused, spread, views):
        return pipeline.judge(fused, views, spread=spread, threshold=threshold)

    decider = DoorDecider(settings or DecisionConfig(), judge)
    outcomes, membership = [], []
    for clock, image in frames:
        if blur:
            image = cv2.GaussianBlur(image, (0, 0), blur)
        recognitions = pipeline.recognise(image, threshold=threshold)
        outcomes += decider.observe(recognitions, clock, image)
        membership.append(
            [(t.id, t.latest) for t in decider.tracker.tracks if t.last_seen == clock]
        )
    outcomes += decider.finish(float("inf"))
    return outcomes, membership


def test_the_two_known_people_are_two_tracks_each_granted_once(tmp_path, pipeline, frames):
    known = data_path("video", "hamilton_known")
    db = GateDB(tmp_path / "gate.db")
    names = gallery(db, pipeline, {p: [known / f"{p}.png"] for p in PEOPLE})
    outcomes, membership = run_door(pipeline, frames)
    granted = [o for o in outcomes if o.decision == "granted"]
    assert sorted(names[o.match.person_id] for o in granted) == sorted(PEOPLE)
    assert len({o.track for o in granted}) == 2
    assert all(o.frames >= DecisionConfig().confirm_frames for o in granted)
    assert all(o.match.distance <= o.threshold for o in granted)
    # split: faces of one frame are never in one track
    for seen in membership:
        assert len({track for track, _ in seen}) == len(seen)
    # join: a granted person's track follows their face over consecutive frames
    for outcome in granted:
        spans = [i for i, seen in enumerate(membership) if outcome.track in {t for t, _ in seen}]
        assert len(spans) >= DecisionConfig().confirm_frames
        assert spans == list(range(spans[0], spans[-1] + 1)) or len(spans) > 10
        candidates = [
            rec.match.candidate_id
            for seen in membership
            for track, rec in seen
            if track == outcome.track and rec.match.candidate_id is not None
        ]
        assert np.mean([c == outcome.match.person_id for c in candidates]) >= 0.8


def test_a_door_of_people_not_in_the_clip_grants_nobody(tmp_path, pipeline, frames):
    people = data_path("people", "bbt")
    folders = {d.name: list_images(d) for d in sorted(people.iterdir()) if d.is_dir()}
    gallery(GateDB(tmp_path / "gate.db"), pipeline, folders)
    outcomes, _ = run_door(pipeline, frames)
    assert [o for o in outcomes if o.decision == "granted"] == []
    assert {o.reason for o in outcomes} <= {"unknown", "ambiguous", "low_quality"}
    assert outcomes, "the clip's faces are denied, not ignored"


def test_faces_below_the_quality_floor_never_grant_even_at_any_distance(tmp_path, pipeline, frames):
    known = data_path("video", "hamilton_known")
    gallery(GateDB(tmp_path / "gate.db"), pipeline, {p: [known / f"{p}.png"] for p in PEOPLE})
    # a distance of 4 would match every face; blurred beyond the floor, none may count
    outcomes, membership = run_door(pipeline, frames, threshold=4.0, blur=10.0)
    statuses = {rec.match.status for seen in membership for _, rec in seen}
    assert statuses and statuses <= {"low_quality", "too_small"}
    assert [o for o in outcomes if o.decision == "granted"] == []
    assert {o.reason for o in outcomes} == {"low_quality"}
