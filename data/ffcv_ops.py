"""FFCV operations for multi-view recipes.

FFCV's stock ``RandomResizedCropRGBImageDecoder`` decodes the whole JPEG once *per view*,
and FFCV 1.0 has one pipeline per field, so a multicrop recipe would need twelve fields or
twelve decodes. ``MultiCropRGBImageDecoder`` decodes each JPEG once and cuts every view of
every group from it with FFCV's own JIT helpers (``imdecode``, ``get_random_crop``,
``resize_crop``), writing one flat uint8 row per sample: for each group in order, its
``n`` views of ``S x S x 3`` (HWC). ``split_views`` turns the batch back into tensors.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from numba import njit
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms.utils.fast_crop import get_random_crop


@njit(nogil=True)
def square_crop(height, width):
    """Simple resized crop (DeiT III) in source pixels: the shorter side's square at a random
    position; resized to S it equals 'shorter side -> S, random S x S crop' without padding."""
    side = min(height, width)
    return np.random.randint(0, height - side + 1), np.random.randint(0, width - side + 1), side, side


class MultiCropRGBImageDecoder(SimpleRGBImageDecoder):
    """groups: [(size, n_views, (scale_min, scale_max), (ratio_min, ratio_max)[, kind]), ...]
    kind "rrc" (RandomResizedCrop, default) or "src" (simple resized crop: scale/ratio unused)."""

    def __init__(self, groups: list[tuple]):
        super().__init__()
        self.kinds = np.array([1 if len(g) > 4 and g[4] == "src" else 0 for g in groups], dtype=np.int64)
        self.groups = [(int(g[0]), int(g[1]), tuple(g[2]), tuple(g[3])) for g in groups]
        self.sizes = np.array([g[0] for g in self.groups], dtype=np.int64)
        self.counts = np.array([g[1] for g in self.groups], dtype=np.int64)
        self.scales = np.array([g[2] for g in self.groups], dtype=np.float64)   # [G, 2]
        self.ratios = np.array([g[3] for g in self.groups], dtype=np.float64)   # [G, 2]
        per_view = 3 * self.sizes * self.sizes
        self.offsets = np.concatenate([[0], np.cumsum(per_view * self.counts)])[:-1].astype(np.int64)
        self.row = int((per_view * self.counts).sum())

    def declare_state_and_memory(self, previous_state):
        max_w, max_h = np.uint64(self.metadata["width"].max()), np.uint64(self.metadata["height"].max())
        u8 = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=(self.row,), dtype=u8),
                (AllocationQuery((self.row,), u8), AllocationQuery((max_h * max_w * np.uint64(3),), u8)))

    def generate_code(self):
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(getattr(get_random_crop, "py_func", get_random_crop))  # FFCV jits it already
        square_c = Compiler.compile(square_crop.py_func)
        sizes, counts, scales, ratios, offsets = self.sizes, self.counts, self.scales, self.ratios, self.offsets
        kinds = self.kinds

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:  # decode once ...
                    buf = temp_storage[dst_ix]
                    imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = buf.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                row = destination[dst_ix]
                for g in range(len(sizes)):  # ... then every view of every group
                    s = sizes[g]
                    for v in range(counts[g]):
                        start = offsets[g] + v * 3 * s * s
                        if kinds[g] == 1:
                            i, j, h, w = square_c(height, width)
                        else:
                            i, j, h, w = get_crop_c(height, width, scales[g], ratios[g])
                        resize_crop_c(image, i, i + h, j, j + w, row[start:start + 3 * s * s].reshape(s, s, 3))
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


def split_views(rows: torch.Tensor, groups: list[tuple[int, int, tuple, tuple]]) -> list[list[torch.Tensor]]:
    """[B, row] uint8 -> per group, n tensors [B, 3, S, S] uint8 (views of the row, no copy)."""
    out, offset = [], 0
    for size, n, *_ in groups:
        block = rows[:, offset:offset + n * size * size * 3].reshape(-1, n, size, size, 3)
        out.append([block[:, v].permute(0, 3, 1, 2) for v in range(n)])
        offset += n * size * size * 3
    return out
