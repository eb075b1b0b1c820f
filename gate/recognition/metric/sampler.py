"""Identity-balanced ("P x K") batch sampling for pair/triplet losses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["PKSampler"]


class _Cycler:
    """Endless stream of shuffled items, drawn ``size`` distinct ones at a time.

    Items are served from a shuffled permutation; when fewer than ``size`` remain, the rest is
    completed from a fresh permutation, skipping the items already taken, so a draw never repeats
    an item and, over many draws, every item is served equally often. Requires
    ``len(items) >= size``.
    """

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = items
        self.rng = rng
        self.queue: list[int] = []

    def take(self, size: int) -> list[int]:
        if len(self.queue) >= size:
            out, self.queue = self.queue[:size], self.queue[size:]
            return out
        out = self.queue
        fresh = [int(i) for i in self.rng.permutation(self.items)]
        taken = set(out)
        rest: list[int] = []
        for item in fresh:
            if len(out) < size and item not in taken:
                out.append(item)
            else:
                rest.append(item)
        self.queue = rest
        return out


class PKSampler(Sampler[list[int]]):
    """Batch sampler: each batch holds ``p`` distinct identities x ``k`` dataset indices each.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k))``; batches have
    ``p * k`` indices, grouped by identity (the ``k`` indices of the first identity, then the
    next ...).

    * Identities with fewer than ``min_per_identity`` items (default 2: no positive pair is
      possible) are skipped entirely.
    * Identities are visited in shuffled rounds, so over an epoch each usable identity appears
      about equally often, and never twice in one batch.
    * Within an identity that has at least ``k`` items, indices are drawn **without
      replacement**, cycling through a shuffled pool (all its items are used before any repeats).
      An identity with fewer than ``k`` items contributes all its items plus ``k - n`` extra ones
      drawn **with replacement** from them (so a batch may contain duplicate indices then).
    * ``__len__`` (batches per epoch) is ``batches_per_epoch`` if given, else
      ``max(1, usable_items // (p * k))``, so one epoch sees about as many samples as the
      usable part of the dataset.
    * Deterministic for ``(seed, epoch)``. Call ``set_epoch(epoch)`` before each epoch to get a
      different shuffle (as with ``DistributedSampler``); without it every epoch repeats.

    Raises ``ValueError`` when fewer than ``p`` identities are usable.
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        *,
        min_per_identity: int = 2,
        batches_per_epoch: int | None = None,
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        if min_per_identity < 1:
            raise ValueError(f"min_per_identity must be >= 1, got {min_per_identity}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        array = np.asarray(labels)
        if array.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
        self.p = p
        self.k = k
        self.seed = seed
        self.epoch = 0
        self.min_per_identity = min_per_identity

        ids, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1]) if len(ids) else []
        self._groups: dict[int, np.ndarray] = {
            i: group for i, group in enumerate(groups) if len(group) >= min_per_identity
        }
        self.identities: list[int] = [ids[i].item() for i in self._groups]
        if len(self._groups) < p:
            raise ValueError(
                f"PKSampler needs at least p={p} identities with >= {min_per_identity} items, "
                f"found {len(self._groups)} (of {len(ids)} identities, {len(array)} items)"
            )
        usable = sum(len(group) for group in self._groups.values())
        self._len = batches_per_epoch or max(1, usable // (p * k))

    @property
    def batch_size(self) -> int:
        """Indices per batch, ``p * k``."""
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of the next iteration (reproducible per ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        keys = np.fromiter(self._groups, dtype=np.int64, count=len(self._groups))
        identities = _Cycler(keys, rng)
        pools = {key: _Cycler(group, rng) for key, group in self._groups.items()}
        for _ in range(self._len):
            batch: list[int] = []
            for key in identities.take(self.p):
                group = self._groups[key]
                if len(group) >= self.k:
                    batch.extend(pools[key].take(self.k))
                else:
                    extra = rng.choice(group, size=self.k - len(group), replace=True)
                    batch.extend(int(i) for i in rng.permutation(np.concatenate([group, extra])))
            yield batch
