"""Adapt an encoder to a site: train an encoder variant, and measure encoders.

:func:`train` takes the encoder to adapt (a :class:`.trainable.TrainableEncoder`: today
``dlib-torch``, built by the caller from the plugins' registry) and a detector. It reads a
folder with one subfolder of photos per person, detects and aligns each face once (a tight
crop where the detector finds nothing is padded by half its size, edges replicated, and tried
again), splits the people (never the photos) into training and validation sets with a fixed
seed, and fits a :class:`.head.ProjectionHead` (and, optionally, the network's last residual
blocks) with a loss from :func:`make_loss` on P x K batches of :class:`DoorCameraAugment`-ed
chips. It keeps the epoch with the best validation score, chooses the match threshold
(:func:`choose_threshold`) and writes the variant file with ``<out>.metrics.json`` and
``<out>.metrics.csv`` beside it. Each of these steps is a function of its own, named in
:func:`train`'s docstring.

The frozen part of the network runs once per chip: before training each photo's clean views
and ``augment_copies`` augmented chips are pushed through it and cached, and every epoch draws
from that cache. The network has no batch norm (dlib's affine layers are fixed), so the
frozen part is exact in eval mode.

Reading the folder is :mod:`.folders`; scoring an encoder on it (``gate eval``,
validation here) is :mod:`gate.recognition.metric.scoring`; the losses offered are
:mod:`.choices`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gate.errors import TrainingError
from gate.recognition.metric.choices import DEFAULT_LOSS_OPTIONS, TRAIN_LOSSES, TRIPLET_MINING
from gate.recognition.metric.folders import Progress, faces_of, person_folders
from gate.recognition.metric.trainable import TrainableEncoder

if TYPE_CHECKING:
    from gate.components import Detector
    from gate.recognition.metric.head import Variant

__all__ = [
    "DEFAULT_LOSS_OPTIONS",
    "NOTHING_LEARNT",
    "THRESHOLD_CONFIDENCE",
    "TRAIN_LOSSES",
    "TRIPLET_MINING",
    "TrainResult",
    "allowed_count",
    "calibration_folds",
    "choose_threshold",
    "cross_fitted_threshold",
    "split_people",
    "train",
    "validation_too_small",
]

logger = logging.getLogger("gate.train")

MONITOR = "eer"
#: Confidence of the lower bound on the base encoder's acceptance that the variant must stay
#: under (:func:`allowed_count`): one-sided 95%, fixed in advance, not fitted to any data.
THRESHOLD_CONFIDENCE = 0.95
THRESHOLD_RULE = (
    "cross-fitted over people, with a margin: the largest threshold (halfway to the next "
    "distance) at which the heads trained without each fold accept, of that fold's photos "
    "taken as strangers and of its impostor pairs, no more than the base encoder at its own "
    "threshold in every fold, and, over all folds together, no more than the one-sided 95% "
    "lower confidence bound (Clopper-Pearson) of the base encoder's count"
)
#: Below these, validation cannot tell epochs apart: the EER moves in steps of about one
#: over the same-person pairs, and which faces are hard depends mostly on who they are.
MIN_VAL_PEOPLE = 5
MIN_VAL_GENUINE_PAIRS = 50
NOTHING_LEARNT = "nothing learnt: the variant is the base encoder with its own threshold"
NOTHING_LEARNT_MLP = (
    "nothing learnt: the variant is the untrained MLP head on the base encoder, with its own "
    "threshold"
)
CSV_COLUMNS = [
    "epoch",
    "train_loss",
    "eer",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "auc",
    "seconds",
    "best",
]


def _binomial_tail(n: int, p: float, k: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, summed exactly in log space."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if p <= 0.0 or k > n:
        return 0.0
    i = np.arange(k - 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i) - np.log(i + 1))])  # j = 0..k-1
    j = np.arange(k, dtype=np.float64)
    below = np.exp(log_comb + j * math.log(p) + (n - j) * math.log1p(-p)).sum()
    return float(max(0.0, 1.0 - below))


def allowed_count(accepted: int, n: int, confidence: float = THRESHOLD_CONFIDENCE) -> int:
    """How many of ``n`` strangers (or impostor pairs) a variant may accept when the base
    encoder accepted ``accepted`` of them: ``floor(n * p_low)``, with ``p_low`` the one-sided
    lower confidence bound (Clopper-Pearson, ``confidence``) of the base's acceptance rate.

    In plain words: the largest count ``a`` such that, were the base's true rate only
    ``a / n``, seeing ``accepted`` or more acceptances would have a chance of at most
    ``1 - confidence``. The gap to ``accepted`` is about what chance alone moves such a count
    by (1.6 standard deviations at 95%), so a variant under it does not merely match the base
    on these faces but beats it by more than their sampling noise. 0 when ``accepted`` is 0,
    and always below ``accepted`` otherwise: 1, 2 or 3 accepted allow none, 4 allow 1 (n
    large), 10 of 90 allow 5.
    """
    if not 0.0 < confidence < 1.0:
        raise TrainingError(f"confidence must be between 0 and 1, got {confidence}")
    if accepted <= 0 or n <= 0:
        return 0
    alpha = 1.0 - confidence
    lo, hi = 0, min(accepted, n)  # the tail grows with a: lo passes, find the last that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _binomial_tail(n, mid / n, accepted) <= alpha:
            lo = mid
        else:
            hi = mid - 1
    return lo


def choose_threshold(
    base: np.ndarray,
    variant: np.ndarray,
    base_threshold: float,
    confidence: float | None = None,
) -> float:
    """The largest threshold at which ``variant`` accepts no more of these distances than
    ``base`` accepts at ``base_threshold`` (the same impostor pairs, or the same strangers'
    nearest distances, measured by both encoders; accepted means ``distance <= threshold``).
    With ``confidence``, no more than :func:`allowed_count` of them: a margin below the base.

    With ``A`` the count the variant may accept, the threshold is halfway between the
    ``(A+1)``-th smallest variant distance and the largest variant distance below it; just
    below the smallest one when ``A == 0``; the largest one when every distance is accepted.
    The result is clipped to ``(0, 2]``, the range of distances between unit vectors.
    """
    base = np.asarray(base, np.float64)
    ranked = np.sort(np.asarray(variant, np.float64))
    if ranked.size == 0:
        raise TrainingError("no impostor distances to choose a threshold on")
    allowed = int((base <= base_threshold).sum())
    if confidence is not None:
        allowed = allowed_count(allowed, base.size, confidence)
    if allowed >= ranked.size:
        t = float(ranked[-1])
    else:
        nxt = ranked[allowed]
        below = ranked[ranked < nxt]
        t = float((below[-1] + nxt) / 2.0) if below.size else float(np.nextafter(nxt, 0.0))
    return float(min(max(t, 1e-6), 2.0))


def cross_fitted_threshold(
    base: Sequence[np.ndarray],
    variant: Sequence[np.ndarray],
    base_threshold: float,
    confidence: float = THRESHOLD_CONFIDENCE,
) -> float:
    """The threshold for one measure from its folds (``base[f]`` and ``variant[f]``: the same
    distances of fold ``f``, measured by the base encoder and by the head that never saw
    fold ``f``): the smallest of

    * per fold, :func:`choose_threshold` without a margin (in no fold may the variant accept
      more than the base), and
    * over all folds pooled, :func:`choose_threshold` with the ``confidence`` margin (over
      the whole folder it must accept fewer, by more than sampling noise, whenever the base
      accepts anything).
    """
    if len(base) != len(variant) or not base:
        raise TrainingError("need the same folds, at least one, for the base and the variant")
    per_fold = [choose_threshold(b, v, base_threshold) for b, v in zip(base, variant, strict=True)]
    pooled = choose_threshold(
        np.concatenate(base), np.concatenate(variant), base_threshold, confidence
    )
    return min(*per_fold, pooled)


# --------------------------------------------------------------------------- training


def split_people(
    people: Sequence[str] | set[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """``(train, validation)`` people: a seeded shuffle, ``round(n * val_fraction)`` (at least
    2) of them held out; both lists sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    names = sorted(people)
    n_val = max(2, round(len(names) * val_fraction))
    if len(names) - n_val < 2:
        raise TrainingError(
            f"{len(names)} people with a face: need at least {n_val + 2} "
            f"({n_val} to validate on, 2 to train on)"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return sorted(set(names) - set(val)), val


@dataclass
class _Photo:
    person: str
    chips: list[np.ndarray]  # RGB views, as the encoder aligns them


@dataclass
class TrainResult:
    """What :func:`train` did and wrote."""

    path: Path
    metrics_json: Path
    metrics_csv: Path
    variant: Variant
    history: list[dict[str, Any]]
    best_epoch: int
    threshold: float
    validation: dict[str, Any]
    data: dict[str, Any]
    timings: dict[str, float]
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: False when no epoch beat the untrained head (epoch 0), which was kept.
    learnt: bool = True
    #: Plain sentences for the user: nothing learnt, validation too small to tell.
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (``gate train --json``)."""
        return {
            "variant": str(self.path),
            "name": self.variant.name,
            "space": self.variant.space,
            "dim": self.variant.dim,
            "threshold": self.threshold,
            "best_epoch": self.best_epoch,
            "learnt": self.learnt,
            "notes": self.notes,
            "epochs": self.history,
            "validation": self.validation,
            "data": self.data,
            "timings": self.timings,
            "metrics_json": str(self.metrics_json),
            "metrics_csv": str(self.metrics_csv),
            "skipped": self.skipped,
        }


def _forward_chips(model: Any, chips: list[np.ndarray], unfrozen: int, device: str) -> Any:
    """The frozen part of the network on RGB chips, as float32 CPU tensors."""
    import torch

    from gate.recognition.metric.head import trunk_forward
    from gate.recognition.nn.dlib_resnet import chips_to_tensor

    with torch.no_grad():  # not inference_mode: these tensors feed training later
        return trunk_forward(model, chips_to_tensor(chips).to(device), unfrozen).float().cpu()


def _mirror(chip: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(chip[:, ::-1])


def _embed(model: Any, head: Any, feats: Any, owner: Any, n: int, unfrozen: int) -> np.ndarray:
    """Per-photo embeddings as the encoder makes them: the mean of the network outputs over
    all views and mirrors, then the head (None: the raw mean, as the base encoder)."""
    import torch

    from gate.recognition.metric.head import tail_forward

    with torch.inference_mode():
        outputs = tail_forward(model, feats, unfrozen).float().cpu() if unfrozen else feats
        mean = torch.zeros(n, outputs.shape[1]).index_add_(0, owner, outputs)
        mean /= torch.bincount(owner, minlength=n).clamp_min(1)[:, None]
        device = next(model.parameters()).device
        return (mean if head is None else head(mean.to(device)).cpu()).numpy()


def _validation_distances(
    embeddings: np.ndarray, ids: np.ndarray, is_val: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair with a validation photo on at least one side (its distance, and whether it
    is one person), and each validation photo's distance to its nearest training photo."""
    x = embeddings.astype(np.float64)
    sq = (x * x).sum(1)
    full = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    i, j = np.triu_indices(len(x), 1)
    keep = is_val[i] | is_val[j]
    i, j = i[keep], j[keep]
    return full[i, j], ids[i] == ids[j], full[np.ix_(is_val, ~is_val)].min(axis=1)


def _validation_metrics(
    d: np.ndarray, same: np.ndarray, nearest: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    from gate.recognition.evaluation import eer, roc, tar_at_far

    curve = roc(d, same)
    out: dict[str, Any] = {
        "tar_at_far_1e-2": tar_at_far(d, same, 1e-2)[0],
        "tar_at_far_1e-3": tar_at_far(d, same, 1e-3)[0],
        "eer": eer(curve)[0],
        "auc": float(np.trapezoid(curve.tar, curve.far)),
    }
    if threshold is not None:
        out |= {
            "threshold": threshold,
            "tar_at_threshold": float((d[same] <= threshold).mean()),
            "impostor_rejection": float((d[~same] > threshold).mean()),
            "stranger_rejection": float((nearest > threshold).mean()),
        }
    return out


def _init_classifier(loss_fn: Any, embeddings: Any, labels: Any) -> None:
    """Start a classification loss's class weights at the class centroids of the untrained
    embeddings (a warm start: its first gradients then refine, not scramble, the space)."""
    import torch
    import torch.nn.functional as F

    n_classes = int(labels.max()) + 1
    sums = torch.zeros(n_classes, embeddings.shape[1]).index_add_(0, labels, embeddings)
    centroids = sums / torch.bincount(labels, minlength=n_classes).clamp_min(1)[:, None]
    with torch.no_grad():
        if hasattr(loss_fn, "weight"):  # ArcFace, CosFace
            loss_fn.weight.copy_(F.normalize(centroids, dim=1))
        if hasattr(loss_fn, "center"):  # CenterSoftmaxLoss
            loss_fn.center.centers.copy_(centroids)
            loss_fn.softmax.fc.weight.copy_(10.0 * F.normalize(centroids, dim=1))
            loss_fn.softmax.fc.bias.zero_()


def _better(row: dict[str, Any], best: dict[str, Any]) -> bool:
    """Lower validation EER; on a tie, a higher TAR at FAR 1e-2, then a higher ROC area.

    (The EER is interpolated, so it moves with small improvements; a TAR at low FAR on a
    few dozen same-person pairs moves in steps too coarse to stop on.)
    """
    if row["eer"] != best["eer"]:
        return row["eer"] < best["eer"]
    if row["tar_at_far_1e-2"] != best["tar_at_far_1e-2"]:
        return row["tar_at_far_1e-2"] > best["tar_at_far_1e-2"]
    return row["auc"] > best["auc"]


def validation_too_small(people: int, genuine_pairs: int, epoch0: Mapping[str, Any]) -> str | None:
    """Why validation on ``people`` people with ``genuine_pairs`` same-person pairs cannot
    tell epochs apart (``epoch0``: the untrained head's row), or None when it can.

    Too few people (:data:`MIN_VAL_PEOPLE`) or same-person pairs
    (:data:`MIN_VAL_GENUINE_PAIRS`), or an EER already 0 at epoch 0: the untrained head
    separates them perfectly and no epoch can beat it.
    """
    if epoch0["eer"] <= 0.0:
        why = "the untrained head already tells them apart perfectly, so no epoch can beat it"
    elif people < MIN_VAL_PEOPLE or genuine_pairs < MIN_VAL_GENUINE_PAIRS:
        why = f"at least {MIN_VAL_PEOPLE} people and {MIN_VAL_GENUINE_PAIRS} pairs are needed"
    else:
        return None
    return (
        f"validation too small to tell: {people} people, {genuine_pairs} same-person pairs "
        f"({why}); add people, or hold out more of them (--val-fraction)"
    )


def calibration_folds(
    people: Sequence[str], val_people: Sequence[str], seed: int
) -> list[list[str]]:
    """Folds of people for the threshold: the validation people first, then the others in
    seeded groups of the same size (a last group of one joins the one before)."""
    rest = sorted(set(people) - set(val_people))
    order = np.random.default_rng([seed, 2]).permutation(len(rest))
    size = max(2, len(val_people))
    groups = [[rest[i] for i in order[j : j + size]] for j in range(0, len(rest), size)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        last = groups.pop()
        groups[-1] += last
    return [sorted(val_people), *(sorted(g) for g in groups)]


def _threshold_of(
    measured: Mapping[str, Sequence[np.ndarray]], folds: Iterable[int], base_threshold: float
) -> tuple[float, list[float]]:
    """:func:`cross_fitted_threshold` of both measures over ``folds`` (the smaller), and each
    fold's own threshold without the margin (for the record)."""
    folds = list(folds)
    per_measure = [
        cross_fitted_threshold(
            [measured[base][f] for f in folds], [measured[var][f] for f in folds], base_threshold
        )
        for base, var in (("bn", "vn"), ("bi", "vi"))
    ]
    fold_thresholds = [
        min(
            choose_threshold(measured["bn"][f], measured["vn"][f], base_threshold),
            choose_threshold(measured["bi"][f], measured["vi"][f], base_threshold),
        )
        for f in folds
    ]
    return min(per_measure), fold_thresholds


def _held_out_check(
    measured: Mapping[str, Sequence[np.ndarray]], base_threshold: float
) -> dict[str, Any]:
    """The rule tried on people it did not see: for each fold, the threshold chosen by the
    same rule from the other folds, and how many of the fold's photos, taken as strangers,
    the base encoder and the variant accept. A warning when, over all folds, the variant
    accepts more of them than the base."""
    folds = range(len(measured["bn"]))
    rows = []
    for f in folds:
        t, _ = _threshold_of(measured, (g for g in folds if g != f), base_threshold)
        rows.append(
            {
                "threshold": t,
                "strangers": int(measured["bn"][f].size),
                "base_accepted": int((measured["bn"][f] <= base_threshold).sum()),
                "variant_accepted": int((measured["vn"][f] <= t).sum()),
            }
        )
    base = sum(row["base_accepted"] for row in rows)
    variant = sum(row["variant_accepted"] for row in rows)
    strangers = sum(row["strangers"] for row in rows)
    warning = None
    if variant > base:
        warning = (
            f"the threshold rule failed its own held-out check: with each fold of people's "
            f"threshold chosen without them, the variant accepted {variant} of their {strangers} "
            f"photos as strangers and the base encoder {base}, so on people it has not seen "
            f"this variant may reject fewer strangers than the base encoder. Measure it with "
            f"'gate eval' on other people before using it, or set a lower "
            f"[recognition] threshold by hand."
        )
    return {
        "strangers": strangers,
        "base_accepted": base,
        "variant_accepted": variant,
        "folds": rows,
        "warning": warning,
    }


@dataclass
class _Fitter:
    """Fits a head (and the network's tail) on the cached outputs of some people's photos."""

    model: Any
    feats: Any  # cached outputs of the frozen part, one row per chip
    entries: list[Any]  # per photo: its rows in feats (clean views and augmented copies)
    ids: np.ndarray  # per photo: person index
    n_blocks: int
    device: str
    loss: str
    options: dict[str, Any]
    head_spec: dict[str, Any]
    lr: float
    weight_decay: float
    p: int
    k: int
    start_tail: dict[str, Any]  # the network's own tail weights

    def fit(
        self,
        train: np.ndarray,
        epochs: int,
        seed: int,
        patience: int | None = None,
        score: Callable[[Any, int, float], dict[str, Any]] | None = None,
        progress: Progress | None = None,
    ) -> tuple[Any, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        """Train on the photos where ``train`` is True for ``epochs`` epochs.

        With ``score`` (``score(head, epoch, train_loss) -> row``) every epoch is scored,
        epoch 0 being the untrained head (its loss measured, nothing learnt), the best kept and
        training stopped after ``patience`` epochs without improvement. Each row's ``seconds``
        is the epoch's wall-clock time, its validation included. Returns the head (best
        weights loaded, the network's tail too), those weights, the history and the batch
        settings.
        """
        import torch

        from gate.recognition.metric.head import ProjectionHead, backbone_state, tail_forward
        from gate.recognition.metric.losses import make_loss
        from gate.recognition.metric.sampler import PKSampler

        torch.manual_seed(seed)
        model, n_blocks, device = self.model, self.n_blocks, self.device
        if n_blocks:
            model.load_state_dict(self.start_tail, strict=False)
        photos = np.flatnonzero(train)
        classes = {person: c for c, person in enumerate(sorted(set(self.ids[photos])))}
        labels = torch.as_tensor([classes[self.ids[i]] for i in photos])
        entries = [self.entries[i] for i in photos]
        head = ProjectionHead.from_spec(self.head_spec)
        if head.hidden is None:  # start at the base geometry of these people's chips
            rows = torch.cat(entries)
            with torch.no_grad():
                head.start_at(tail_forward(model, self.feats[rows].to(device), n_blocks).cpu())
        head = head.to(device)
        loss_fn = make_loss(self.loss, head.out_dim, len(classes), **self.options).to(device)
        tail = [prm for _, prm in self._tail_parameters()]
        for prm in tail:
            prm.requires_grad_(True)
        groups = [{"params": list(head.parameters()), "lr": self.lr}]
        if list(loss_fn.parameters()):
            groups.append({"params": list(loss_fn.parameters()), "lr": 10 * self.lr})
        if tail:
            groups.append({"params": tail, "lr": self.lr / 10})
        optimiser = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        counts = np.bincount(labels.numpy(), minlength=len(classes))
        p = min(self.p, int((counts >= 2).sum()))
        k = min(self.k, max(2, int(np.median(counts))))
        chips = sum(len(e) for e in entries)
        sampler = PKSampler(
            labels.tolist(),
            p=p,
            k=k,
            seed=seed,
            batches_per_epoch=max(1, math.ceil(chips / (p * k))),
        )
        pick = np.random.default_rng([seed, 1])

        def forward(rows: Any) -> Any:
            return head(tail_forward(model, self.feats[rows].to(device), n_blocks))

        if list(loss_fn.parameters()):
            with torch.no_grad():
                first = forward(torch.stack([e[0] for e in entries])).cpu()
            _init_classifier(loss_fn, first, labels)

        def run_epoch(epoch: int, learn: bool) -> float:
            sampler.set_epoch(epoch)
            losses = []
            for batch in sampler:
                rows = torch.stack([entries[i][pick.integers(len(entries[i]))] for i in batch])
                with torch.set_grad_enabled(learn):
                    value = loss_fn(forward(rows), labels[batch].to(device))
                if learn:
                    optimiser.zero_grad(set_to_none=True)
                    value.backward()
                    optimiser.step()
                losses.append(float(value.detach()))
            return float(np.mean(losses))

        def snapshot() -> dict[str, Any]:
            return {
                "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
                "backbone": backbone_state(model, n_blocks),
            }

        def timed(epoch: int, train_loss: float, tick: float) -> dict[str, Any]:
            row = score(head, epoch, train_loss)
            return {**row, "seconds": round(time.perf_counter() - tick, 3)}

        history: list[dict[str, Any]] = []
        if score is not None:
            tick = time.perf_counter()
            history.append(timed(0, run_epoch(0, learn=False), tick))
        best, best_state, stale = (history[0] if history else None), snapshot(), 0
        for epoch in range(1, epochs + 1):
            tick = time.perf_counter()
            train_loss = run_epoch(epoch, learn=True)
            if progress:
                progress("training", epoch, epochs)
            if score is None:
                continue
            row = timed(epoch, train_loss, tick)
            row["best"] = _better(row, best)
            history.append(row)
            if row["best"]:
                best, best_state, stale = row, snapshot(), 0
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    break
        if score is None:
            best_state = snapshot()
        else:
            history[0]["best"] = best["epoch"] == 0
            head.load_state_dict(best_state["head"])
            if n_blocks:
                model.load_state_dict(best_state["backbone"], strict=False)
        for prm in tail:
            prm.requires_grad_(False)
        batches = {"p": p, "k": k, "batches_per_epoch": len(sampler)}
        return head.eval(), best_state, history, batches

    def restore(self) -> None:
        """Put the network's own tail weights back, frozen."""
        if self.n_blocks:
            self.model.load_state_dict(self.start_tail, strict=False)
        for _, prm in self._tail_parameters():
            prm.requires_grad_(False)

    def _tail_parameters(self) -> list[tuple[str, Any]]:
        from gate.recognition.metric.head import tail_blocks

        blocks = tail_blocks(self.n_blocks)
        prefixes = (*(f"blocks.{i}." for i in blocks), "fc.")
        return [
            (k, v) for k, v in self.model.named_parameters() if blocks and k.startswith(prefixes)
        ]


def train(
    data_dir: str | os.PathLike[str],
    loss: str = "triplet",
    epochs: int = 30,
    out: str | os.PathLike[str] = "site",
    *,
    encoder: TrainableEncoder,
    detector: Detector,
    mining: str | None = None,
    loss_options: Mapping[str, Any] | None = None,
    head_dim: int = 128,
    hidden: int | None = None,
    unfreeze_blocks: int = 0,
    seed: int = 0,
    val_fraction: float = 0.25,
    patience: int = 5,
    p: int = 8,
    k: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    augment_copies: int = 6,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a variant of ``encoder`` on ``data_dir`` (one subfolder per person); write it to
    ``out``.

    ``encoder`` is the base encoder to adapt (a :class:`.trainable.TrainableEncoder`, without
    a variant, in float32) and ``detector`` finds the faces; the caller builds both. Training
    changes the encoder's network only while it runs. ``out`` is a variant name (written to
    the data dir's ``encoders/``) or a path. The metrics go beside it as ``.metrics.json``
    (settings, per-epoch history, validation summary) and ``.metrics.csv`` (one row per epoch).

    The steps, each a function below: read the folder and split its people
    (:func:`_read_site`), push every chip through the frozen part of the network once
    (:func:`_cache_chips`), fit the head with early stopping (:func:`_fit_head`), choose the
    threshold on folds of people and check the rule on held-out ones (:func:`_calibrate`),
    summarise validation (:func:`_summarise_validation`), and save the variant with its
    metrics (:func:`_save`).

    * Split: :func:`split_people` with ``seed``; nobody in validation is trained on.
    * Data: every face found is aligned once into the encoder's views (YuNet's landmarks and
      dlib's 5 points by default). Each photo's views and their mirrors, and for a training
      photo ``augment_copies`` augmented chips (a view each, in turn), go through the frozen
      part of the network once and are cached.
    * Batches: :class:`PKSampler`, ``p`` people x ``k`` photos, each photo as a random one of
      its cached chips; an epoch covers about every cached training chip once.
    * Model: :class:`ProjectionHead` ``128 -> head_dim`` (``hidden`` makes it an MLP), plus the
      last ``unfreeze_blocks`` residual blocks and the final linear layer at a tenth of ``lr``.
      A linear head starts at the principal axes of the training chips' descriptors with a
      lift three times their norm (:meth:`ProjectionHead.start_at`): before training it
      keeps the base encoder's geometry. AdamW; classification losses get their class
      weights at ten times ``lr``, started at the class centroids.
    * Loss: ``loss`` from :data:`TRAIN_LOSSES` with :data:`DEFAULT_LOSS_OPTIONS` updated by
      ``loss_options`` (``mining`` for triplet: batch_all, batch_hard, semi_hard).
    * Validation, after every epoch: every photo is embedded as the encoder does it (views
      and mirrors averaged, then the head), and every pair with a validation photo on at least
      one side is scored (the validation people against each other and against the training
      people's photos). Epoch 0 is the untrained head. The epoch with the lowest EER (ties:
      TAR at FAR 1e-2, then ROC area) is kept, epoch 0 included; training stops after
      ``patience`` epochs without improvement. Each epoch's ``seconds`` is its wall-clock
      time, validation included. When epoch 0 is kept the result says so
      (``learnt`` False, :data:`NOTHING_LEARNT` in ``notes``), and when validation is too
      small to tell epochs apart (:func:`validation_too_small`) ``notes`` says that too.
    * Threshold, cross-fitted over people, with a margin: the validation people are fold 0
      and the other people are dealt into folds of the same size (:func:`calibration_folds`).
      For every other fold a head is trained the same way on everybody outside it, for as
      many epochs as the kept model. Each fold's photos are then strangers to the model that
      never saw them: their distance to the nearest photo of the people it was trained on,
      and their impostor pairs, are measured by that model and by the base encoder at its
      default threshold. For each of the two measures (:func:`cross_fitted_threshold`) the
      variant may accept no more than the base in any fold, and, over all folds together,
      no more than the one-sided 95% lower confidence bound of the base's count
      (:func:`allowed_count`: 10 of 90 strangers accepted by the base allow 5; 3 or fewer
      allow none). The threshold is the largest that meets all of these (halfway to the next
      distance). So on the training folder the variant rejects more strangers than the base
      by more than sampling noise, whenever the base lets any in. Then the rule checks
      itself on people it did not see: each fold is measured at the threshold the rule picks
      from the other folds, and a warning is logged (``gate train`` prints it) when over all
      folds the variant then accepts more of them as strangers than the base.
      (A rule on the validation people alone rests on a handful of faces, and which
      strangers get accepted depends mostly on who they are.)

    Everything is seeded by ``seed`` (split, folds, augmentation, sampler, torch).
    """
    import torch

    from gate import __version__
    from gate.recognition.metric.augment import DoorCameraAugment
    from gate.recognition.metric.head import (
        BASE_DIM,
        ProjectionHead,
        backbone_state,
        tail_blocks,
        variant_path,
    )

    started = time.perf_counter()
    name, options = _loss_settings(loss, mining, loss_options)
    if epochs < 1 or patience < 1 or augment_copies < 0 or p < 2 or k < 2 or head_dim < 1:
        raise TrainingError("need epochs, patience, head_dim >= 1, augment_copies >= 0, p, k >= 2")
    try:
        blocks = tail_blocks(unfreeze_blocks)
        head_spec = ProjectionHead(BASE_DIM, head_dim, hidden).spec()
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    _check_encoder(encoder)
    n_blocks = len(blocks)
    target = variant_path(out)
    model = encoder.model

    torch.manual_seed(seed)
    site = _read_site(data_dir, detector, encoder, val_fraction, seed, progress)
    faces_done = time.perf_counter()
    augment = DoorCameraAugment(seed=seed)
    cache = _cache_chips(site, encoder, n_blocks, augment, augment_copies, progress)
    cached = time.perf_counter()
    base_vectors = cache.embed(None)  # the base encoder, as it is
    base_threshold = float(encoder.threshold)
    fitter = _Fitter(
        model=model,
        feats=cache.feats,
        entries=cache.entries(),
        ids=site.ids,
        n_blocks=n_blocks,
        device=encoder.device,
        loss=name,
        options=options,
        head_spec=head_spec,
        lr=lr,
        weight_decay=weight_decay,
        p=p,
        k=k,
        start_tail=backbone_state(model, n_blocks),
    )
    try:
        # tiny batches of 128-d vectors: more threads only add synchronisation
        with _torch_threads(None if n_blocks else 1):
            fitted = _fit_head(fitter, cache, site, epochs, seed, patience, progress)
            trained = time.perf_counter()
            threshold = _calibrate(fitter, fitted, cache, site, base_vectors, seed, base_threshold)
        calibrated = time.perf_counter()
        validation, notes = _summarise_validation(
            cache, site, fitted, threshold, base_vectors, base_threshold, hidden
        )
    finally:  # the encoder's network as it was given, even when training fails
        fitter.restore()
    data = site.summary()
    training = {
        "epochs": epochs,
        "epochs_run": len(fitted.history) - 1,
        "best_epoch": fitted.best_epoch,
        "learnt": fitted.learnt,
        "patience": patience,
        "monitor": MONITOR,
        "seed": seed,
        "val_fraction": val_fraction,
        **fitted.batches,
        "optimizer": "AdamW",
        "lr": lr,
        "weight_decay": weight_decay,
        "augment": {"copies": augment_copies, "probabilities": augment.probabilities},
        "views": encoder.views,
        "unfreeze_blocks": n_blocks,
        "device": str(encoder.device),
        "torch": str(torch.__version__),
        "gate": __version__,
    }
    timings = {
        "faces_s": round(faces_done - started, 3),
        "cache_s": round(cached - faces_done, 3),
        "train_s": round(trained - cached, 3),
        "calibrate_s": round(calibrated - trained, 3),
    }
    timings["total_s"] = round(time.perf_counter() - started, 3)
    variant, metrics_json, metrics_csv = _save(
        target,
        loss={"name": name, "options": options},
        head_spec=head_spec,
        blocks=blocks,
        fitted=fitted,
        threshold=threshold.value,
        base_threshold=base_threshold,
        training=training,
        data=data,
        validation=validation,
        timings=timings,
        notes=notes,
        skipped=site.skipped,
    )
    return TrainResult(
        path=target,
        metrics_json=metrics_json,
        metrics_csv=metrics_csv,
        variant=variant,
        history=fitted.history,
        best_epoch=fitted.best_epoch,
        threshold=threshold.value,
        validation=validation,
        data=data,
        timings=timings,
        skipped=site.skipped,
        learnt=fitted.learnt,
        notes=notes,
    )


# --------------------------------------------------------------------------- train's steps


def _loss_settings(
    loss: str, mining: str | None, loss_options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The loss's name and its options: the defaults, then ``mining`` and ``loss_options``."""
    name = loss.strip().lower()
    if name not in DEFAULT_LOSS_OPTIONS:
        raise TrainingError(f"unknown loss {loss!r}; choose one of {', '.join(TRAIN_LOSSES)}")
    options = dict(DEFAULT_LOSS_OPTIONS[name])
    if mining is not None:
        if name != "triplet":
            raise TrainingError("mining applies to the triplet loss only")
        if mining not in TRIPLET_MINING:
            raise TrainingError(f"unknown mining {mining!r}: {', '.join(TRIPLET_MINING)}")
        options["mining"] = mining
    options.update(loss_options or {})
    return name, options


def _check_encoder(encoder: Any) -> None:
    """Refuse an encoder training cannot start from: not trainable, running a variant (or
    another network than the one variants adapt), or not in float32."""
    import torch

    from gate.recognition.metric.head import BASE_DIM, BASE_SPACE

    label = getattr(encoder, "name", type(encoder).__name__)
    if not isinstance(encoder, TrainableEncoder):
        raise TrainingError(f"encoder {label!r} cannot be trained: it has no network to adapt")
    if (encoder.space, encoder.dim) != (BASE_SPACE, BASE_DIM):
        raise TrainingError(
            f"encoder {label!r} runs space {encoder.space!r} ({encoder.dim}-d): training "
            f"starts from the base network, {BASE_SPACE!r} ({BASE_DIM}-d), without a variant"
        )
    if next(encoder.model.parameters()).dtype != torch.float32:
        raise TrainingError(f"encoder {label!r}: training needs its network in float32 (fp32)")


@dataclass
class _Site:
    """A training folder's faces, as the encoder's chips, and its people split."""

    photos: list[_Photo]
    skipped: list[dict[str, str]]
    padded: int  # photos whose face was found only once padded
    everyone: list[str]
    train_people: list[str]
    val_people: list[str]
    folds: list[list[str]]  # calibration folds of people; fold 0 is the validation people
    ids: np.ndarray  # per photo: its person's index in ``everyone``
    fold_masks: list[np.ndarray]  # per fold: which photos are its people's

    @property
    def is_val(self) -> np.ndarray:
        """Per photo: whether its person is held out for validation."""
        return self.fold_masks[0]

    def summary(self) -> dict[str, int]:
        """How many people and photos, trained and validated on, skipped and padded."""
        return {
            "people": len(self.everyone),
            "photos": len(self.photos),
            "train_people": len(self.train_people),
            "train_photos": int((~self.is_val).sum()),
            "val_people": len(self.val_people),
            "val_photos": int(self.is_val.sum()),
            "skipped_photos": len(self.skipped),
            "padded_photos": self.padded,
        }


def _read_site(
    data_dir: str | os.PathLike[str],
    detector: Detector,
    encoder: TrainableEncoder,
    val_fraction: float,
    seed: int,
    progress: Progress | None,
) -> _Site:
    """Read the folder: every photo's face aligned once into the encoder's views, and the
    people split (seeded) into training and validation, and into calibration folds."""
    skipped: list[dict[str, str]] = []
    photos: list[_Photo] = []
    padded = 0
    for person, _path, image, face, was_padded in faces_of(
        person_folders(data_dir, skipped), detector, progress, skipped
    ):
        photos.append(_Photo(person, encoder.face_chips(image, face)))
        padded += was_padded
    everyone = sorted({ph.person for ph in photos})
    train_people, val_people = split_people(everyone, val_fraction, seed)
    folds = calibration_folds(everyone, val_people, seed)
    index = {person: i for i, person in enumerate(everyone)}
    ids = np.asarray([index[ph.person] for ph in photos])
    fold_masks = [np.isin(ids, [index[person] for person in fold]) for fold in folds]
    is_val = fold_masks[0]
    if len(set(ids[is_val])) == is_val.sum():
        raise TrainingError("the validation people need at least 2 photos each to form pairs")
    for mask in fold_masks:
        if (np.bincount(ids[~mask]) >= 2).sum() < 2:
            raise TrainingError("need at least 2 training people with 2 or more photos each")
    return _Site(
        photos, skipped, padded, everyone, train_people, val_people, folds, ids, fold_masks
    )


@dataclass
class _Cache:
    """The frozen part of the network's output for every chip, computed once."""

    model: Any
    n_blocks: int
    n_photos: int
    feats: Any  # one row per chip: the clean views and mirrors, and the augmented copies
    owner: Any  # per row: its photo
    clean_feats: Any  # the rows of the clean views and their mirrors (no augmented copy)
    clean_owner: Any  # per clean row: its photo

    def entries(self) -> list[Any]:
        """Per photo: its rows in ``feats``."""
        import torch

        return [torch.nonzero(self.owner == i).flatten() for i in range(self.n_photos)]

    def embed(self, head: Any) -> np.ndarray:
        """Per-photo embeddings from the clean rows, as the encoder makes them (head None:
        the base encoder)."""
        return _embed(
            self.model, head, self.clean_feats, self.clean_owner, self.n_photos, self.n_blocks
        )


def _cache_chips(
    site: _Site,
    encoder: TrainableEncoder,
    n_blocks: int,
    augment: Callable[[np.ndarray], np.ndarray],
    augment_copies: int,
    progress: Progress | None,
) -> _Cache:
    """Push each photo's views (and their mirrors when the encoder flips) and
    ``augment_copies`` augmented chips through the frozen part of the network, in batches."""
    import torch

    flip = encoder.flip

    def chips() -> Iterator[tuple[int, bool, np.ndarray]]:
        for number, photo in enumerate(site.photos):
            for chip in photo.chips:
                yield number, True, chip
                if flip:
                    yield number, True, _mirror(chip)
            for c in range(augment_copies):
                bgr = np.ascontiguousarray(photo.chips[c % len(photo.chips)][:, :, ::-1])
                yield number, False, np.ascontiguousarray(augment(bgr)[:, :, ::-1])

    total = sum(len(ph.chips) * (1 + flip) + augment_copies for ph in site.photos)
    parts, owner, clean, pending = [], [], [], []
    for item in chips():
        pending.append(item)
        if len(pending) == encoder.batch_size or len(owner) + len(pending) == total:
            chunk = [c for _, _, c in pending]
            parts.append(_forward_chips(encoder.model, chunk, n_blocks, encoder.device))
            owner += [number for number, _, _ in pending]
            clean += [is_clean for _, is_clean, _ in pending]
            pending.clear()
            if progress:
                progress("encoding", len(owner), total)
    feats = torch.cat(parts)
    del parts
    owner_t, clean_t = torch.as_tensor(owner), torch.as_tensor(clean)
    return _Cache(
        model=encoder.model,
        n_blocks=n_blocks,
        n_photos=len(site.photos),
        feats=feats,
        owner=owner_t,
        clean_feats=feats[clean_t],
        clean_owner=owner_t[clean_t],
    )


@dataclass
class _Fitted:
    """The kept head, its weights (and the network tail's), the epochs and the batches."""

    head: Any
    best_state: dict[str, Any]
    history: list[dict[str, Any]]
    batches: dict[str, Any]

    @property
    def best_epoch(self) -> int:
        """The kept epoch (0: the untrained head)."""
        return _best_epoch(self.history)

    @property
    def learnt(self) -> bool:
        """Whether an epoch beat the untrained head."""
        return self.best_epoch > 0


def _fit_head(
    fitter: _Fitter,
    cache: _Cache,
    site: _Site,
    epochs: int,
    seed: int,
    patience: int,
    progress: Progress | None,
) -> _Fitted:
    """Fit the head on the training people, scoring every epoch on validation, keeping the
    best and stopping after ``patience`` epochs without improvement."""

    def score(head: Any, epoch: int, train_loss: float) -> dict[str, Any]:
        distances = _validation_distances(cache.embed(head), site.ids, site.is_val)
        return {"epoch": epoch, "train_loss": train_loss, **_validation_metrics(*distances)}

    head, best_state, history, batches = fitter.fit(
        ~site.is_val, epochs, seed, patience, score, progress
    )
    return _Fitted(head, best_state, history, batches)


@dataclass
class _Threshold:
    """The variant's threshold, each fold's own, the held-out check and what they rest on."""

    value: float
    fold_thresholds: list[float]
    held_out: dict[str, Any]
    #: per measure (``b``/``v``: base/variant, ``i``/``n``: impostor pairs/nearest distance
    #: of strangers), per fold: the distances
    measured: dict[str, list[np.ndarray]]

    def pooled(self, key: str) -> np.ndarray:
        """One measure over every fold."""
        return np.concatenate(self.measured[key])


def _calibrate(
    fitter: _Fitter,
    fitted: _Fitted,
    cache: _Cache,
    site: _Site,
    base_vectors: np.ndarray,
    seed: int,
    base_threshold: float,
) -> _Threshold:
    """Measure every fold of people as strangers to a head that never saw them (the kept
    head for fold 0, one fitted for as many epochs without each other fold) and to the base
    encoder, then choose the threshold (:func:`_threshold_from_folds`). The network's tail
    is left as the kept model has it."""
    measured: dict[str, list[np.ndarray]] = {key: [] for key in ("bi", "vi", "bn", "vn")}
    for number, mask in enumerate(site.fold_masks):
        if number == 0:
            fold_head = fitted.head
        else:
            fold_head = fitter.fit(~mask, fitted.best_epoch, seed + number)[0]
        d, same, nearest = _validation_distances(cache.embed(fold_head), site.ids, mask)
        base_d, _, base_nearest = _validation_distances(base_vectors, site.ids, mask)
        for key, values in (
            ("vi", d[~same]),
            ("bi", base_d[~same]),
            ("vn", nearest),
            ("bn", base_nearest),
        ):
            measured[key].append(values)
    if fitter.n_blocks:  # the fold models changed the network's tail: put the kept one back
        fitter.model.load_state_dict(fitted.best_state["backbone"], strict=False)
    return _threshold_from_folds(measured, base_threshold)


def _threshold_from_folds(
    measured: dict[str, list[np.ndarray]], base_threshold: float
) -> _Threshold:
    """The threshold over all folds (:func:`_threshold_of`) and the rule's own check on
    held-out folds (:func:`_held_out_check`), whose warning is logged."""
    value, fold_thresholds = _threshold_of(measured, range(len(measured["bn"])), base_threshold)
    held_out = _held_out_check(measured, base_threshold)
    if held_out["warning"]:
        logger.warning("%s", held_out["warning"])
    return _Threshold(value, fold_thresholds, held_out, measured)


def _summarise_validation(
    cache: _Cache,
    site: _Site,
    fitted: _Fitted,
    threshold: _Threshold,
    base_vectors: np.ndarray,
    base_threshold: float,
    hidden: int | None,
) -> tuple[dict[str, Any], list[str]]:
    """The validation people scored by the base encoder and the variant, the calibration's
    figures, and the notes for the user (nothing learnt, validation too small)."""
    t = threshold.value
    val_d, val_same, val_nearest = _validation_distances(
        cache.embed(fitted.head), site.ids, site.is_val
    )
    base_d, _, base_nearest = _validation_distances(base_vectors, site.ids, site.is_val)
    notes = [] if fitted.learnt else [NOTHING_LEARNT if hidden is None else NOTHING_LEARNT_MLP]
    too_small = validation_too_small(len(site.val_people), int(val_same.sum()), fitted.history[0])
    if too_small:
        notes.insert(0, too_small)
    bi, vi, bn, vn = (threshold.pooled(key) for key in ("bi", "vi", "bn", "vn"))
    held_out = threshold.held_out
    validation = {
        "too_small": too_small,
        "people": len(site.val_people),
        "photos": int(site.is_val.sum()),
        "genuine_pairs": int(val_same.sum()),
        "impostor_pairs": int((~val_same).sum()),
        "base": _validation_metrics(base_d, val_same, base_nearest, base_threshold),
        "variant": _validation_metrics(val_d, val_same, val_nearest, t),
        "calibration": {
            "folds": len(site.folds),
            "fold_thresholds": threshold.fold_thresholds,
            "strangers": int(bn.size),
            "impostor_pairs": int(bi.size),
            "base_stranger_rejection": float((bn > base_threshold).mean()),
            "variant_stranger_rejection": float((vn > t).mean()),
            "base_impostor_rejection": float((bi > base_threshold).mean()),
            "variant_impostor_rejection": float((vi > t).mean()),
            "confidence": THRESHOLD_CONFIDENCE,
            "base_strangers_accepted": int((bn <= base_threshold).sum()),
            "strangers_allowed": allowed_count(int((bn <= base_threshold).sum()), bn.size),
            "variant_strangers_accepted": int((vn <= t).sum()),
            "held_out": held_out,
            "warning": held_out["warning"],
        },
        "threshold_rule": THRESHOLD_RULE,
    }
    return validation, notes


def _save(
    target: Path,
    *,
    loss: dict[str, Any],
    head_spec: dict[str, Any],
    blocks: list[int],
    fitted: _Fitted,
    threshold: float,
    base_threshold: float,
    training: dict[str, Any],
    data: dict[str, Any],
    validation: dict[str, Any],
    timings: dict[str, float],
    notes: list[str],
    skipped: list[dict[str, str]],
) -> tuple[Variant, Path, Path]:
    """Write the variant file and, beside it, ``.metrics.json`` and ``.metrics.csv``; the
    variant as loaded back and the two paths."""
    from gate.recognition.metric.head import (
        BASE_DIM,
        BASE_ENCODER,
        BASE_SPACE,
        VARIANT_FORMAT,
        load_variant,
        save_variant,
    )

    history = fitted.history
    record = {
        "format": VARIANT_FORMAT,
        "base": {"encoder": BASE_ENCODER, "space": BASE_SPACE, "dim": BASE_DIM},
        "head": {**head_spec, "state_dict": fitted.best_state["head"]},
        "backbone": {"blocks": blocks, "fused": True, "state_dict": fitted.best_state["backbone"]},
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "base_threshold": base_threshold,
        "loss": loss,
        "training": training,
        "data": data,
        "metrics": {"validation": validation, "history": history, "timings": timings},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_variant(record, target)
    variant = load_variant(target)
    stem = target.name[: -len(".pt")] if target.name.endswith(".pt") else target.name
    metrics_json = target.with_name(f"{stem}.metrics.json")
    metrics_csv = target.with_name(f"{stem}.metrics.csv")
    report = {
        "variant": str(target),
        "space": variant.space,
        "sha256": variant.sha256,
        "threshold": threshold,
        "learnt": fitted.learnt,
        "notes": notes,
        "loss": loss,
        "head": head_spec,
        "training": training,
        "data": data,
        "validation": validation,
        "timings": timings,
        "history": history,
        "skipped": skipped,
    }
    metrics_json.write_text(json.dumps(report, indent=2) + "\n")
    with metrics_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    return variant, metrics_json, metrics_csv


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: as set), then restore the setting."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _best_epoch(history: list[dict[str, Any]]) -> int:
    """The last epoch marked best (each best beats every earlier one)."""
    return max(row["epoch"] for row in history if row["best"])
