"""The reference engine's batches: this rank's sample ids -> DataLoader workers that decode
with PIL and build views with torchvision v2 (data/reference.py), as the authors' code does.
A sample that does not decode is replaced by another sample of its batch (full, static
batches) and reported back with the batch, or raises in strict mode.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from data.reference import ReferenceViews
from data.shards.samples import replacement_sources


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, samples, recipe, ids: np.ndarray, strict: bool):
        self.samples, self.ids, self.strict = samples, ids, strict
        self.make = ReferenceViews(recipe)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int):
        i = int(self.ids[k])
        data, label, key = self.samples.read(i)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            if self.strict:
                raise RuntimeError(f"sample {key} in {self.samples.shard_of(i)} does not decode ({err}); "
                                   f"fix or re-convert that shard") from None
            return None, label, {"shard": self.samples.shard_of(i), "key": key}
        return self.make(image), label, None


def _collate(items):
    bad = [j for j, it in enumerate(items) if it[0] is None]
    corrupt = [items[j][2] for j in bad]
    filled = list(items)
    for j, src in zip(bad, replacement_sources(len(items), bad)):
        filled[j] = items[src]
    views = {g: [torch.stack([it[0][g][v] for it in filled]) for v in range(len(filled[0][0][g]))]
             for g in filled[0][0]}
    return views, torch.tensor([it[1] for it in filled], dtype=torch.int64), corrupt


def reference_batches(samples, recipe, ids: np.ndarray, batch_size: int, workers: int, seed: int,
                      stats, epoch: int, strict: bool = False):
    """Yield (views, labels) for full batches of `ids` in order; corrupt samples go to stats."""
    loader = torch.utils.data.DataLoader(
        _Dataset(samples, recipe, ids, strict), batch_size=batch_size, shuffle=False, drop_last=True,
        num_workers=workers, collate_fn=_collate, generator=torch.Generator().manual_seed(seed),
        persistent_workers=False)
    if workers == 0:
        torch.manual_seed(seed)
    for views, labels, corrupt in loader:
        stats.corrupt.extend({**c, "epoch": epoch} for c in corrupt)
        yield views, labels
