"""The reference engine: a ``Recipe`` in torchvision v2 on PIL images, as the authors' code
does it in DataLoader workers. It is the baseline the faster engines are measured against
and the oracle for distribution checks, not the production path.

Order per view (DINO / iBOT): crop -> flip -> colour jitter (p) -> grayscale (p) ->
[3-augment] -> blur (p) -> solarize (p) -> float in [0, 1] -> normalize. Blur uses a kernel
of 2 * ceil(3 * sigma_max) + 1 px with sigma ~ U(blur_sigma). Randomness comes from torch's
global generator (DataLoader seeds it per worker).
"""
from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from data.views import EVAL_RESIZE, Color, Crop, Recipe


def crop_transform(c: Crop) -> T.Compose:
    if c.kind == "rrc":
        crop = [T.RandomResizedCrop(c.size, scale=c.scale, ratio=c.ratio,
                                    interpolation=InterpolationMode.BICUBIC, antialias=True)]
    elif c.kind == "center":
        crop = [T.Resize(round(c.size * EVAL_RESIZE), interpolation=InterpolationMode.BICUBIC, antialias=True),
                T.CenterCrop(c.size)]
    else:  # simple resized crop (DeiT III): shorter side -> size, then a random size x size crop
        crop = [T.Resize(c.size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                T.RandomCrop(c.size, padding=c.padding, padding_mode="reflect")]
    return T.Compose(crop + [T.RandomHorizontalFlip(c.flip_p)])


def _blur(c: Color) -> T.GaussianBlur:
    return T.GaussianBlur(2 * math.ceil(3 * c.blur_sigma[1]) + 1, sigma=c.blur_sigma)


def color_transform(c: Color) -> T.Compose:
    ops = [T.RandomApply([T.ColorJitter(*c.jitter)], p=c.jitter_p), T.RandomGrayscale(c.grayscale_p)]
    if c.three_augment:
        ops.append(T.RandomChoice([T.Grayscale(3), T.RandomSolarize(c.solarize_threshold, p=1.0), _blur(c)]))
    if c.blur_p > 0:
        ops.append(T.RandomApply([_blur(c)], p=c.blur_p))
    if c.solarize_p > 0:
        ops.append(T.RandomSolarize(c.solarize_threshold, p=c.solarize_p))
    return T.Compose(ops)


class ReferenceViews:
    """PIL image -> {group: [view tensor [3, S, S] float32, ...]} for one sample."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe.validate()
        self.crops = {v.name: crop_transform(v.crop) for v in recipe.views if v.crop is not None}
        self.colors = {v.name: color_transform(v.color) for v in recipe.views if v.color is not None}
        self.finish = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True),
                                 T.Normalize(recipe.mean, recipe.std)])

    def __call__(self, image: Image.Image) -> dict[str, list[torch.Tensor]]:
        image = image.convert("RGB")
        cropped, out = {}, {g: [] for g in self.recipe.groups}
        for v in self.recipe.views:
            cropped[v.name] = self.crops[v.name](image) if v.crop is not None else cropped[v.shares_crop_of]
            view = self.colors[v.name](cropped[v.name]) if v.color is not None else cropped[v.name]
            out[v.group].append(self.finish(view))
        return out
