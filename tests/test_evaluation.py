"""Evaluation metrics on tiny inputs whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gate.recognition.evaluation import (
    Roc,
    accuracy_at,
    accuracy_with_train_threshold,
    best_threshold,
    eer,
    kfold_accuracy,
    open_set_identification,
    plot_roc,
    roc,
    tar_at_far,
)

# Sorted: 0.1S 0.2S 0.3S 0.4D 0.5D 0.6S 0.7D 0.8D  (4 same, 4 different)
SAME_D = [0.1, 0.2, 0.3, 0.6]
DIFF_D = [0.4, 0.5, 0.7, 0.8]
D = np.array(SAME_D + DIFF_D)
S = np.array([True] * 4 + [False] * 4)


# --------------------------------------------------------------------------- ROC


def test_roc_points_by_hand() -> None:
    curve = roc(D, S)
    assert curve.thresholds[0] == -math.inf
    np.testing.assert_allclose(curve.thresholds[1:], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    np.testing.assert_allclose(curve.far, [0, 0, 0, 0, 0.25, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.tar, [0, 0.25, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(curve.frr, 1.0 - curve.tar)
    assert len(curve) == 9
    assert np.all(np.diff(curve.far) >= 0) and np.all(np.diff(curve.tar) >= 0)


def test_roc_does_not_depend_on_input_order() -> None:
    order = np.random.default_rng(0).permutation(len(D))
    a, b = roc(D, S), roc(D[order], S[order])
    for field in ("far", "tar", "thresholds"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_ties_are_accepted_together() -> None:
    # same 0.1, 0.3; different 0.3, 0.5: the two 0.3 pairs form one operating point.
    d, s = [0.3, 0.1, 0.5, 0.3], [False, True, False, True]
    curve = roc(d, s)
    np.testing.assert_allclose(curve.thresholds[1:], [0.1, 0.3, 0.5])
    np.testing.assert_allclose(curve.far, [0, 0, 0.5, 1])
    np.testing.assert_allclose(curve.tar, [0, 0.5, 1, 1])
    # Accepting the same 0.3 pair means accepting the different 0.3 pair too.
    assert tar_at_far(d, s, 0.25) == pytest.approx((0.5, 0.1))
    # EER between (FAR 0, FRR .5) at 0.1 and (FAR .5, FRR 0) at 0.3: halfway, 0.25 at 0.2.
    assert eer(curve) == pytest.approx((0.25, 0.2))


def test_same_accepts_zero_one_labels() -> None:
    np.testing.assert_array_equal(roc(D, S.astype(int)).tar, roc(D, S).tar)


# --------------------------------------------------------------------------- EER


def test_eer_exact_point() -> None:
    # At 0.4: FAR 1/4, TAR 3/4 so FRR 1/4.
    assert eer(D, S) == pytest.approx((0.25, 0.4))
    assert eer(roc(D, S)) == pytest.approx((0.25, 0.4))


def test_eer_interpolated() -> None:
    # same 0.1 0.2 0.4, different 0.3 0.5. At 0.2: FAR 0, FRR 1/3. At 0.3: FAR 1/2, FRR 1/3.
    # FAR - FRR goes -1/3 -> +1/6, crossing at w = (1/3) / (1/2) = 2/3 of the way:
    # EER = 2/3 * 1/2 = 1/3, threshold 0.2 + 2/3 * 0.1.
    rate, threshold = eer([0.1, 0.2, 0.4, 0.3, 0.5], [1, 1, 1, 0, 0])
    assert rate == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.2 + 0.1 * 2 / 3)


def test_eer_argument_checks() -> None:
    with pytest.raises(ValueError, match="same is required"):
        eer(D)
    with pytest.raises(ValueError, match="not both"):
        eer(roc(D, S), S)


# --------------------------------------------------------------------------- TAR at FAR


@pytest.mark.parametrize(
    ("far", "expected"),
    [
        (0.0, (0.75, 0.3)),
        (0.25, (0.75, 0.4)),
        (0.3, (0.75, 0.4)),  # no interpolation towards (0.5, 1.0)
        (0.5, (1.0, 0.6)),
        (1.0, (1.0, 0.8)),
    ],
)
def test_tar_at_far_by_hand(far: float, expected: tuple[float, float]) -> None:
    assert tar_at_far(D, S, far) == pytest.approx(expected)


def test_tar_at_far_when_nothing_can_be_accepted() -> None:
    # The closest pair is different: at FAR 0 nothing may be accepted.
    assert tar_at_far([0.1, 0.2], [False, True], 0.0) == (0.0, -math.inf)


def test_tar_at_far_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="far must be in"):
        tar_at_far(D, S, 1.5)


# --------------------------------------------------------------------------- accuracy


def test_best_threshold_by_hand() -> None:
    # Correct decisions accepting <= 0.3: 3 same + 4 different = 7 of 8, the maximum.
    # The threshold is the midpoint between 0.3 and the next distance 0.4.
    assert best_threshold(D, S) == pytest.approx(0.35)
    assert accuracy_at(D, S, 0.35) == pytest.approx(7 / 8)


def test_best_threshold_ties_pick_the_smallest() -> None:
    # 0.1S 0.2D 0.3S 0.4D: 0.15 and 0.35 both get 3 of 4 right.
    assert best_threshold([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(0.15)


def test_best_threshold_outside_the_range() -> None:
    # Everything same-like below everything different: split between 0.2 and 0.9.
    assert best_threshold([0.1, 0.2, 0.9], [1, 1, 0]) == pytest.approx(0.55)
    # All different pairs closer than all same pairs, 2 different vs 1 same: reject all,
    # half a gap below the smallest distance.
    assert best_threshold([0.2, 0.4, 0.9], [0, 0, 1]) == pytest.approx(0.1)


# Fold 0: same 0.1 0.2, different 0.5 0.6 -> on its own best threshold 0.35 (all right).
# Fold 1: same 0.3 0.7, different 0.9 1.0 -> on its own best threshold 0.8 (all right).
# LFW protocol: fold 0 is tested at fold 1's 0.8 (accepts all four: 2/4), fold 1 at fold 0's
# 0.35 (accepts 0.3 only: 0.3 right, 0.7 wrong, 0.9 and 1.0 right: 3/4).
FOLD_D = np.array([0.1, 0.3, 0.2, 0.7, 0.5, 0.9, 0.6, 1.0])
FOLD_S = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
FOLD_ID = np.array([0, 1, 0, 1, 0, 1, 0, 1])


def test_kfold_uses_the_other_folds_threshold() -> None:
    result = kfold_accuracy(FOLD_D, FOLD_S, FOLD_ID)
    assert result.folds == (0, 1)
    np.testing.assert_allclose(result.thresholds, [0.8, 0.35])
    np.testing.assert_allclose(result.accuracies, [0.5, 0.75])
    assert result.mean == pytest.approx(0.625)
    assert result.std == pytest.approx(0.25 / math.sqrt(2))  # ddof=1
    assert result.sem == pytest.approx(result.std / math.sqrt(2))
    # Each fold's own threshold would have scored 100 %: the protocol must not do that.
    for fold in (0, 1):
        own = np.equal(FOLD_ID, fold)
        assert accuracy_at(FOLD_D[own], FOLD_S[own], best_threshold(FOLD_D[own], FOLD_S[own])) == 1


def test_kfold_needs_two_folds_and_matching_labels() -> None:
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy(D, S, np.zeros(8, dtype=int))
    with pytest.raises(ValueError, match="one label per pair"):
        kfold_accuracy(D, S, [0, 1])


def test_accuracy_with_train_threshold() -> None:
    train, test = FOLD_ID == 0, FOLD_ID == 1
    accuracy, threshold = accuracy_with_train_threshold(
        FOLD_D[train], FOLD_S[train], FOLD_D[test], FOLD_S[test]
    )
    assert (accuracy, threshold) == pytest.approx((0.75, 0.35))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("distances", "same", "message"),
    [
        ([0.1, 0.2], [True], "differ in length"),
        ([0.1, 0.2], [True, True], "no different-person pairs"),
        ([0.1, 0.2], [False, False], "no same-person pairs"),
        ([0.1, float("nan")], [True, False], "NaN"),
        ([0.1, float("inf")], [True, False], "finite"),
        ([[0.1, 0.2]], [[True, False]], "1-D"),
        ([0.1, 0.2], [2, 0], "booleans"),
    ],
)
def test_validation_errors(distances: list, same: list, message: str) -> None:
    for fn in (roc, best_threshold, eer):
        with pytest.raises(ValueError, match=message):
            fn(distances, same)
    with pytest.raises(ValueError, match=message):
        tar_at_far(distances, same, 0.1)


# --------------------------------------------------------------------------- open set

# Gallery: alice has two templates (0,0) and (0,2); bob one at (10,0).
GALLERY = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
GALLERY_IDS = ["alice", "alice", "bob"]
# Known probes and their nearest person (distance):
#   alice (0,3): alice 1 (second template; the first is 3 away) -> right
#   bob   (7,0): bob 3                                           -> right
#   alice (4,0): alice 4 (bob is 6)                              -> right
#   bob   (3,0): alice 3 (bob is 7)                              -> wrong
# Strangers (carol, dave, erin, frank) and their nearest distance:
#   (0,-2): alice 2;  (10,5): bob 5;  (20,0): bob 10;  (-6,0): alice 6
PROBES = np.array(
    [[0.0, 3.0], [7.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, -2.0], [10.0, 5.0], [20, 0], [-6, 0]]
)
PROBE_IDS = ["alice", "bob", "alice", "bob", "carol", "dave", "erin", "frank"]


def test_open_set_rank1_and_nearest() -> None:
    result = open_set_identification(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS)
    assert (result.n_known, result.n_strangers) == (4, 4)
    assert result.rank1 == pytest.approx(0.75)
    assert result.nearest_ids == ("alice", "bob", "alice", "alice", "alice", "bob", "bob", "alice")
    np.testing.assert_allclose(result.nearest_distances, [1, 3, 4, 3, 2, 5, 10, 6], atol=1e-9)


@pytest.mark.parametrize(
    ("far", "threshold", "dir_"),
    [
        # Strangers sorted 2 5 6 10. FAR 1/4 allows one: threshold below 5, the largest observed
        # nearest distance there is 4 -> known right within 4: distances 1, 3, 4 -> 3/4.
        (0.25, 4.0, 0.75),
        # FAR 1 % of 4 strangers allows none: below 2, only the 1 -> 1/4.
        (0.01, 1.0, 0.25),
        # FAR 1/2 allows two: below 6 -> 5 (a stranger's distance), DIR 3/4.
        (0.5, 5.0, 0.75),
        # FAR 1 accepts everything: the largest distance, DIR = rank-1.
        (1.0, 10.0, 0.75),
    ],
)
def test_open_set_dir_at_far(far: float, threshold: float, dir_: float) -> None:
    result = open_set_identification(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, far=far)
    assert result.far == far
    assert result.threshold_at_far == pytest.approx(threshold)
    assert result.dir_at_far == pytest.approx(dir_)
    assert result.threshold is None and result.dir_at_threshold is None
    assert result.stranger_rejection is None


def test_open_set_at_explicit_threshold() -> None:
    # Within 3.5: known right at 1 and 3 -> DIR 2/4; strangers beyond 3.5: 5, 10, 6 -> 3/4.
    result = open_set_identification(GALLERY, GALLERY_IDS, PROBES, PROBE_IDS, threshold=3.5)
    assert result.threshold == 3.5
    assert result.dir_at_threshold == pytest.approx(0.5)
    assert result.stranger_rejection == pytest.approx(0.75)


def test_open_set_stranger_ties_and_no_acceptable_probe() -> None:
    # Two strangers at distance 1 (a tie), the known probe at 2: with FAR 1/2 the tie would
    # make 2/2 false alarms, so nothing can be accepted.
    gallery, ids = np.array([[0.0, 0.0]]), [7]
    probes = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    result = open_set_identification(gallery, ids, probes, [8, 9, 7], far=0.5)
    assert result.threshold_at_far == -math.inf
    assert result.dir_at_far == 0.0
    assert result.rank1 == 1.0


def test_open_set_without_strangers() -> None:
    known = [0, 1, 2, 3]
    result = open_set_identification(
        GALLERY, GALLERY_IDS, PROBES[known], [PROBE_IDS[i] for i in known], threshold=3.5
    )
    assert result.n_strangers == 0
    assert result.threshold_at_far is None and result.dir_at_far is None
    assert result.stranger_rejection is None
    assert result.dir_at_threshold == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probe_ids": ["x"] * 8}, "no probe belongs"),
        ({"probes": np.zeros((8, 3))}, "dimension"),
        ({"gallery_ids": ["alice"]}, "3 rows but 1 ids"),
        ({"probes": np.full((8, 2), np.nan)}, "NaN"),
        ({"far": 2.0}, "far must be in"),
        ({"gallery": np.zeros((0, 2)), "gallery_ids": []}, "non-empty"),
    ],
)
def test_open_set_validation(kwargs: dict, message: str) -> None:
    args = {
        "gallery": GALLERY,
        "gallery_ids": GALLERY_IDS,
        "probes": PROBES,
        "probe_ids": PROBE_IDS,
    }
    args.update(kwargs)
    far = args.pop("far", 1e-2)
    with pytest.raises(ValueError, match=message):
        open_set_identification(**args, far=far)


# --------------------------------------------------------------------------- plotting


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "roc.png"
    curves: dict[str, Roc] = {"model a": roc(D, S), "model b": roc(FOLD_D, FOLD_S)}
    assert plot_roc(curves, out, "tiny") == out
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


def test_plot_roc_needs_a_curve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path / "x.png", "empty")
