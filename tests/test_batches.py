"""Batch sources: the global batch of a step does not depend on how it is split."""

from __future__ import annotations

from alignlib.batches import IndexStream, OfflineBatches
from alignlib.data import TokenizedExample


def examples(n: int) -> list[TokenizedExample]:
    return [TokenizedExample([1, 10 + i], [[20 + i, 2]]) for i in range(n)]


def test_every_split_of_a_global_batch_serves_the_same_examples():
    data = examples(37)
    splits = [(8, 1, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (1, 8, 1)]  # per-device, accumulation, processes
    for step in (0, 3, 9):  # 9 × 8 = 72 > 37: crosses epochs
        served = []
        for per_device, accum, world in splits:
            src = OfflineBatches(data, per_device, accum, world, pad_token_id=0, seed=5)
            served.append(sorted(i for m in range(accum) for r in range(world) for i in src.indices(step, m, r)))
        assert all(s == served[0] for s in served), served
        assert len(served[0]) == 8


def test_each_epoch_is_a_permutation_and_the_seed_matters():
    stream = IndexStream(10, seed=1)
    assert sorted(stream.take(0, 10)) == list(range(10))
    assert sorted(stream.take(10, 10)) == list(range(10))
    assert stream.take(0, 10) != stream.take(10, 10)
    assert IndexStream(10, seed=2).take(0, 10) != stream.take(0, 10)


def test_token_normaliser_counts_the_global_batch():
    data = examples(16)  # every completion has 2 tokens and the prompt is non-empty
    for per_device, accum, world in [(8, 1, 1), (4, 2, 1), (2, 2, 2)]:
        src = OfflineBatches(data, per_device, accum, world, pad_token_id=0, seed=0)
        assert src.tokens_per_micro_batch(0) * accum * world == 16


def test_micro_batch_is_collated_and_padded():
    data = [TokenizedExample([1, 5], [[6, 7, 2]]), TokenizedExample([1], [[8, 2]])]
    batch = OfflineBatches(data, 2, 1, 1, pad_token_id=0, seed=0).micro_batch(0, 0, 0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["completion_mask"].sum().item() == 5
