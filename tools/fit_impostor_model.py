"""Fit the impostor model that turns a stated stranger acceptance into a distance.

Reads the embedding cache of ``bench/embed_sets.py`` (LFW View 1 in each image
condition) and keeps the *fit* half of View 1's people (:func:`lfw_half`); the
other half is held out for ``bench/open_set.py``. For each rule of scoring a
person (``nearest`` template or the ``mean`` of their templates), each
condition and each number of templates ``k`` it measures ``F_k(t)``, the share
of (stranger photo, enrolled person) pairs in which the stranger comes within
``t`` of the person, and the genuine share (a person's other photos within
``t``). The curves are the 99% upper bound of ``F_k`` over the people
resampled on both sides (a few enrolled people draw most strangers and a few
strangers come close to many, so other people can do worse than the ones
measured). The far tail, where few pairs fall, continues straight in
``log10 F`` (an exponential tail, heavier than a Gaussian one) below the data.

Conditions: ``colour`` and ``grey`` are View 1 as it is and without colour;
``colour-small`` and ``grey-small`` are the ``colour-far``/``grey-far`` copies
(faces of about 52 px, blurred a little and JPEG-compressed).

    python tools/fit_impostor_model.py [--cache .cache/embeddings] \
        [--out plugins/models/impostors-dlib-resnet-v1.json]
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np

from gate.recognition.calibration import (
    MAX_K,
    RULES,
    SITE_QUANTILE,
    ConditionModel,
    ImpostorModel,
    normalise,
    pairwise,
    person_means,
    save_models,
)

GRID = np.round(np.arange(0.20, 0.8001, 0.0025), 4)
#: which cached set stands for each condition
SOURCES = {"colour": "colour", "grey": "grey", "colour-small": "colour-far",
           "grey-small": "grey-far"}  # fmt: skip
FITTED_ON = "LFW View 1, fit half of the people (crc32(name) even)"
#: embeddings are matched at this length: about dlib's typical one (median 1.42 on View 1),
#: so distances keep dlib's familiar scale
RADIUS = 1.414
#: fewer pairs than this below a grid point: the tail fit takes over
RELIABLE = 40
#: the confidence of the upper bound on F (one-sided)
LEVEL = 0.99


def lfw_half(name: str) -> str:
    """``fit`` or ``test``: a fixed split of LFW's people by a hash of the name."""
    return "fit" if zlib.crc32(name.encode()) % 2 == 0 else "test"


def load(cache: Path, condition: str, half: str | None = None):
    """The cached embeddings (scaled to :data:`RADIUS`, as gate matches them) and labels."""
    data = np.load(cache / f"lfw-{condition}.npz")
    labels = data["label"]
    keep = np.ones(len(labels), bool) if half is None else np.array(
        [lfw_half(n) == half for n in labels])  # fmt: skip
    return normalise(data["embedding"][keep], RADIUS).astype(np.float64), labels[keep]


def scores_to(emb, d, pick, rule):
    """Every face's score against one person enrolled with the faces ``pick``."""
    if rule == "nearest" or len(pick) == 1:
        return d[:, pick].min(axis=1)
    centre = person_means(emb[pick], np.array([0]))[0]
    return np.sqrt(((emb - centre) ** 2).sum(axis=1))


def impostor_counts(emb, d, labels, k, rng, rounds, rule):
    """Counts of strangers' nearest distances below each grid point, and totals.

    Returned twice: per enrolled person (rows of the gallery side) and per
    stranger (rows of the probe side, grouped by the stranger's identity).
    """
    people = {}
    for i, name in enumerate(labels):
        people.setdefault(name, []).append(i)
    names = [n for n, idx in people.items() if len(idx) >= k]
    below = np.zeros((len(names), len(GRID)))
    totals = np.zeros(len(names))
    probe_hist = np.zeros((len(labels), len(GRID) + 1))
    probe_totals = np.zeros(len(labels))
    everyone = np.arange(len(labels))
    for _ in range(rounds):
        for row, name in enumerate(names):
            pick = rng.choice(people[name], k, replace=False)
            others = labels != name
            nearest = scores_to(emb, d, pick, rule)[others]
            below[row] += np.searchsorted(np.sort(nearest), GRID, side="right")
            totals[row] += len(nearest)
            np.add.at(probe_hist, (everyone[others], np.searchsorted(GRID, nearest)), 1)
            probe_totals[others] += 1
    # per stranger identity: summed over their photos
    owners = {name: i for i, name in enumerate(people)}
    rows = np.array([owners[n] for n in labels])
    by_stranger = np.zeros((len(people), len(GRID)))
    np.add.at(by_stranger, rows, np.cumsum(probe_hist, axis=1)[:, :-1])
    stranger_totals = np.bincount(rows, weights=probe_totals, minlength=len(people))
    return (below, totals), (by_stranger, stranger_totals)


def upper_bound(sides, rng, draws: int = 400) -> np.ndarray:
    """The upper bound (at :data:`LEVEL`) of F(t) when other people stand on either side.

    A few enrolled people draw most strangers, and a few strangers come close
    to many people, so other people can give a larger F than the ones measured.
    Each side is resampled by person (bootstrap); the two log-ratios to the
    estimate are combined as independent errors.
    """
    (below, totals), _ = sides
    estimate = np.maximum(below.sum(axis=0) / totals.sum(), 1e-12)
    log_ratio_sq = np.zeros_like(estimate)
    for counts, weights in sides:
        n = len(weights)
        boot = np.empty((draws, counts.shape[1]))
        for b in range(draws):
            pick = rng.integers(0, n, n)
            boot[b] = counts[pick].sum(axis=0) / weights[pick].sum()
        upper = np.maximum(np.quantile(boot, LEVEL, axis=0), estimate)
        log_ratio_sq += np.log(upper / estimate) ** 2
    return estimate * np.exp(np.sqrt(log_ratio_sq))


def genuine_share(emb, d, labels, k, rng, rule, rounds=5):
    people = {}
    for i, name in enumerate(labels):
        people.setdefault(name, []).append(i)
    scores = []
    for _ in range(rounds):
        for idx in people.values():
            if len(idx) < k + 1:
                continue
            idx = rng.permutation(idx)
            gallery, probes = idx[:k], idx[k:]
            scores.extend(scores_to(emb, d, gallery, rule)[probes])
    scores = np.sort(np.asarray(scores))
    return np.searchsorted(scores, GRID, side="right") / max(1, len(scores)), len(scores)


def smooth_tail(far: np.ndarray, below: np.ndarray) -> np.ndarray:
    """log10 F on the grid: ``far`` where ``below`` (pairs counted) is reliable, a tail below."""
    far = np.maximum(far, 1e-12)
    reliable = below >= RELIABLE
    fit_zone = (below >= 5) & (far <= 3e-2)
    log_far = np.log10(far)
    if fit_zone.sum() >= 5:
        coef = np.polyfit(GRID[fit_zone], log_far[fit_zone], 2, w=np.sqrt(below[fit_zone]))
        fitted = np.polyval(coef, GRID)
        first = int(np.argmax(reliable)) if reliable.any() else len(GRID) - 1
        slope = np.polyval(np.polyder(coef), GRID[first])
        # below the data: straight on from the first reliable point (an exponential tail)
        tail = log_far[first] + max(slope, 1.0) * (GRID - GRID[first])
        log_far = np.where(reliable, log_far, np.where(GRID[first] > GRID, tail, fitted))
    return np.maximum.accumulate(np.minimum(log_far, 0.0))


def fit_condition(cache: Path, source: str, rule: str, rng) -> ConditionModel:
    emb, labels = load(cache, source, "fit")
    d = pairwise(emb)
    log_far, genuine = [], []
    for k in range(1, MAX_K + 1):
        rounds = 1 if k == 1 else 8
        sides = impostor_counts(emb, d, labels, k, rng, rounds, rule)
        below, totals = sides[0]
        total = int(totals.sum())
        log_far.append(smooth_tail(upper_bound(sides, rng), below.sum(axis=0)))
        share, _ = genuine_share(emb, d, labels, k, rng, rule)
        genuine.append(share)
        at_half = 10 ** np.interp(0.5, GRID, log_far[-1])
        print(f"  {rule} {source} k={k}: {total} impostor pairs; F(0.5)={at_half:.2e}"
              f" genuine(0.5)={np.interp(0.5, GRID, share):.3f}")  # fmt: skip
    upper = np.triu(np.ones_like(d, bool), 1) & (labels[:, None] != labels[None, :])
    q = float(np.quantile(d[upper], SITE_QUANTILE))
    # more templates never make a person harder to come close to: F_k grows with k (the
    # people with many photos are fewer and differ, so the raw curves need not)
    log_far = np.maximum.accumulate(np.array(log_far), axis=0)
    return ConditionModel(GRID, log_far, np.array(genuine), q, images=len(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    parser.add_argument(
        "--out", type=Path, default=Path("plugins/models/impostors-dlib-resnet-v1.json")
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    models = []
    for rule in RULES:
        conditions = {name: fit_condition(args.cache, source, rule, rng)
                      for name, source in SOURCES.items()}  # fmt: skip
        models.append(ImpostorModel("dlib-resnet-v1", conditions, FITTED_ON, rule, RADIUS))
    save_models(models, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
