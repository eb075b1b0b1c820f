"""Losses for learning face embeddings.

Every loss is an ``nn.Module`` whose ``forward(embeddings, labels)`` returns a scalar tensor:

* ``embeddings``: float tensor ``(N, D)``;
* ``labels``: integer tensor ``(N,)`` of identity ids (class indices ``0..num_classes-1`` for the
  classification heads, arbitrary integers for the pair/triplet losses).

Pair/triplet losses (:class:`ContrastiveLoss`, :class:`TripletLoss`) work on the raw embedding
geometry, so they are usually combined with L2-normalised embeddings and identity-balanced
batches (see :class:`.sampler.PKSampler`). Classification heads (:class:`SoftmaxHead`,
:class:`CenterSoftmaxLoss`, :class:`ArcFace`, :class:`CosFace`) own a learnable weight per
identity, take ``num_classes`` at construction, must be handed to the optimiser together with the
backbone, and are thrown away after training (only the embedding is used at the door).

Use :func:`make_loss` to build one by name from configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_NAMES",
    "MINING_STRATEGIES",
    "ArcFace",
    "CenterLoss",
    "CenterSoftmaxLoss",
    "ContrastiveLoss",
    "CosFace",
    "Mining",
    "SoftmaxHead",
    "TripletLoss",
    "make_loss",
    "pairwise_distances",
]

Mining = Literal["batch_all", "batch_hard", "semi_hard"]
MINING_STRATEGIES: tuple[str, ...] = ("batch_all", "batch_hard", "semi_hard")
_Mined = tuple[Tensor, Tensor, int]  # (loss, number active, number considered)


# --------------------------------------------------------------------------- helpers


def _check_batch(embeddings: Tensor, labels: Tensor) -> None:
    """Raise ValueError unless ``embeddings`` is ``(N, D)`` and ``labels`` is ``(N,)``."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N={embeddings.shape[0]}, got shape {tuple(labels.shape)}"
        )


def _zero(embeddings: Tensor) -> Tensor:
    """A scalar zero still attached to the graph (so ``backward()`` works on empty batches)."""
    return embeddings.sum() * 0.0


def _safe_sqrt(sq: Tensor, eps: float) -> Tensor:
    """``sqrt(sq)`` where ``sq > eps``, exactly 0 (with zero gradient) elsewhere."""
    positive = sq > eps
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(sq))


def pairwise_distances(
    x: Tensor, y: Tensor | None = None, *, squared: bool = False, eps: float = 1e-12
) -> Tensor:
    """Euclidean distance matrix ``D[i, j] = ||x_i - y_j||`` (or its square).

    Uses ``||x||^2 + ||y||^2 - 2 <x, y>`` clamped at 0 (O(N*M) memory). With ``y=None`` the
    diagonal is forced to exactly 0. The square root is taken only where ``d^2 > eps``; elsewhere
    the distance is 0 with a zero gradient, so coincident points never give NaN/inf gradients
    (the derivative of ``sqrt`` at 0 is infinite). Half-precision inputs are computed in float32.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    same = y is None
    y = x if y is None else y.to(x.dtype)
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    sq = sq.clamp_min(0.0)
    if same:
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        sq = sq.masked_fill(eye, 0.0)
    return sq if squared else _safe_sqrt(sq, eps)


# --------------------------------------------------------------------------- contrastive


class ContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) without the customary 1/2 factor.

    For a pair at Euclidean distance ``d`` (not squared)::

        L = d^2                      if the pair is the same identity
        L = max(0, margin - d)^2     if the pair is two different identities

    and the result is the mean over pairs. Two ways to call it:

    * ``forward(embeddings, labels)``: every unordered pair ``i < j`` of a labelled batch, mean
      over the ``N (N - 1) / 2`` pairs (0 when ``N < 2``);
    * ``forward_pairs(a, b, same)``: explicit pairs, ``same`` a bool / 0-1 tensor ``(N,)``.
    """

    def __init__(self, margin: float = 1.0, eps: float = 1e-12) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)
        self.eps = float(eps)

    def _loss(self, sq: Tensor, same: Tensor) -> Tensor:
        d = _safe_sqrt(sq, self.eps)
        negative = F.relu(self.margin - d).pow(2)
        return torch.where(same, sq, negative)

    def forward_pairs(self, a: Tensor, b: Tensor, same: Tensor) -> Tensor:
        """Mean loss over explicit pairs ``(a[i], b[i])`` with ``same[i]`` = same identity."""
        if a.shape != b.shape or a.dim() != 2:
            raise ValueError(f"a and b must both be (N, D), got {tuple(a.shape)}, {tuple(b.shape)}")
        if same.shape != (a.shape[0],):
            raise ValueError(f"same must be (N,) with N={a.shape[0]}, got {tuple(same.shape)}")
        if a.shape[0] == 0:
            return _zero(a) + _zero(b)
        diff = a - b
        sq = (diff * diff).sum(1)
        return self._loss(sq, same.bool()).mean()

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean loss over all unordered pairs ``i < j`` of the batch."""
        _check_batch(embeddings, labels)
        n = embeddings.shape[0]
        if n < 2:
            return _zero(embeddings)
        sq = pairwise_distances(embeddings, squared=True)
        i, j = torch.triu_indices(n, n, offset=1, device=embeddings.device)
        return self._loss(sq[i, j], labels[i] == labels[j]).mean()


# --------------------------------------------------------------------------- triplet


class TripletLoss(nn.Module):
    """Triplet margin loss over a labelled batch with online mining (FaceNet; Hermans et al. 2017).

    With Euclidean distances ``d`` (``squared=True`` uses ``d^2`` instead), an anchor ``a``, a
    positive ``p`` (same identity, ``p != a``) and a negative ``n`` (other identity)::

        l(a, p, n) = max(0, d(a, p) - d(a, n) + margin)

    Mining strategies:

    * ``"batch_all"``: every valid triplet; the loss is the **sum over all triplets divided by the
      number of active triplets** (those with ``l > 0``), i.e. the mean over active triplets, so
      easy triplets do not dilute the signal. 0 when no triplet is active. Memory is O(N^3).
    * ``"batch_hard"``: per anchor, the hardest (farthest) positive and the hardest (closest)
      negative: ``max(0, max_p d(a, p) - min_n d(a, n) + margin)``, mean over the anchors that have
      at least one positive and one negative.
    * ``"semi_hard"``: per (anchor, positive) pair, the closest negative that is still farther
      than the positive (``d(a, n) > d(a, p)``); **when no such negative exists it falls back to
      the hardest (closest) negative** of that anchor. Mean over all valid (anchor, positive)
      pairs (anchors without any negative are skipped).

    After every ``forward`` the detached tensor ``last_active_fraction`` holds the fraction of
    considered triplets (``batch_all``), anchors (``batch_hard``) or pairs (``semi_hard``) with a
    positive loss, for logging (call ``.item()`` on it yourself; it is not synchronised here).
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: Mining = "batch_all",
        squared: bool = False,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if mining not in MINING_STRATEGIES:
            raise ValueError(f"unknown mining {mining!r}; known: {', '.join(MINING_STRATEGIES)}")
        self.margin = float(margin)
        self.mining: Mining = mining
        self.squared = squared
        self.eps = float(eps)
        self.last_active_fraction: Tensor = torch.tensor(0.0)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, squared={self.squared}"

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Triplet loss of the batch under the configured mining strategy."""
        _check_batch(embeddings, labels)
        d = pairwise_distances(embeddings, squared=self.squared, eps=self.eps)
        n = embeddings.shape[0]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        if self.mining == "batch_all":
            loss, active, total = self._batch_all(d, pos_mask, neg_mask)
        elif self.mining == "batch_hard":
            loss, active, total = self._batch_hard(d, pos_mask, neg_mask)
        else:
            loss, active, total = self._semi_hard(d, pos_mask, neg_mask)
        self.last_active_fraction = (active.float() / max(total, 1)).detach()
        return loss if total > 0 else _zero(embeddings)

    def _batch_all(self, d: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> _Mined:
        valid = pos_mask[:, :, None] & neg_mask[:, None, :]  # [anchor, positive, negative]
        per = F.relu(d[:, :, None] - d[:, None, :] + self.margin)[valid]
        active = (per > 0).sum()
        return per.sum() / active.clamp_min(1), active, int(valid.sum())

    def _batch_hard(self, d: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> _Mined:
        valid = pos_mask.any(1) & neg_mask.any(1)
        hardest_pos = d.masked_fill(~pos_mask, -math.inf).amax(1)
        hardest_neg = d.masked_fill(~neg_mask, math.inf).amin(1)
        per = F.relu(hardest_pos[valid] - hardest_neg[valid] + self.margin)
        return per.mean() if per.numel() else per.sum(), (per > 0).sum(), int(per.numel())

    def _semi_hard(self, d: Tensor, pos_mask: Tensor, neg_mask: Tensor) -> _Mined:
        d_ap = d[:, :, None]  # [anchor, positive, 1]
        d_an = d[:, None, :]  # [anchor, 1, negative]
        farther = neg_mask[:, None, :] & (d_an > d_ap)
        semi = d_an.masked_fill(~farther, math.inf).amin(2)  # [anchor, positive]
        hardest = d.masked_fill(~neg_mask, math.inf).amin(1, keepdim=True).expand_as(semi)
        chosen = torch.where(farther.any(2), semi, hardest)
        valid = pos_mask & neg_mask.any(1, keepdim=True)
        per = F.relu(d[valid] - chosen[valid] + self.margin)
        return per.mean() if per.numel() else per.sum(), (per > 0).sum(), int(per.numel())


# --------------------------------------------------------------------------- softmax + center


def _check_sizes(dim: int, num_classes: int) -> None:
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


class SoftmaxHead(nn.Module):
    """Plain linear classifier + cross-entropy: ``CE(W x + b, y)``."""

    def __init__(self, dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        _check_sizes(dim, num_classes)
        self.dim = dim
        self.num_classes = num_classes
        self.fc = nn.Linear(dim, num_classes, bias=bias)

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Class logits ``(N, num_classes)``; ``labels`` is accepted for API symmetry and unused."""
        return self.fc(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the batch."""
        _check_batch(embeddings, labels)
        return F.cross_entropy(self.logits(embeddings), labels)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): ``L = 0.5 * mean_i ||x_i - c_{y_i}||^2``.

    The centres ``c`` are an ``nn.Parameter`` of shape ``(num_classes, dim)`` learnt by the
    optimiser through autograd (``dL/dc_j = -(1/N) sum_{i: y_i = j} (x_i - c_j)``), instead of the
    paper's hand-written update with rate ``alpha``; give them their own parameter group if a
    different learning rate is wanted. On its own it collapses every embedding onto one point:
    use it together with a softmax term, e.g. :class:`CenterSoftmaxLoss`.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        _check_sizes(dim, num_classes)
        self.num_classes = num_classes
        self.dim = dim
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``0.5 * mean_i ||x_i - c_{y_i}||^2``."""
        _check_batch(embeddings, labels)
        if embeddings.shape[0] == 0:
            return _zero(embeddings) + _zero(self.centers)
        diff = embeddings - self.centers[labels]
        return 0.5 * (diff * diff).sum(1).mean()


class CenterSoftmaxLoss(nn.Module):
    """Softmax cross-entropy plus weighted center loss: ``CE(W x + b, y) + center_weight * L_c``.

    ``L_c`` is :class:`CenterLoss`. Wen et al. use weights around 0.001-0.1.
    """

    def __init__(self, dim: int, num_classes: int, center_weight: float = 0.01) -> None:
        super().__init__()
        if center_weight < 0:
            raise ValueError(f"center_weight must be >= 0, got {center_weight}")
        self.dim = dim
        self.num_classes = num_classes
        self.center_weight = float(center_weight)
        self.softmax = SoftmaxHead(dim, num_classes)
        self.center = CenterLoss(num_classes, dim)

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Class logits of the softmax head."""
        return self.softmax.logits(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``CE + center_weight * center``."""
        return self.softmax(embeddings, labels) + self.center_weight * self.center(
            embeddings, labels
        )


# --------------------------------------------------------------------------- margin heads


class _MarginHead(nn.Module):
    """Shared part of the normalised-softmax heads: ``cos(theta_j) = <x/|x|, W_j/|W_j|>``."""

    def __init__(self, dim: int, num_classes: int, s: float, m: float) -> None:
        super().__init__()
        _check_sizes(dim, num_classes)
        if s <= 0:
            raise ValueError(f"scale s must be > 0, got {s}")
        if m < 0:
            raise ValueError(f"margin m must be >= 0, got {m}")
        self.dim = dim
        self.num_classes = num_classes
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, s={self.s}, m={self.m}"

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``cos(theta)`` between each embedding and each class weight, ``(N, num_classes)``."""
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T

    def _target(self, cos: Tensor) -> Tensor:
        """Margin-adjusted cosine of the true class."""
        raise NotImplementedError

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """``s * cos(theta)`` with the margin applied to the true class when ``labels`` is given.

        Without labels (inference / evaluation) no margin is applied.
        """
        cos = self.cosine(embeddings)
        if labels is not None:
            index = labels.long()[:, None]
            cos = cos.scatter(1, index, self._target(cos.gather(1, index)))
        return self.s * cos

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the margin logits."""
        _check_batch(embeddings, labels)
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())


class ArcFace(_MarginHead):
    """Additive angular margin head (Deng et al. 2019).

    True-class logit ``s * cos(theta + m)``, other classes ``s * cos(theta_j)``; loss = CE.
    ``cos(theta + m)`` is computed as ``cos(theta) cos(m) - sin(theta) sin(m)``. When
    ``theta + m > pi`` the target would stop being monotonic in ``theta``; then:

    * ``easy_margin=False`` (default, the reference behaviour): if ``theta > pi - m`` the logit
      is ``s * (cos(theta) - m * sin(m))`` (a CosFace-like linear penalty) instead;
    * ``easy_margin=True``: the margin is applied only when ``cos(theta) > 0``, otherwise the
      logit is the plain ``s * cos(theta)``.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(dim, num_classes, s, m)
        if m >= math.pi:
            raise ValueError(f"ArcFace margin m must be < pi, got {m}")
        self.easy_margin = easy_margin
        self._cos_m = math.cos(m)
        self._sin_m = math.sin(m)
        self._threshold = math.cos(math.pi - m)  # theta + m > pi  <=>  cos(theta) < this
        self._fallback = math.sin(m) * m

    def _target(self, cos: Tensor) -> Tensor:
        # clamp_min keeps d(sin)/d(cos) finite at |cos| = 1
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        phi = cos * self._cos_m - sin * self._sin_m
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > self._threshold, phi, cos - self._fallback)


class CosFace(_MarginHead):
    """Large-margin cosine head (CosFace / AM-softmax, Wang et al. 2018).

    True-class logit ``s * (cos(theta) - m)``, other classes ``s * cos(theta_j)``; loss = CE.
    """

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(dim, num_classes, s, m)

    def _target(self, cos: Tensor) -> Tensor:
        return cos - self.m


# --------------------------------------------------------------------------- factory


def _contrastive(dim: int, num_classes: int, **options: Any) -> nn.Module:
    return ContrastiveLoss(**options)


def _triplet(dim: int, num_classes: int, **options: Any) -> nn.Module:
    return TripletLoss(**options)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "contrastive": _contrastive,
    "triplet": _triplet,
    "softmax": SoftmaxHead,
    "center": CenterSoftmaxLoss,
    "arcface": ArcFace,
    "cosface": CosFace,
}
LOSS_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_loss(name: str, dim: int, num_classes: int, **options: Any) -> nn.Module:
    """Build a loss by name; ``options`` go to its constructor.

    Names: ``contrastive`` (:class:`ContrastiveLoss`; ``dim``/``num_classes`` unused),
    ``triplet`` (:class:`TripletLoss`, e.g. ``mining="batch_hard"``; ``dim``/``num_classes``
    unused), ``softmax`` (:class:`SoftmaxHead`), ``center`` (:class:`CenterSoftmaxLoss`, CE +
    ``center_weight`` * center loss), ``arcface`` (:class:`ArcFace`), ``cosface``
    (:class:`CosFace`). Case and ``-``/``_`` are ignored. Unknown name: ValueError listing the
    known ones; unknown option: TypeError from the constructor.
    """
    key = name.strip().lower().replace("-", "_")
    factory = _FACTORIES.get(key)
    if factory is None:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    return factory(dim=dim, num_classes=num_classes, **options)
