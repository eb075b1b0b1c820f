"""From a stated stranger acceptance to the match distance for the people enrolled now.

Every enrolled person is one more chance for a stranger to come close to
someone, so a fixed distance lets in more strangers as a site grows. gate
states the risk instead: ``[recognition] stranger_acceptance`` is the share of
strangers (per face track, or per photo for ``gate identify``) that may be
named as anyone. An :class:`ImpostorModel`, fitted at development time on
faces of people who are strangers to each other (``tools/fit_impostor_model.py``),
gives for each image condition the chance ``F_k(t)`` that a stranger comes within
``t`` of a person enrolled with ``k`` photos. For a gallery the chance that a
stranger is named as anyone is ``1 - prod_i (1 - F_{k_i}(t))``; the threshold is
the largest ``t`` that keeps it at the stated risk.

The site's own people refine it: everyone enrolled is a stranger to everyone
else, so when the site's cross-person distances run smaller than the model's
(a camera that makes everyone look alike) beyond sampling noise, the threshold
moves down by as much.
It never moves up. The margin rule of the matcher only refuses more strangers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger("gate.calibration")

#: how a matcher scores a person: their nearest template, or the mean of their templates
RULES = ("nearest", "mean")
#: image conditions, from :attr:`gate.recognition.quality.FaceQuality.condition`
CONDITIONS = ("colour", "grey", "colour-small", "grey-small")
#: the largest number of templates per person the model has a curve for
MAX_K = 5
#: site pairs needed before the site's own distances refine the model
MIN_SITE_PAIRS = 50
#: the quantile of cross-person distances compared between site and model
SITE_QUANTILE = 0.05


@dataclass(frozen=True)
class ConditionModel:
    """Impostor and genuine curves of one image condition on a grid of distances."""

    grid: np.ndarray  # distances t
    log_far: np.ndarray  # (MAX_K, len(grid)): log10 F_k(t) for k = 1..MAX_K
    genuine: np.ndarray  # (MAX_K, len(grid)): share of genuine photos within t, k templates
    pair_quantile: float  # SITE_QUANTILE quantile of template-to-template impostor distances
    images: int = 0  # how many faces the curves were fitted on

    def per_person(self, k: int, t: float | np.ndarray) -> np.ndarray:
        """Chance that a stranger comes within ``t`` of one person with ``k`` templates."""
        k = max(1, int(k))
        row = self.log_far[min(k, MAX_K) - 1]
        far = 10.0 ** np.interp(t, self.grid, row, left=row[0] - 6, right=0.0)
        if k > MAX_K:  # no curve: each extra template at most adds its share (union bound)
            far = np.minimum(1.0, far * k / MAX_K)
        return far

    def genuine_share(self, k: int, t: float) -> float:
        """Share of an enrolled person's photos within ``t`` of them (``k`` templates)."""
        row = self.genuine[min(max(1, int(k)), MAX_K) - 1]
        return float(np.interp(t, self.grid, row, left=0.0, right=1.0))


@dataclass(frozen=True)
class ImpostorModel:
    """The per-condition curves of one embedding space, for one rule of scoring a person."""

    space: str
    conditions: dict[str, ConditionModel]
    fitted_on: str = ""
    rule: str = "nearest"
    radius: float | None = None  # embeddings are scaled to this length before matching

    @classmethod
    def load(cls, path: str | Path, rule: str = "nearest") -> ImpostorModel:
        """The curves of ``rule`` from a file written by :func:`save_models`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        grid = np.asarray(data["grid"], np.float64)
        if rule not in data["rules"]:
            raise ValueError(f"{path}: no curves for rule {rule!r} (has {sorted(data['rules'])})")
        conditions = {
            name: ConditionModel(
                grid=grid,
                log_far=np.asarray(c["log_far"], np.float64),
                genuine=np.asarray(c["genuine"], np.float64),
                pair_quantile=float(c["pair_quantile"]),
                images=int(c.get("images", 0)),
            )
            for name, c in data["rules"][rule].items()
        }
        radius = data.get("radius")
        return cls(data["space"], conditions, data.get("fitted_on", ""), rule, radius)

    def condition(self, name: str) -> ConditionModel:
        """The curves of ``name``, falling back on the strictest known condition."""
        if name in self.conditions:
            return self.conditions[name]
        return min(self.conditions.values(), key=lambda c: c.pair_quantile)

    def acceptance(self, condition: str, ks: Sequence[int], t: float) -> float:
        """Chance that one stranger is within ``t`` of anyone of a gallery (``ks`` per person)."""
        if not len(ks) or not np.isfinite(t):
            return 0.0 if not len(ks) else 1.0
        model = self.condition(condition)
        counts = np.bincount(np.asarray(ks, np.int64).clip(1))
        log_keep = 0.0
        for k, n in enumerate(counts):
            if n:
                far = float(model.per_person(k, t))
                log_keep += n * np.log1p(-min(far, 1 - 1e-12))
        return float(-np.expm1(log_keep))

    def threshold(self, condition: str, ks: Sequence[int], risk: float) -> float:
        """The largest distance at which a stranger is named as anyone with at most ``risk``."""
        grid = self.condition(condition).grid
        if not len(ks):
            return float(grid[-1])
        lo, hi = float(grid[0]), float(grid[-1])
        if self.acceptance(condition, ks, lo) > risk:
            return lo
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.acceptance(condition, ks, mid) <= risk:
                lo = mid
            else:
                hi = mid
        return lo


def normalise(embeddings: np.ndarray, radius: float | None) -> np.ndarray:
    """Rows scaled to length ``radius`` (as they are when ``radius`` is None)."""
    x = np.asarray(embeddings, np.float32)
    if radius is None or x.size == 0:
        return x
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x * (radius / np.maximum(norms, 1e-12))).astype(np.float32)


#: up to this many points, neighbours are found exactly (in blocks); beyond, by a graph search
EXACT_NEIGHBOURS_UP_TO = 20_000


def pairwise(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` and of ``b`` (``a`` itself by default)."""
    a = np.asarray(a, np.float64)
    b = a if b is None else np.asarray(b, np.float64)
    sa, sb = (a**2).sum(1), (b**2).sum(1)
    return np.sqrt(np.maximum(sa[:, None] + sb[None, :] - 2 * a @ b.T, 0.0))


def person_means(templates: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each person's mean template, scaled to the mean length of their templates.

    ``templates`` are grouped by person, each group starting at ``starts``.
    Averaging shortens a vector; scaled back, the mean sits among the person's
    templates rather than inside them (the normalised mean).
    """
    templates = np.asarray(templates, np.float64)
    counts = np.diff(np.append(starts, len(templates)))
    sums = np.add.reduceat(templates, starts, axis=0)
    lengths = np.add.reduceat(np.linalg.norm(templates, axis=1), starts) / counts
    norms = np.linalg.norm(sums, axis=1)
    return sums * (lengths / np.maximum(norms, 1e-12))[:, None]


def save_models(models: Sequence[ImpostorModel], path: str | Path) -> None:
    """Write the curves of several rules of one space to one JSON file."""
    grid = next(iter(models[0].conditions.values())).grid
    data = {
        "space": models[0].space,
        "fitted_on": models[0].fitted_on,
        "radius": models[0].radius,
        "grid": [round(float(t), 4) for t in grid],
        "rules": {
            model.rule: {
                name: {
                    "log_far": np.round(c.log_far, 4).tolist(),
                    "genuine": np.round(c.genuine, 4).tolist(),
                    "pair_quantile": round(c.pair_quantile, 4),
                    "images": c.images,
                }
                for name, c in model.conditions.items()
            }
            for model in models
        },
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Calibration:
    """The thresholds in force for one gallery, and what they mean."""

    risk: float | None  # stated stranger acceptance; None when a fixed threshold overrides
    thresholds: dict[str, float]  # per condition
    people: int
    templates: int
    site_shift: dict[str, float] = field(default_factory=dict)
    acceptance: dict[str, float] = field(default_factory=dict)  # estimated, per condition
    genuine: dict[str, float] = field(default_factory=dict)  # estimated share named right
    source: str = "model"  # model, override, or encoder (no model for this space)

    def threshold(self, condition: str) -> float:
        """The distance for faces of ``condition`` (the strictest for an unknown one)."""
        if condition in self.thresholds:
            return self.thresholds[condition]
        return min(self.thresholds.values())

    def report(self, fixed_threshold: float | None) -> dict:
        """What ``gate calibrate --json`` and ``gate doctor`` say of it (``fixed_threshold``:
        ``[recognition] threshold``)."""
        return {
            "source": self.source,
            "stated_stranger_acceptance": self.risk,
            "fixed_threshold": fixed_threshold,
            "people": self.people,
            "templates": self.templates,
            "conditions": self.summary(),
        }

    def summary(self) -> list[dict]:
        """One row per condition, for ``gate calibrate`` and the logs."""
        return [
            {
                "condition": name,
                "threshold": round(self.thresholds[name], 4),
                "site_shift": round(self.site_shift.get(name, 0.0), 4),
                "stranger_acceptance": self.acceptance.get(name),
                "enrolled_accepted": self.genuine.get(name),
            }
            for name in self.thresholds
        ]


#: templates of the site compared with each other to refine the calibration (a sample beyond)
SITE_SAMPLE = 2000


def site_distances(
    embeddings: np.ndarray, person_ids: np.ndarray, limit: int = SITE_SAMPLE
) -> np.ndarray:
    """Distances between templates of different enrolled people (a sample for big sites)."""
    n = len(embeddings)
    if n < 2:
        return np.zeros(0)
    x = np.asarray(embeddings, np.float64)
    ids = np.asarray(person_ids)
    if n > limit:
        pick = np.random.default_rng(0).choice(n, limit, replace=False)
        x, ids = x[pick], ids[pick]
    d = pairwise(x)
    other = ids[:, None] != ids[None, :]
    upper = np.triu(np.ones_like(other), 1)
    return d[other & upper]


def site_quantile_bound(pairs: np.ndarray, q: float = SITE_QUANTILE) -> float:
    """A one-sided 95% upper bound of the ``q`` quantile of the site's distances.

    A small site's quantile is noisy; only a shortfall beyond that noise moves
    the threshold (the order statistic above ``n q`` by 1.645 binomial sd).
    """
    ordered = np.sort(pairs)
    n = len(ordered)
    rank = int(np.ceil(n * q + 1.645 * np.sqrt(n * q * (1 - q))))
    return float(ordered[min(n - 1, rank)])


def calibrate(
    model: ImpostorModel | None,
    embeddings: np.ndarray,
    person_ids: np.ndarray,
    risk: float,
    *,
    override: float | None = None,
    fallback: float = 0.6,
    counts: np.ndarray | None = None,
) -> Calibration:
    """Thresholds for the gallery ``embeddings``/``person_ids`` at ``risk`` per stranger.

    With ``override`` every condition gets that distance (and the estimate of
    what it lets in). Without a model for the encoder's space, the encoder's
    own ``fallback`` distance is used and no risk can be stated. ``counts``
    (templates per person) are given when the embeddings are only a sample of
    the gallery.
    """
    ids = np.asarray(person_ids)
    if counts is not None:
        ks = np.asarray(counts, np.int64)
    elif len(ids):
        ks = np.unique(ids, return_counts=True)[1]
    else:
        ks = np.zeros(0, np.int64)
    people, templates = len(ks), len(ids)
    if model is None:
        t = override if override is not None else fallback
        return Calibration(None, {c: t for c in CONDITIONS}, people, templates, source="encoder")
    pairs = site_distances(embeddings, ids)
    thresholds, shifts, accept, genuine = {}, {}, {}, {}
    mean_k = float(np.mean(ks)) if len(ks) else 1.0
    for name in model.conditions:
        cond = model.conditions[name]
        shift = 0.0
        if len(pairs) >= MIN_SITE_PAIRS:
            shift = min(0.0, site_quantile_bound(pairs) - cond.pair_quantile)
        shifts[name] = shift
        t = override if override is not None else model.threshold(name, ks, risk) + shift
        thresholds[name] = t
        accept[name] = model.acceptance(name, ks, t - shift)
        genuine[name] = cond.genuine_share(round(mean_k), t - shift)
    return Calibration(
        None if override is not None else risk,
        thresholds,
        people,
        templates,
        site_shift=shifts,
        acceptance=accept,
        genuine=genuine,
        source="override" if override is not None else "model",
    )


def nearest_others(
    points: np.ndarray, k: int = 1, exact_up_to: int = EXACT_NEIGHBOURS_UP_TO
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows: distances and indices, both ``(P, k)``.

    Exact, a block of rows at a time (memory stays bounded), up to
    ``exact_up_to`` rows; beyond, a graph search (faiss HNSW), which may miss a
    neighbour now and then. Rows with fewer than ``k`` others get ``inf``/-1.
    """
    x = np.ascontiguousarray(points, np.float32)
    n = len(x)
    dist = np.full((n, k), np.inf)
    index = np.full((n, k), -1, np.int64)
    if n < 2:
        return dist, index
    if n > exact_up_to:
        import faiss  # a large site only: the matcher's dependency

        graph = faiss.IndexHNSWFlat(x.shape[1], 32)
        graph.hnsw.efConstruction = 80
        graph.add(x)
        graph.hnsw.efSearch = max(64, 4 * k)
        found_d, found_i = graph.search(x, k + 1)
        for row in range(n):
            keep = [(d, j) for d, j in zip(found_d[row], found_i[row], strict=True) if j != row]
            for col, (d, j) in enumerate(keep[:k]):
                dist[row, col], index[row, col] = np.sqrt(max(float(d), 0.0)), j
        return dist, index
    squares = (x * x).sum(1)
    take = min(k, n - 1)
    block = max(1, (1 << 24) // n)
    for start in range(0, n, block):
        part = x[start : start + block]
        d2 = squares[start : start + len(part), None] + squares[None, :] - 2.0 * (part @ x.T)
        d2[np.arange(len(part)), np.arange(start, start + len(part))] = np.inf
        order = np.argpartition(d2, take - 1, axis=1)[:, :take]
        nearest = np.take_along_axis(d2, order, axis=1)
        ranked = np.argsort(nearest, axis=1)
        index[start : start + len(part), :take] = np.take_along_axis(order, ranked, axis=1)
        found = np.take_along_axis(nearest, ranked, axis=1)
        dist[start : start + len(part), :take] = np.sqrt(np.maximum(found, 0.0))
    return dist, index


def _means_by_person(embeddings: np.ndarray, person_ids: np.ndarray):
    ids = np.asarray(person_ids)
    people = np.unique(ids)
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], people)
    return people, person_means(np.asarray(embeddings)[order], starts)


def look_alikes(
    embeddings: np.ndarray, person_ids: np.ndarray, threshold: float
) -> list[tuple[int, int, float]]:
    """Pairs of enrolled people with templates within ``threshold`` of each other.

    Such people are refused as ``ambiguous`` more often (the margin rule), and
    a stranger who resembles one may resemble both: photos of them taken by
    the door's camera help. Returns ``(person, other, distance)``, closest first.
    A large gallery is compared by the people's mean templates, each with its
    ten nearest others.
    """
    ids = np.asarray(person_ids)
    if len(np.unique(ids)) < 2:
        return []
    closest: dict[tuple[int, int], float] = {}
    if len(ids) > EXACT_NEIGHBOURS_UP_TO:
        people, means = _means_by_person(embeddings, ids)
        dist, index = nearest_others(means, k=10)
        for row, col in zip(*np.nonzero(dist <= threshold), strict=True):
            p, q = sorted((int(people[row]), int(people[index[row, col]])))
            closest[(p, q)] = min(closest.get((p, q), np.inf), float(dist[row, col]))
    else:
        d = pairwise(embeddings)
        rows, cols = np.nonzero((d <= threshold) & (ids[:, None] < ids[None, :]))
        for i, j in zip(rows, cols, strict=True):
            key = (int(ids[i]), int(ids[j]))
            closest[key] = min(closest.get(key, np.inf), float(d[i, j]))
    return sorted(((p, q, dist) for (p, q), dist in closest.items()), key=lambda r: r[2])


def look_alike_caps(
    embeddings: np.ndarray, person_ids: np.ndarray, margin: float
) -> dict[int, float]:
    """A stricter distance for people who sit close to someone else enrolled.

    A face is never taken for person ``p`` farther from ``p`` (their mean template)
    than ``p``'s nearest other enrolled person is, less the margin: at that distance it
    is as much the other one. The cap binds only for people whose neighbour is
    closer than the calibrated threshold; everyone else keeps the threshold.
    """
    ids = np.asarray(person_ids)
    if len(np.unique(ids)) < 2:
        return {}
    people, means = _means_by_person(embeddings, ids)
    nearest = nearest_others(means, k=1)[0][:, 0]
    return {int(p): float(n - margin) for p, n in zip(people, nearest, strict=True)}
