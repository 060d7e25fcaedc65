"""data/sampler.py: rank splits over uneven shards, determinism, exact resume."""
import numpy as np
import pytest

from data.sampler import (LoaderPosition, SamplerError, batches_per_epoch, epoch_order, locate, rank_order,
                          shard_starts)

UNEVEN = [1000, 7, 313, 1, 999, 64, 0, 250]  # shard sizes as a real conversion leaves them


def test_epoch_order_is_a_permutation_that_changes_per_epoch():
    a = epoch_order(UNEVEN, seed=0, epoch=0)
    assert sorted(a.tolist()) == list(range(sum(UNEVEN)))
    assert np.array_equal(a, epoch_order(UNEVEN, 0, 0))
    assert not np.array_equal(a, epoch_order(UNEVEN, 0, 1)) and not np.array_equal(a, epoch_order(UNEVEN, 1, 0))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_and_equal_length_over_uneven_shards(world):
    batch = 32
    orders = [rank_order(UNEVEN, 7, 3, r, world, batch) for r in range(world)]
    n = batches_per_epoch(sum(UNEVEN), world, batch) * batch
    assert all(len(o) == n for o in orders)
    merged = np.concatenate(orders)
    assert len(np.unique(merged)) == len(merged)                 # no sample on two ranks
    assert merged.max() < sum(UNEVEN)
    assert np.array_equal(orders[0], rank_order(UNEVEN, 7, 3, 0, world, batch))  # deterministic


def test_every_sample_is_seen_across_epochs_despite_the_remainder():
    counts = [5, 3, 9]  # 17 samples, 2 ranks x batch 4: 16 per epoch
    seen = set()
    for epoch in range(6):
        for r in range(2):
            seen.update(rank_order(counts, 0, epoch, r, 2, 4).tolist())
    assert seen == set(range(17))


def test_resume_skips_exactly_the_consumed_batches():
    batch, pos = 16, LoaderPosition(epoch=2, batches=5)
    full = rank_order(UNEVEN, 1, pos.epoch, 1, 3, batch)
    restored = LoaderPosition.from_dict(pos.as_dict())
    rest = rank_order(UNEVEN, 1, restored.epoch, 1, 3, batch)[restored.batches * batch:]
    assert np.array_equal(np.concatenate([full[:pos.batches * batch], rest]), full)


def test_locate_maps_global_ids_to_shard_and_index():
    starts = shard_starts(UNEVEN)
    located = [locate(starts, i) for i in [0, 999, 1000, 1006, 1007, 1320, 1321, 2320, 2384]]
    assert [s for s, _ in located] == [0, 0, 1, 1, 2, 3, 4, 5, 7]   # the empty shard 6 is skipped
    assert [j for _, j in located] == [0, 999, 0, 6, 0, 0, 0, 0, 0]
    with pytest.raises(IndexError):
        locate(starts, sum(UNEVEN))


def test_impossible_splits_are_refused():
    with pytest.raises(SamplerError, match="no full batch"):
        rank_order([10], 0, 0, 0, 4, 8)
    with pytest.raises(SamplerError, match="outside a world"):
        rank_order([10], 0, 0, 2, 2, 1)
