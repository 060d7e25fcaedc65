"""DALI pipelines built from a view recipe (data/views.py).

Each image's JPEG bytes are decoded *once* (``device="mixed"``: nvJPEG / the hardware
decoder on a GPU; ``"cpu"`` without CUDA), then every view's crop, flip, colour jitter,
grayscale, blur and solarize run in DALI, and ``crop_mirror_normalize`` writes normalized
CHW float tensors. Per-sample random choices ("with probability p") are coin flips feeding
either operator arguments (jitter amounts, saturation 0 for grayscale) or DALI conditionals
(blur, solarize, 3-augment), so the pipeline needs ``enable_conditionals=True`` and lives in
a source file.

The bytes come from ``fn.external_source`` fed by ``SampleFeed``: batch b of epoch e is a
pure function of the sampler order (data/sampler.py), whatever DALI prefetches, which makes
the order deterministic and resume exact. The same feed serves WebDataset and FFCV shards.
"""
from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from data.sampler import rank_order
from data.shards.samples import check_sample, replacement_sources
from data.views import EVAL_RESIZE, Color, Crop, Recipe


class SampleFeed:
    """external_source callable: BatchInfo -> (JPEG byte arrays, labels) for this rank."""

    def __init__(self, samples, batch_size: int, seed: int, rank: int, world: int,
                 start_epoch: int = 0, start_batch: int = 0, strict: bool = False, order_fn=None):
        self.samples, self.batch_size, self.order_fn = samples, batch_size, order_fn
        self.seed, self.rank, self.world = seed, rank, world
        self.start_epoch, self.start_batch, self.strict = start_epoch, start_batch, strict
        self.corrupt: list[dict] = []  # {shard, key, epoch}: what was skipped, for the stats
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self.order_fn is not None:  # the loader's own order (e.g. evaluation order)
            return self.order_fn(epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, rank_order(self.samples.counts, self.seed, epoch, self.rank,
                                             self.world, self.batch_size))
        return self._order[1]

    def num_batches(self, epoch: int) -> int:
        return len(self.order(epoch)) // self.batch_size

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        batch = info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)
        if batch >= self.num_batches(epoch):
            raise StopIteration
        ids = self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        jpegs, labels, bad = [], [], []
        for pos, i in enumerate(ids.tolist()):
            data, label, key = self.samples.read(i)
            record = check_sample(self.samples, i, data, key, epoch, self.strict)
            if record is not None:
                bad.append(pos)
                self.corrupt.append(record)
            jpegs.append(np.frombuffer(data, dtype=np.uint8))
            labels.append(label)
        for j, src in zip(bad, replacement_sources(len(jpegs), bad)):
            jpegs[j], labels[j] = jpegs[src], labels[src]
        return jpegs, np.asarray(labels, dtype=np.int64)


def _coin(p: float):
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def _uniform(lo: float, hi: float):
    if hi <= lo:  # an empty range (e.g. jitter 0: that colour op off); DALI rejects [0, 0)
        return float(lo)
    return fn.random.uniform(range=[lo, hi])


def _solarize(img, threshold: int):
    f = fn.cast(img, dtype=types.FLOAT)
    above = fn.cast(f >= threshold, dtype=types.FLOAT)
    return fn.cast(f + above * (255.0 - 2.0 * f), dtype=types.UINT8)


def _grayscale(img):
    return fn.color_twist(img, saturation=0.0)


def _blur(img, c: Color):
    return fn.gaussian_blur(img, sigma=_uniform(*c.blur_sigma))


def _color(img, c: Color):
    """uint8 HWC -> uint8 HWC: jitter (p), grayscale (p), [3-augment], blur (p), solarize (p)."""
    bri, con, sat, hue = c.jitter
    on = fn.cast(_coin(c.jitter_p), dtype=types.FLOAT)
    gray = fn.cast(_coin(c.grayscale_p), dtype=types.FLOAT)
    img = fn.color_twist(img,
                         brightness=1.0 + on * _uniform(-bri, bri),
                         contrast=1.0 + on * _uniform(-con, con),
                         saturation=(1.0 + on * _uniform(-sat, sat)) * (1.0 - gray),
                         hue=on * _uniform(-hue * 360.0, hue * 360.0))  # degrees
    if c.three_augment:
        pick = fn.random.choice(3)
        if pick == 0:
            img = _grayscale(img)
        elif pick == 1:
            img = _solarize(img, c.solarize_threshold)
        else:
            img = _blur(img, c)
    if c.blur_p > 0:
        if _coin(c.blur_p):
            img = _blur(img, c)
    if c.solarize_p > 0:
        if _coin(c.solarize_p):
            img = _solarize(img, c.solarize_threshold)
    return img


def _crop(images, c: Crop):
    if c.kind == "rrc":
        return fn.random_resized_crop(images, size=[c.size, c.size], random_area=list(c.scale),
                                      random_aspect_ratio=list(c.ratio), interp_type=types.INTERP_CUBIC,
                                      antialias=True)
    if c.kind == "center":
        resized = fn.resize(images, resize_shorter=round(c.size * EVAL_RESIZE), interp_type=types.INTERP_CUBIC,
                            antialias=True)
        return fn.crop(resized, crop=[c.size, c.size])  # centred by default
    # simple resized crop: shorter side -> size, then a size x size window anywhere within
    # `padding` px of the image (the padding is filled with black; the reference reflects)
    resized = fn.resize(images, resize_shorter=c.size, interp_type=types.INTERP_CUBIC, antialias=True)
    shape = fn.cast(resized.shape(), dtype=types.FLOAT)
    y = fn.cast(_uniform(0.0, 1.0) * (shape[0] - c.size + 2 * c.padding) - c.padding, dtype=types.INT32)
    x = fn.cast(_uniform(0.0, 1.0) * (shape[1] - c.size + 2 * c.padding) - c.padding, dtype=types.INT32)
    return fn.slice(resized, start=fn.stack(y, x), shape=[c.size, c.size], axis_names="HW",
                    out_of_bounds_policy="pad", fill_values=0)


@pipeline_def(enable_conditionals=True)
def views_pipeline(recipe: Recipe, feed: SampleFeed, decode_device: str = "cpu",
                   out_dtype=types.FLOAT):
    """Outputs: one tensor per view (recipe order), then the labels."""
    jpegs, labels = fn.external_source(source=feed, num_outputs=2, batch=True, batch_info=True,
                                       dtype=[types.UINT8, types.INT64])
    images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
    mean = [255.0 * m for m in recipe.mean]
    std = [255.0 * s for s in recipe.std]
    cropped, flips, outputs = {}, {}, []
    for v in recipe.views:
        if v.crop is not None:  # a crop and its flip are drawn together; views sharing the crop share both
            cropped[v.name], flips[v.name] = _crop(images, v.crop), fn.random.coin_flip(probability=v.crop.flip_p)
        else:
            cropped[v.name], flips[v.name] = cropped[v.shares_crop_of], flips[v.shares_crop_of]
        img = _color(cropped[v.name], v.color) if v.color is not None else cropped[v.name]
        outputs.append(fn.crop_mirror_normalize(img, dtype=out_dtype, output_layout="CHW", mean=mean,
                                                std=std, mirror=flips[v.name]))
    return (*outputs, labels)
