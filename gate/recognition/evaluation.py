"""Verification and open-set identification metrics over embedding *distances*.

Every function here works on distances, where lower means more alike (for example the Euclidean
distance between two face embeddings), and a pair is **accepted** as the same person when
``distance <= threshold``. Pairs whose distances are equal are therefore always accepted or
rejected together; no metric breaks ties by input order.

Verification (pairs of faces, same person or not):

* :func:`roc` -- the full ROC curve (FAR, TAR and the threshold of every operating point);
* :func:`eer` -- the equal error rate, interpolated between ROC points;
* :func:`tar_at_far` -- the best TAR at a target FAR, never interpolated;
* :func:`best_threshold`, :func:`accuracy_at` -- the accuracy-maximising threshold;
* :func:`kfold_accuracy` -- the LFW protocol (threshold from the other folds);
* :func:`accuracy_with_train_threshold` -- one train set, one test set (LFW View 1);
* :func:`plot_roc` -- TAR against log-scale FAR, saved as PNG.

Identification (a gallery of enrolled people, probes that may be strangers):

* :func:`open_set_identification` -- rank-1 rate, DIR at a false-alarm rate, stranger rejection.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "FoldResult",
    "OpenSetResult",
    "Roc",
    "accuracy_at",
    "accuracy_with_train_threshold",
    "best_threshold",
    "eer",
    "kfold_accuracy",
    "open_set_identification",
    "plot_roc",
    "roc",
    "tar_at_far",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


# --------------------------------------------------------------------------- validation


def _check_pairs(distances: ArrayLike, same: ArrayLike) -> tuple[FloatArray, BoolArray]:
    """Return ``(distances, same)`` as 1-D float and bool arrays, or raise ValueError."""
    d = np.asarray(distances, dtype=np.float64)
    s_raw = np.asarray(same)
    if d.ndim != 1 or s_raw.ndim != 1:
        raise ValueError(f"distances and same must be 1-D, got shapes {d.shape} and {s_raw.shape}")
    if d.shape[0] != s_raw.shape[0]:
        raise ValueError(
            f"distances and same differ in length: {d.shape[0]} distances, {s_raw.shape[0]} labels"
        )
    if s_raw.dtype != np.bool_:
        if not np.isin(s_raw, (0, 1)).all():
            raise ValueError("same must hold booleans (or 0/1)")
        s_raw = s_raw.astype(bool)
    if np.isnan(d).any():
        raise ValueError(f"distances contain {int(np.isnan(d).sum())} NaN value(s)")
    if not np.isfinite(d).all():
        raise ValueError("distances must be finite (found an infinite distance)")
    if not s_raw.any():
        raise ValueError("no same-person pairs: TAR is undefined")
    if s_raw.all():
        raise ValueError("no different-person pairs: FAR is undefined")
    return d, s_raw


# --------------------------------------------------------------------------- ROC


@dataclass(frozen=True)
class Roc:
    """A ROC curve: operating point ``i`` accepts pairs with ``distance <= thresholds[i]``.

    Points are ordered by increasing threshold, so ``far`` and ``tar`` never decrease. The first
    point has threshold ``-inf`` (reject everything: FAR = TAR = 0); each following point is one
    distinct observed distance, the last one accepting everything (FAR = TAR = 1).
    """

    far: FloatArray
    tar: FloatArray
    thresholds: FloatArray

    @property
    def frr(self) -> FloatArray:
        """False reject rate, ``1 - tar``."""
        return 1.0 - self.tar

    def __len__(self) -> int:
        return int(self.far.shape[0])


def _accept_counts(
    d: FloatArray, s: BoolArray, thresholds: FloatArray
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Accepted (same, different) pair counts at each threshold (``distance <= t``)."""
    same_sorted = np.sort(d[s])
    diff_sorted = np.sort(d[~s])
    accepted_same = np.searchsorted(same_sorted, thresholds, side="right")
    accepted_diff = np.searchsorted(diff_sorted, thresholds, side="right")
    return accepted_same, accepted_diff


def roc(distances: ArrayLike, same: ArrayLike) -> Roc:
    """The ROC curve of ``distances`` with ground truth ``same`` (True = same person)."""
    d, s = _check_pairs(distances, same)
    thresholds = np.concatenate(([-np.inf], np.unique(d)))
    accepted_same, accepted_diff = _accept_counts(d, s, thresholds)
    return Roc(
        far=accepted_diff / float((~s).sum()),
        tar=accepted_same / float(s.sum()),
        thresholds=thresholds,
    )


def _as_roc(roc_or_distances: Roc | ArrayLike, same: ArrayLike | None) -> Roc:
    """Accept either a :class:`Roc` or ``(distances, same)``."""
    if isinstance(roc_or_distances, Roc):
        if same is not None:
            raise ValueError("pass either a Roc or (distances, same), not both")
        return roc_or_distances
    if same is None:
        raise ValueError("same is required when distances are given")
    return roc(roc_or_distances, same)


def eer(roc_or_distances: Roc | ArrayLike, same: ArrayLike | None = None) -> tuple[float, float]:
    """Equal error rate and its threshold: ``eer(roc)`` or ``eer(distances, same)``.

    Along the ROC, ``FAR - FRR`` rises from -1 to +1. If an operating point has FAR == FRR
    exactly, that point is returned. Otherwise the first point where ``FAR > FRR`` and the point
    before it are joined by a straight line in (FAR, FRR) space, and the EER is where that line
    crosses ``FAR == FRR`` (the usual convex-hull-segment interpolation: the rate reachable by
    randomly mixing the two thresholds). The returned threshold is interpolated linearly between
    the two thresholds with the same weight; when the lower point is the reject-all point
    (threshold ``-inf``), the upper point's threshold is returned.
    """
    curve = _as_roc(roc_or_distances, same)
    gap = curve.far - curve.frr
    hi = int(np.argmax(gap >= 0.0))  # gap[-1] == 1, so a crossing always exists
    if gap[hi] == 0.0:
        return float(curve.far[hi]), float(curve.thresholds[hi])
    lo = hi - 1
    w = -gap[lo] / (gap[hi] - gap[lo])  # in (0, 1]
    rate = curve.far[lo] + w * (curve.far[hi] - curve.far[lo])
    t_lo, t_hi = curve.thresholds[lo], curve.thresholds[hi]
    threshold = t_hi if math.isinf(t_lo) else t_lo + w * (t_hi - t_lo)
    return float(rate), float(threshold)


def tar_at_far(distances: ArrayLike, same: ArrayLike, far: float) -> tuple[float, float]:
    """The highest TAR of an operating point whose FAR is ``<= far``, with its threshold.

    Only observed operating points are considered (no interpolation between them, which would
    claim a TAR that no single threshold reaches). Among points meeting the FAR target the one
    with the largest threshold is returned. If only the reject-all point qualifies (the closest
    different pair is already too many), the result is ``(0.0, -inf)``.
    """
    if not 0.0 <= far <= 1.0 or math.isnan(far):
        raise ValueError(f"far must be in [0, 1], got {far}")
    curve = roc(distances, same)
    ok = np.flatnonzero(curve.far <= far + 1e-12)
    best = int(ok[-1])  # the reject-all point always qualifies; TAR rises with the threshold
    return float(curve.tar[best]), float(curve.thresholds[best])


# --------------------------------------------------------------------------- accuracy


def accuracy_at(distances: ArrayLike, same: ArrayLike, threshold: float) -> float:
    """Fraction of pairs classified correctly when accepting ``distance <= threshold``."""
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same).astype(bool)
    if d.shape != s.shape or d.ndim != 1 or d.size == 0:
        raise ValueError(f"distances and same must be 1-D of equal, non-zero length: {d.shape}")
    if np.isnan(d).any():
        raise ValueError("distances contain NaN")
    return float(np.mean((d <= threshold) == s))


def best_threshold(distances: ArrayLike, same: ArrayLike) -> float:
    """The threshold maximising accuracy on these pairs.

    Candidates are the midpoints between neighbouring distinct distances, plus one point below
    the smallest and one above the largest distance (half the nearest gap away, or 1.0 when all
    distances are equal). On ties in accuracy the smallest threshold wins (fewer false accepts).
    """
    d, s = _check_pairs(distances, same)
    values = np.unique(d)
    gap_lo = values[1] - values[0] if values.size > 1 else 2.0
    gap_hi = values[-1] - values[-2] if values.size > 1 else 2.0
    padded = np.concatenate(([values[0] - gap_lo], values, [values[-1] + gap_hi]))
    candidates = (padded[:-1] + padded[1:]) / 2.0
    accepted_same, accepted_diff = _accept_counts(d, s, candidates)
    correct = accepted_same + ((~s).sum() - accepted_diff)
    return float(candidates[int(np.argmax(correct))])


@dataclass(frozen=True)
class FoldResult:
    """Cross-validated accuracy: one accuracy and one (training) threshold per fold."""

    mean: float
    std: float
    accuracies: FloatArray
    thresholds: FloatArray
    folds: tuple[int, ...]

    @property
    def sem(self) -> float:
        """Standard error of the mean accuracy, ``std / sqrt(number of folds)`` (LFW's S_E)."""
        return self.std / math.sqrt(len(self.accuracies))


def kfold_accuracy(distances: ArrayLike, same: ArrayLike, folds: ArrayLike) -> FoldResult:
    """Accuracy under the LFW protocol; ``folds`` gives each pair's fold label.

    For every fold, the threshold is chosen with :func:`best_threshold` on the pairs of all
    *other* folds and the accuracy is measured on that fold alone. ``std`` is the sample
    standard deviation over folds (``ddof=1``, as in the LFW README; 0.0 for one fold).
    """
    d, s = _check_pairs(distances, same)
    labels = np.asarray(folds)
    if labels.shape != d.shape:
        raise ValueError(f"folds must give one label per pair: {labels.shape} vs {d.shape}")
    names = [int(f) for f in np.unique(labels)]
    if len(names) < 2:
        raise ValueError(
            "kfold_accuracy needs at least 2 folds; use accuracy_with_train_threshold for one"
        )
    accuracies, thresholds = [], []
    for fold in names:
        test = labels == fold
        threshold = best_threshold(d[~test], s[~test])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(d[test], s[test], threshold))
    acc = np.asarray(accuracies)
    return FoldResult(
        mean=float(acc.mean()),
        std=float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
        accuracies=acc,
        thresholds=np.asarray(thresholds),
        folds=tuple(names),
    )


def accuracy_with_train_threshold(
    train_distances: ArrayLike,
    train_same: ArrayLike,
    test_distances: ArrayLike,
    test_same: ArrayLike,
) -> tuple[float, float]:
    """``(test accuracy, threshold)`` with the threshold chosen on the training pairs only."""
    threshold = best_threshold(train_distances, train_same)
    d, s = _check_pairs(test_distances, test_same)
    return accuracy_at(d, s, threshold), threshold


# --------------------------------------------------------------------------- open set


@dataclass(frozen=True)
class OpenSetResult:
    """Open-set identification results (rates are fractions in [0, 1]).

    Fields that need strangers (``threshold_at_far``, ``dir_at_far``, ``stranger_rejection``)
    are None when no probe is a stranger; the ``*_at_threshold`` fields are None when no
    explicit threshold was given.
    """

    n_known: int
    n_strangers: int
    rank1: float
    far: float
    threshold_at_far: float | None
    dir_at_far: float | None
    threshold: float | None
    dir_at_threshold: float | None
    stranger_rejection: float | None
    nearest_ids: tuple[Hashable, ...]
    nearest_distances: FloatArray


def _check_embeddings(name: str, x: ArrayLike, ids: Sequence[Hashable]) -> FloatArray:
    """``x`` as a finite ``(N, D)`` float array with one id per row, or ValueError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {arr.shape}")
    if len(ids) != arr.shape[0]:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {len(ids)} ids")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _euclidean(a: FloatArray, b: FloatArray) -> FloatArray:
    """All Euclidean distances between rows of ``a`` and ``b``, via one matrix product."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def _nearest_person(
    dist: FloatArray, gallery_ids: Sequence[Hashable]
) -> tuple[list[Hashable], FloatArray]:
    """Per probe, the nearest person (min over that person's templates) and its distance."""
    people = list(dict.fromkeys(gallery_ids))
    index = {person: i for i, person in enumerate(people)}
    column_person = np.asarray([index[g] for g in gallery_ids])
    order = np.argsort(column_person, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(column_person[order]) != 0])
    per_person = np.minimum.reduceat(dist[:, order], starts, axis=1)  # (P, people)
    best = per_person.argmin(axis=1)
    return [people[i] for i in best], per_person[np.arange(len(best)), best]


def _threshold_for_far(stranger_d: FloatArray, all_d: FloatArray, far: float) -> float:
    """Largest observed nearest distance keeping the stranger false-alarm rate ``<= far``."""
    ranked = np.sort(stranger_d)
    allowed = math.floor(far * ranked.size + 1e-9)
    if allowed >= ranked.size:
        return float(all_d.max())
    below = all_d[all_d < ranked[allowed]]
    return float(below.max()) if below.size else -math.inf


def open_set_identification(
    gallery: ArrayLike,
    gallery_ids: Sequence[Hashable],
    probes: ArrayLike,
    probe_ids: Sequence[Hashable],
    *,
    threshold: float | None = None,
    far: float = 1e-2,
) -> OpenSetResult:
    """Identify each probe against the gallery; probes whose id is not enrolled are strangers.

    * ``rank1``: known probes whose nearest person is themselves (closed set, no threshold).
    * DIR (detection and identification rate) at a threshold ``t``: known probes whose nearest
      person is correct *and* within ``t``, over all known probes.
    * ``threshold_at_far``: the largest observed nearest distance at which at most ``far`` of
      the strangers are within the threshold (no interpolation, so ``dir_at_far`` is exactly
      what that threshold gives on this data; ``-inf`` when no probe can be accepted).
    * ``stranger_rejection``: strangers whose nearest distance is ``> threshold``.
    """
    if not 0.0 <= far <= 1.0 or math.isnan(far):
        raise ValueError(f"far must be in [0, 1], got {far}")
    g = _check_embeddings("gallery", gallery, gallery_ids)
    p = _check_embeddings("probes", probes, probe_ids)
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"gallery has dimension {g.shape[1]} but probes {p.shape[1]}")
    enrolled = set(gallery_ids)
    known = np.asarray([pid in enrolled for pid in probe_ids], dtype=bool)
    if not known.any():
        raise ValueError("no probe belongs to an enrolled person: rank-1 and DIR are undefined")
    nearest_ids, nearest_d = _nearest_person(_euclidean(p, g), gallery_ids)
    correct = np.asarray([a == b for a, b in zip(nearest_ids, probe_ids, strict=True)])
    correct &= known

    def dir_at(t: float) -> float:
        return float((correct & (nearest_d <= t)).sum() / known.sum())

    strangers = nearest_d[~known]
    t_far = _threshold_for_far(strangers, nearest_d, far) if strangers.size else None
    return OpenSetResult(
        n_known=int(known.sum()),
        n_strangers=int(strangers.size),
        rank1=float(correct.sum() / known.sum()),
        far=far,
        threshold_at_far=t_far,
        dir_at_far=None if t_far is None else dir_at(t_far),
        threshold=threshold,
        dir_at_threshold=None if threshold is None else dir_at(threshold),
        stranger_rejection=(
            float((strangers > threshold).mean())
            if threshold is not None and strangers.size
            else None
        ),
        nearest_ids=tuple(nearest_ids),
        nearest_distances=nearest_d,
    )


# --------------------------------------------------------------------------- plotting


def plot_roc(curves: dict[str, Roc], path: str | Path, title: str = "ROC") -> Path:
    """Plot TAR against log-scale FAR (1e-4 to 1), one line per curve; save a PNG at ``path``.

    Uses the Agg canvas directly (no pyplot, no display). Points with FAR below 1e-4 are drawn
    at 1e-4: a TAR reached at a lower FAR is also reached at 1e-4.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    low = 1e-4
    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        ax.plot(np.maximum(curve.far, low), curve.tar, label=name, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlim(low, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
