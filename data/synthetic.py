"""``data.train=synthetic``: batches of a recipe's exact view shapes, made on the device.

For throughput work where the model side is measured (tools/profile.py train --data
synthetic, the GPU checks): no shards, no decoding, no DALI or webdataset. The images are
standard-normal noise (what normalised images look like to the model), labels 0. They come
from a generator seeded by (seed, rank), so two trainers with the same seed see the same
batches; a pool of ``POOL`` batches is made once and cycled, so the data wait is ~0.
Not a dataset to learn from: the loader interface only (len, iter, position, state).
"""
from __future__ import annotations

import torch

from data.loader import LoaderStats, Positioned, Views
from data.sampler import LoaderPosition
from data.views import Recipe

NAME = "synthetic"
POOL = 4                    # distinct batches, cycled
BATCHES_PER_EPOCH = 1000


class SyntheticLoader(Positioned):
    def __init__(self, recipe: Recipe, batch_size: int, rank: int = 0, seed: int = 0, device: str = "cpu",
                 dtype=torch.float32, batches_per_epoch: int = BATCHES_PER_EPOCH):
        self.recipe, self.batch_size = recipe.validate(), batch_size
        self.device, self.dtype, self.batches_per_epoch = torch.device(device), dtype, batches_per_epoch
        self.position, self.stats = LoaderPosition(), LoaderStats()
        g = torch.Generator(self.device).manual_seed(seed * 1000003 + rank)
        self.pool = [self._batch(g, i) for i in range(POOL)]

    def _batch(self, g: torch.Generator, i: int) -> Views:
        views = {}
        for group in self.recipe.groups:
            size = self.recipe.size_of(group)
            views[group] = [torch.randn(self.batch_size, 3, size, size, generator=g, device=self.device,
                                        dtype=self.dtype) for _ in self.recipe.group(group)]
        labels = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        return Views(views, labels, torch.arange(i * self.batch_size, (i + 1) * self.batch_size))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        epoch, start = self.position.epoch, self.position.batches
        for b in range(start, self.batches_per_epoch):
            self.position = LoaderPosition(epoch, b + 1)
            self.stats.batches += 1
            self.stats.images += self.batch_size
            yield self.pool[b % POOL]
        self.position = LoaderPosition(epoch + 1, 0)
