"""From faces over frames to decisions: one decision per track, cooldown, rate-limited denials.

The decider is pure logic: these tests give it faces at fixed boxes with
embeddings that say who they are (person ``p`` sits at ``p`` on the first
axis) and a judge that names the nearest person within 0.5, so every rule is
checked without a camera. The same rules on real clips: tests/test_tracks.py.
"""

from __future__ import annotations

import numpy as np

from gate.components import Face, Match
from gate.config import DecisionConfig
from gate.recognition.pipeline import TOO_SMALL, Recognition
from gate.runtime.decisions import DoorDecider


def box(slot: int) -> tuple[float, float, float, float]:
    return (200.0 * slot, 0.0, 100.0, 100.0)


def rec(person: float, slot: int = 0, status: str = "match") -> Recognition:
    vector = np.zeros(128, np.float32)
    vector[0] = person
    match = Match(status, None, None, 0.0, 1.0)
    return Recognition(Face(box(slot), 0.9), vector, match)


def judge(fused: np.ndarray, spread: float, views) -> tuple[Match, float]:
    """Person = nearest integer to the first coordinate, when within 0.1 of it and >= 1."""
    person = round(float(fused[0]))
    distance = abs(float(fused[0]) - person)
    if person >= 1 and distance <= 0.1:
        return Match("match", person, person, distance, 1.0), 0.1
    return Match("unknown", None, max(person, 1), 0.9, 1.0), 0.1


def run(decider: DoorDecider, frames: list[list[Recognition]], step=0.1, finish=True):
    out = []
    for i, frame in enumerate(frames):
        for outcome in decider.observe(frame, i * step):
            person = outcome.match.person_id if outcome.match else None
            out.append((i, outcome.decision, outcome.reason, person, outcome.track))
    if finish:
        for outcome in decider.finish(len(frames) * step):
            out.append((len(frames), outcome.decision, outcome.reason, None, outcome.track))
    return out


def test_a_track_is_judged_once_it_has_enough_good_views():
    decider = DoorDecider(DecisionConfig(confirm_frames=3, window_frames=5), judge)
    assert run(decider, [[rec(1)]] * 5) == [(2, "granted", "granted", 1, 1)]


def test_the_judge_sees_the_fused_embedding_of_the_views():
    # each view alone is 0.2 from person 1 (beyond the 0.1 the judge allows); fused, 0.0
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=4), judge)
    frames = [[rec(1.2)], [rec(0.8)], [rec(1.2)], [rec(0.8)]]
    assert run(decider, frames) == [(1, "granted", "granted", 1, 1)]


def test_a_granted_track_is_not_granted_again():
    decider = DoorDecider(DecisionConfig(confirm_frames=1, window_frames=1, cooldown_s=0), judge)
    assert run(decider, [[rec(1)]] * 30) == [(0, "granted", "granted", 1, 1)]


def test_cooldown_stops_a_new_track_of_the_same_person_but_not_the_next_one():
    settings = DecisionConfig(confirm_frames=1, window_frames=1, cooldown_s=5.0)
    decider = DoorDecider(settings, judge, gap_s=0.5)
    gone = [[]] * 10  # 1 s without a face ends the track
    frames = [[rec(1)]] * 3 + gone + [[rec(1)]] * 3 + gone + [[rec(2)]] + gone
    frames += [[]] * 30 + [[rec(1)]]
    grants = [(i, p) for i, d, _, p, _ in run(decider, frames) if d == "granted"]
    assert grants == [(0, 1), (26, 2), (67, 1)]  # person 1 again only after 5 s


def test_two_people_in_view_are_two_tracks_and_both_granted():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=2), judge)
    frames = [[rec(1, slot=0), rec(2, slot=1)]] * 3
    outcomes = run(decider, frames)
    assert sorted((p, t) for _, d, _, p, t in outcomes if d == "granted") == [(1, 1), (2, 2)]


def test_a_stranger_is_denied_when_the_track_ends_and_denials_are_rate_limited():
    settings = DecisionConfig(confirm_frames=2, window_frames=3, unknown_interval_s=5.0)
    decider = DoorDecider(settings, judge, gap_s=0.5)
    visit = [[rec(7.5)]] * 5 + [[]] * 8  # 0.5 from anyone: unknown
    outcomes = run(decider, visit * 8)
    # a visit ends 0.6 s after its last face; the visits ending at 2.3 s and 4.9 s fall within
    # 5 s of the first denial (1.0 s), the one ending at 6.2 s does not
    assert [(i, d, r) for i, d, r, *_ in outcomes] == [
        (10, "denied", "unknown"),
        (62, "denied", "unknown"),
    ]


def test_low_quality_views_never_grant_and_are_logged_as_such():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=3), judge)
    frames = [[rec(1, status="low_quality")]] * 10
    assert run(decider, frames) == [(10, "denied", "low_quality", None, 1)]


def test_a_stranger_beside_an_enrolled_person_is_denied_and_the_person_granted():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=2), judge)
    frames = [[rec(1, slot=0), rec(7.5, slot=1)]] * 3
    assert sorted(run(decider, frames)) == [
        (1, "granted", "granted", 1, 1),
        (3, "denied", "unknown", None, 2),
    ]


def test_faces_too_small_to_judge_neither_grant_nor_deny():
    decider = DoorDecider(DecisionConfig(confirm_frames=1, window_frames=1), judge)
    tiny = Recognition(Face((0, 0, 20, 20), 0.9), np.zeros(0, np.float32), TOO_SMALL)
    assert run(decider, [[tiny]] * 10) == []


def test_a_brief_track_ends_without_a_decision():
    decider = DoorDecider(DecisionConfig(confirm_frames=3, window_frames=3), judge)
    assert run(decider, [[rec(7.5)], [rec(7.5)]]) == []


def test_small_faces_are_not_encoded_or_matched(default_pipeline):
    import cv2

    from gate.demo import sample_path
    from gate.recognition.images import read_image

    photo = read_image(sample_path("people", "obama", "obama.jpg")).pixels
    small = cv2.resize(photo, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
    (rec,) = default_pipeline.recognise(small)
    assert rec.face.size < default_pipeline.config.recognition.min_face_px
    assert rec.match.status == "too_small" and rec.embedding.size == 0


def test_someone_else_taking_the_place_of_a_face_starts_a_new_track():
    # same box, but the embedding jumps from person 1 to person 3: two tracks, two grants
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=4), judge)
    frames = [[rec(1)]] * 3 + [[rec(3)]] * 3
    assert run(decider, frames) == [
        (1, "granted", "granted", 1, 1),
        (4, "granted", "granted", 3, 2),
    ]
