"""The ``nearest`` matcher: open-set threshold, a score per person, ambiguity margin.

A person is scored by the mean of their templates (the default) or by their
nearest template (``per_person = "nearest"``); most tests pin down the latter
on hand-checkable 2-D points, then the mean rule and per-face thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest

from gate_plugins.nearest import NearestMatcher, NearestOptions


def nearest_rule() -> NearestMatcher:
    return NearestMatcher(NearestOptions(per_person="nearest"))


@pytest.fixture
def matcher():
    m = nearest_rule()
    # person 7: two templates; person 3: one; in 2-D for hand-checkable distances
    m.fit(np.array([[0, 0], [10, 0], [0, 5]], np.float32), np.array([7, 7, 3]))
    return m


def test_nearest_template_of_each_person_decides(matcher):
    (match,) = matcher.match(np.array([[9.0, 0.0]]), threshold=2.0, min_margin=0.5)
    assert match.status == "match"
    assert match.person_id == 7
    assert match.distance == pytest.approx(1.0)  # to (10, 0), not (0, 0)
    assert match.margin == pytest.approx(np.hypot(9, 5) - 1.0)


def test_beyond_the_threshold_is_unknown(matcher):
    (match,) = matcher.match(np.array([[20.0, 20.0]]), threshold=2.0, min_margin=0.5)
    assert match.status == "unknown"
    assert match.person_id is None
    assert match.candidate_id == 7


def test_too_close_to_two_people_is_ambiguous(matcher):
    # equidistant from (0, 0) of person 7 and (0, 5) of person 3
    (match,) = matcher.match(np.array([[0.0, 2.5]]), threshold=3.0, min_margin=0.5)
    assert match.status == "ambiguous"
    assert match.person_id is None
    assert match.margin == pytest.approx(0.0, abs=1e-6)


def test_batches_answer_row_by_row(matcher):
    queries = np.array([[0.0, 4.8], [10.0, 0.2], [50.0, 50.0]])
    matches = matcher.match(queries, threshold=1.0, min_margin=0.1)
    assert [m.status for m in matches] == ["match", "match", "unknown"]
    assert [m.person_id for m in matches] == [3, 7, None]


def test_nobody_enrolled_means_unknown():
    matches = NearestMatcher().match(np.ones((2, 128)), threshold=0.6, min_margin=0.0)
    assert [m.status for m in matches] == ["unknown", "unknown"]
    assert NearestMatcher().match(np.zeros((0, 128)), threshold=0.6, min_margin=0) == []


def test_single_person_has_infinite_margin():
    m = NearestMatcher()
    m.fit(np.zeros((1, 4), np.float32), np.array([1]))
    (match,) = m.match(np.full((1, 4), 0.1), threshold=0.6, min_margin=0.04)
    assert match.status == "match"
    assert match.margin == float("inf")


def test_agrees_with_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(200, 128)).astype(np.float32)
    people = rng.integers(0, 40, size=200)
    queries = rng.normal(size=(30, 128)).astype(np.float32)
    m = nearest_rule()
    m.fit(templates, people)
    matches = m.match(queries, threshold=100.0, min_margin=0.0)
    for q, match in zip(queries, matches, strict=True):
        d = np.linalg.norm(templates - q, axis=1)
        per = {p: d[people == p].min() for p in np.unique(people)}
        ranked = sorted(per, key=per.get)
        assert match.person_id == ranked[0]
        assert match.distance == pytest.approx(per[ranked[0]], rel=1e-5)
        assert match.margin == pytest.approx(per[ranked[1]] - per[ranked[0]], rel=1e-4)


def test_by_default_a_person_is_scored_by_the_mean_of_their_templates():
    m = NearestMatcher()
    assert m.rule == "mean"
    m.fit(np.array([[0, 0], [10, 0], [0, 5]], np.float32), np.array([7, 7, 3]))
    (match,) = m.match(np.array([[5.0, 1.0]]), threshold=2.0, min_margin=0.5)
    assert (match.status, match.person_id) == ("match", 7)
    assert match.distance == pytest.approx(1.0)  # to the mean (5, 0)
    assert match.margin == pytest.approx(np.hypot(5, 4) - 1.0)
    # near one template but far from the mean: the mean decides
    (match,) = m.match(np.array([[9.5, 0.0]]), threshold=2.0, min_margin=0.5)
    assert match.status == "unknown" and match.distance == pytest.approx(4.5)


def test_each_face_may_have_its_own_threshold(matcher):
    queries = np.array([[9.0, 0.0], [9.0, 0.0]])
    matches = matcher.match(queries, threshold=np.array([2.0, 0.5]), min_margin=0.5)
    assert [m.status for m in matches] == ["match", "unknown"]
