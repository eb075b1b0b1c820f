"""Tests for gate.recognition.metric.sampler.PKSampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gate.recognition.metric.sampler import PKSampler

# identity -> number of images; identity 4 has a single image and is unusable
COUNTS = {0: 5, 1: 4, 2: 3, 3: 2, 4: 1, 5: 6, 6: 8, 7: 7}
LABELS = [identity for identity, count in COUNTS.items() for _ in range(count)][::-1]
P, K = 3, 4


def epoch_batches(sampler: PKSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_batch_is_p_identities_times_k() -> None:
    sampler = PKSampler(LABELS, p=P, k=K, seed=1, batches_per_epoch=20)
    batches = epoch_batches(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        assert len(batch) == P * K == sampler.batch_size
        per_identity = Counter(LABELS[i] for i in batch)
        assert len(per_identity) == P
        assert set(per_identity.values()) == {K}
        # grouped: K consecutive indices per identity
        groups = [{LABELS[i] for i in batch[j : j + K]} for j in range(0, P * K, K)]
        assert all(len(group) == 1 for group in groups)


def test_singletons_skipped_and_all_usable_identities_visited() -> None:
    sampler = PKSampler(LABELS, p=P, k=K, seed=2, batches_per_epoch=14)
    seen = Counter(LABELS[i] for batch in sampler for i in batch[::K])
    assert 4 not in seen
    assert set(seen) == {0, 1, 2, 3, 5, 6, 7}
    assert sampler.identities == [0, 1, 2, 3, 5, 6, 7]
    # identities come in shuffled rounds: 14 batches x 3 = 42 slots = 6 per identity
    assert set(seen.values()) == {6}


def test_indices_drawn_without_replacement_when_identity_is_large_enough() -> None:
    sampler = PKSampler(LABELS, p=P, k=K, seed=3, batches_per_epoch=30)
    for batch in sampler:
        for j in range(0, P * K, K):
            chunk = batch[j : j + K]
            if COUNTS[LABELS[chunk[0]]] >= K:
                assert len(set(chunk)) == K
            else:  # fewer than K images: all of them, topped up with repeats
                assert set(chunk) == {i for i, y in enumerate(LABELS) if y == LABELS[chunk[0]]}


def test_large_identity_cycles_through_all_images() -> None:
    labels = [0] * 8 + [1] * 8
    sampler = PKSampler(labels, p=2, k=4, seed=0)
    assert len(sampler) == 2  # 16 usable items // (2 * 4)
    batches = list(sampler)
    # two batches x 4 per identity = 8 = every image of each identity exactly once
    assert sorted(i for batch in batches for i in batch) == list(range(16))


def test_deterministic_for_a_seed_and_differs_between_seeds() -> None:
    first = epoch_batches(PKSampler(LABELS, p=P, k=K, seed=7, batches_per_epoch=5))
    again = epoch_batches(PKSampler(LABELS, p=P, k=K, seed=7, batches_per_epoch=5))
    other = epoch_batches(PKSampler(LABELS, p=P, k=K, seed=8, batches_per_epoch=5))
    assert first == again
    assert first != other


def test_set_epoch_reshuffles_and_is_reproducible() -> None:
    sampler = PKSampler(LABELS, p=P, k=K, seed=0, batches_per_epoch=5)
    epoch0 = epoch_batches(sampler, 0)
    epoch1 = epoch_batches(sampler, 1)
    assert epoch0 != epoch1
    assert epoch_batches(sampler, 0) == epoch0
    assert list(sampler) == epoch0  # iterating again without set_epoch repeats the epoch


def test_len_is_usable_items_over_batch_size() -> None:
    sampler = PKSampler(LABELS, p=P, k=K)
    usable = sum(count for count in COUNTS.values() if count >= 2)  # 35
    assert len(sampler) == usable // (P * K) == 2
    assert len(list(sampler)) == 2
    assert len(PKSampler([0, 0, 1, 1], p=2, k=4)) == 1  # never zero


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"at least p=3 identities.*found 2"):
        PKSampler([0, 0, 1, 1, 2], p=3, k=2)
    with pytest.raises(ValueError, match="p and k"):
        PKSampler([0, 0, 1, 1], p=2, k=0)


def test_accepts_arbitrary_label_values_and_tensors() -> None:
    labels = torch.tensor([10, 42, 10, 42, -3, -3])
    sampler = PKSampler(labels, p=3, k=2, seed=0)
    (batch,) = list(sampler)
    assert sorted(batch) == list(range(6))
    assert sorted(sampler.identities) == [-3, 10, 42]


def test_works_as_dataloader_batch_sampler() -> None:
    dataset = TensorDataset(torch.tensor(LABELS))
    sampler = PKSampler(LABELS, p=P, k=K, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    batches = [labels for (labels,) in loader]
    assert len(batches) == len(sampler)
    for labels in batches:
        assert labels.shape == (P * K,)
        assert torch.unique(labels).numel() == P
