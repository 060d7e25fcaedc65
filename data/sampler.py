"""Which samples a rank reads in an epoch, and in what order: a pure function of
(shard sizes, seed, epoch, rank, world size), so it is deterministic, equal-length on every
rank, and resumable exactly by skipping the batches already consumed.

Per epoch:
1. the shard order is a permutation drawn from (seed, epoch); inside each shard the sample
   order is another permutation from (seed, epoch, shard). The converter already mixed
   classes across shards, so reading shard by shard keeps I/O sequential per shard.
2. the resulting global order is cut into ``world`` contiguous blocks of
   ``total // world`` samples: every rank gets the same count whatever the shard sizes
   (up to world - 1 samples are left out of an epoch, different ones each epoch).
3. a rank yields ``(total // world) // batch_size`` full batches (the rest is dropped), the
   same number on every rank, so collective operations never wait on a missing batch.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


class SamplerError(ValueError):
    """The split cannot work (e.g. fewer samples than ranks x batch size)."""


@dataclass(frozen=True)
class LoaderPosition:
    """A loader's place in training: stored in checkpoints, restored to resume exactly."""
    epoch: int = 0
    batches: int = 0  # batches already consumed in `epoch`

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches}

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderPosition":
        return cls(int(d["epoch"]), int(d["batches"]))


def epoch_order(counts: list[int], seed: int, epoch: int) -> np.ndarray:
    """Global sample ids (shard-major: id = offset of its shard + index in it) in epoch order."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rng = np.random.default_rng([seed, epoch])
    parts = []
    for s in rng.permutation(len(counts)):
        inner = np.random.default_rng([seed, epoch, int(s)]).permutation(counts[s])
        parts.append(offsets[s] + inner)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def batches_per_epoch(total: int, world: int, batch_size: int) -> int:
    return (total // world) // batch_size


def rank_order(counts: list[int], seed: int, epoch: int, rank: int, world: int, batch_size: int) -> np.ndarray:
    """This rank's sample ids for the epoch, exactly batches_per_epoch * batch_size of them."""
    total = int(sum(counts))
    if not 0 <= rank < world:
        raise SamplerError(f"rank {rank} is outside a world of {world}")
    n_batches = batches_per_epoch(total, world, batch_size)
    if n_batches == 0:
        raise SamplerError(f"{total} samples over {world} ranks give no full batch of {batch_size}; "
                           f"use a smaller batch size or more data")
    per_rank = total // world
    order = epoch_order(counts, seed, epoch)[rank * per_rank:(rank + 1) * per_rank]
    return order[:n_batches * batch_size]


def eval_order(total: int, rank: int, world: int, batch_size: int) -> np.ndarray:
    """Evaluation: every sample exactly once over all ranks (ids in order, one contiguous
    slice per rank), padded with the rank's last id so that every rank has the same number
    of full batches. Consumers drop the repeats by id (``Views.ids``)."""
    if total < 1:
        raise SamplerError("no samples to evaluate")
    per_rank = -(-total // world)
    n_batches = max(1, -(-per_rank // batch_size))
    part = np.arange(rank * per_rank, min((rank + 1) * per_rank, total), dtype=np.int64)
    if len(part) == 0:  # more ranks than samples: repeat the last sample
        part = np.array([total - 1], dtype=np.int64)
    return np.concatenate([part, np.full(n_batches * batch_size - len(part), part[-1], dtype=np.int64)])


def shard_starts(counts: list[int]) -> list[int]:
    """First global id of each shard, plus the total at the end."""
    return np.cumsum([0] + list(counts)).tolist()


def locate(starts: list[int], i: int) -> tuple[int, int]:
    """Global id -> (shard, index inside it), given ``shard_starts``; empty shards are skipped."""
    if not 0 <= i < starts[-1]:
        raise IndexError(f"sample {i} of {starts[-1]}")
    shard = bisect.bisect_right(starts, i) - 1  # the last shard starting at or before i
    return shard, i - starts[shard]
