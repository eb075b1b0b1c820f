"""From matches to decisions: N of M, cooldown per door, rate-limited denials, fail secure."""

from __future__ import annotations

import numpy as np

from gate.components import Face, Match
from gate.config import DecisionConfig
from gate.decisions import DoorDecider
from gate.pipeline import TOO_SMALL, Recognition

FACE = Face((0, 0, 100, 100), 0.9)


def rec(status: str, person: int | None = None, distance: float = 0.4) -> Recognition:
    match = Match(status, person if status == "match" else None, person, distance, 0.3)
    return Recognition(FACE, np.zeros(128, np.float32), match)


def run(decider: DoorDecider, frames: list[list[Recognition]], start: float = 0.0, step=0.1):
    out = []
    for i, frame in enumerate(frames):
        for outcome in decider.observe(frame, start + i * step):
            out.append((i, outcome.decision, outcome.reason, outcome.recognition.match.person_id))
    return out


def test_grant_needs_n_of_the_last_m_frames():
    decider = DoorDecider(DecisionConfig(confirm_frames=3, window_frames=5))
    frames = [[rec("match", 1)], [], [rec("match", 1)], [], [rec("match", 1)]]
    assert run(decider, frames) == [(4, "granted", "granted", 1)]


def test_wins_outside_the_window_do_not_count():
    decider = DoorDecider(DecisionConfig(confirm_frames=3, window_frames=3))
    frames = [[rec("match", 1)], [rec("match", 1)], [], [], [rec("match", 1)]]
    assert run(decider, frames) == []


def test_two_people_do_not_add_up():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=3))
    frames = [[rec("match", 1)], [rec("match", 2)], [rec("match", 1)]]
    assert run(decider, frames) == [(2, "granted", "granted", 1)]


def test_cooldown_stops_regranting_the_same_person_but_not_the_next_one():
    decider = DoorDecider(DecisionConfig(confirm_frames=1, window_frames=1, cooldown_s=5.0))
    frames = [[rec("match", 1)]] * 30 + [[rec("match", 2)]] + [[rec("match", 1)]] * 49
    grants = [(i, p) for i, decision, _, p in run(decider, frames) if decision == "granted"]
    assert grants == [(0, 1), (30, 2), (50, 1)]  # 10 frames/s: person 1 again after 5 s


def test_two_people_confirmed_together_are_both_granted():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=2))
    frames = [[rec("match", 1, 0.5), rec("match", 2, 0.3)]] * 2
    assert run(decider, frames) == [(1, "granted", "granted", 2), (1, "granted", "granted", 1)]


def test_unknown_and_ambiguous_never_grant_and_denials_are_rate_limited():
    settings = DecisionConfig(confirm_frames=2, window_frames=3, unknown_interval_s=5.0)
    decider = DoorDecider(settings)
    frames = [[rec("unknown", 4, 0.9)], [rec("ambiguous", 4, 0.5)]] * 40
    outcomes = run(decider, frames)
    assert all(decision == "denied" for _, decision, *_ in outcomes)
    assert [i for i, *_ in outcomes] == [1, 51]
    assert outcomes[0][2] == "ambiguous"
    assert outcomes[1][2] == "ambiguous"


def test_a_stranger_beside_an_enrolled_person_is_denied_and_the_person_granted():
    decider = DoorDecider(DecisionConfig(confirm_frames=2, window_frames=2))
    frames = [[rec("match", 1), rec("unknown", 2, 0.8)]] * 2
    assert sorted(run(decider, frames)) == [
        (1, "denied", "unknown", None),
        (1, "granted", "granted", 1),
    ]


def test_faces_too_small_to_judge_neither_grant_nor_deny():
    decider = DoorDecider(DecisionConfig(confirm_frames=1, window_frames=1))
    tiny = Recognition(Face((0, 0, 20, 20), 0.9), np.zeros(0, np.float32), TOO_SMALL)
    assert run(decider, [[tiny]] * 10) == []


def test_small_faces_are_not_encoded_or_matched(default_pipeline):
    import cv2

    from gate.demo import sample_path
    from gate.images import read_image

    photo = read_image(sample_path("people", "obama", "obama.jpg")).pixels
    small = cv2.resize(photo, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
    (rec,) = default_pipeline.recognise(small)
    assert rec.face.size < default_pipeline.config.recognition.min_face_px
    assert rec.match.status == "too_small" and rec.embedding.size == 0
