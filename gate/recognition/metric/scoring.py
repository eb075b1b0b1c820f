"""Scoring an encoder on a labelled folder: every pair (verification) and open-set identification.

Both return a JSON-ready summary with the underlying curve or result, for ``gate eval``,
``gate train``'s validation and ``bench/site_adaptation.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gate.errors import TrainingError

if TYPE_CHECKING:
    from gate.recognition.evaluation import OpenSetResult, Roc


def pair_distances(embeddings: np.ndarray, ids: Sequence[int] | np.ndarray) -> tuple[Any, Any]:
    """Euclidean distances of every unordered pair ``i < j`` and whether it is one person."""
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(ids)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    i, j = np.triu_indices(len(x), 1)
    return np.sqrt(d2[i, j]), labels[i] == labels[j]


def verification(
    embeddings: np.ndarray, ids: Sequence[int] | np.ndarray, threshold: float | None = None
) -> tuple[dict[str, Any], Roc]:
    """ROC, EER and TAR at FAR 1e-2 and 1e-3 over every pair; rates at ``threshold`` if given.

    A TAR at a FAR smaller than ``1 / impostor pairs`` is the TAR with no false accept.
    """
    from gate.recognition.evaluation import eer, roc, tar_at_far

    d, same = pair_distances(embeddings, ids)
    if not same.any() or same.all():
        raise TrainingError("verification needs same-person and different-person pairs")
    curve = roc(d, same)
    rate, at = eer(curve)
    out: dict[str, Any] = {
        "pairs": int(d.size),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "eer": rate,
        "eer_threshold": at,
    }
    for name, far in (("1e-2", 1e-2), ("1e-3", 1e-3)):
        tar, t = tar_at_far(d, same, far)
        out[f"tar_at_far_{name}"] = tar
        out[f"threshold_at_far_{name}"] = t if math.isfinite(t) else None
    if threshold is not None:
        out["threshold"] = threshold
        out["tar_at_threshold"] = float((d[same] <= threshold).mean())
        out["impostor_rejection"] = float((d[~same] > threshold).mean())
    return out, curve


def open_set(
    embeddings: np.ndarray,
    people: Sequence[str],
    gallery: np.ndarray,
    threshold: float,
    far: float = 1e-2,
) -> tuple[dict[str, Any], OpenSetResult]:
    """Open-set identification: the ``gallery`` rows are enrolled, every other row probes.

    A probe whose person has no gallery row is a stranger. Reports rank-1, DIR at ``far``
    false alarms per stranger, and DIR and stranger rejection at ``threshold``.
    """
    from gate.recognition.evaluation import open_set_identification

    gallery = np.asarray(gallery, bool)
    names = np.asarray(people, dtype=object)
    result = open_set_identification(
        embeddings[gallery],
        list(names[gallery]),
        embeddings[~gallery],
        list(names[~gallery]),
        threshold=threshold,
        far=far,
    )
    summary = {
        "enrolled_people": len(set(names[gallery])),
        "gallery_photos": int(gallery.sum()),
        "known_probes": result.n_known,
        "stranger_people": len(set(names[~gallery]) - set(names[gallery])),
        "stranger_probes": result.n_strangers,
        "rank1": result.rank1,
        "far": far,
        "threshold_at_far": result.threshold_at_far,
        "dir_at_far": result.dir_at_far,
        "threshold": threshold,
        "dir_at_threshold": result.dir_at_threshold,
        "stranger_rejection": result.stranger_rejection,
    }
    return summary, result
