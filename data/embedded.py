"""The embedded default dataset: "hide-shapes", generated deterministically, no download.

Ten classes defined by *shape or texture* only. Everything a self-supervised method's
augmentations are meant to make it invariant to is random per image: foreground and
background colours, position, scale, rotation, background gradient and noise, image size
and aspect ratio. So a k-NN on learned features scores above chance (10 %) only if the
features encode shape, which is the smoke test we want: colour statistics alone carry no
label information (colours are drawn independently of the class).

Image i of split s is a pure function of (s, i): the train split (1,200 images, 120 per
class) and the held-out split (300 images, 30 per class) never share a random stream.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring",
           "star", "hstripes", "vstripes", "checker", "dots")
SPLITS = {"train": 120, "val": 30}  # images per class
_SPLIT_STREAM = {"train": 1, "val": 2}


def num_images(split: str) -> int:
    return SPLITS[split] * len(CLASSES)


def label_of(split: str, index: int) -> int:
    """Classes are interleaved: image i has label i mod 10."""
    check_index(split, index)
    return index % len(CLASSES)


def check_index(split: str, index: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown embedded split {split!r}; choose one of {sorted(SPLITS)}")
    if not 0 <= index < num_images(split):
        raise ValueError(f"embedded {split} has {num_images(split)} images, no index {index}")


def render(split: str, index: int) -> Image.Image:
    """The RGB image `index` of `split`."""
    label = label_of(split, index)
    rng = np.random.default_rng([_SPLIT_STREAM[split], index])
    w, h = (int(v) for v in rng.integers(72, 161, size=2))
    im = _background(rng, w, h)
    fg = tuple(int(v) for v in rng.integers(0, 256, size=3))
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    r = rng.uniform(0.22, 0.4) * min(w, h)
    angle = rng.uniform(0, 2 * math.pi)
    draw = ImageDraw.Draw(im)
    _SHAPES[CLASSES[label]](draw, rng, fg, cx, cy, r, angle, w, h)
    noise = rng.normal(0.0, 6.0, size=(h, w, 3))
    arr = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def jpeg_bytes(split: str, index: int, quality: int = 90) -> bytes:
    out = io.BytesIO()
    render(split, index).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0.0, 1.0, w)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0.0, 1.0, h)[:, None, None]
    arr = c0 * (1 - t) + c1 * t
    return Image.fromarray(np.broadcast_to(arr, (h, w, 3)).astype(np.uint8), "RGB")


def _polygon(cx, cy, radii, angle):
    n = len(radii)
    return [(cx + rad * math.cos(angle + 2 * math.pi * k / n),
             cy + rad * math.sin(angle + 2 * math.pi * k / n)) for k, rad in enumerate(radii)]


def _circle(draw, rng, fg, cx, cy, r, angle, w, h):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)


def _square(draw, rng, fg, cx, cy, r, angle, w, h):
    draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=fg)


def _triangle(draw, rng, fg, cx, cy, r, angle, w, h):
    draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=fg)


def _star(draw, rng, fg, cx, cy, r, angle, w, h):
    draw.polygon(_polygon(cx, cy, [r, 0.4 * r] * 5, angle), fill=fg)


def _cross(draw, rng, fg, cx, cy, r, angle, w, h):
    t = max(2, int(0.35 * r))
    for a in (angle, angle + math.pi / 2):
        dx, dy = r * math.cos(a), r * math.sin(a)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fg, width=t)


def _ring(draw, rng, fg, cx, cy, r, angle, w, h):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, int(0.3 * r)))


def _stripes(draw, rng, fg, base_angle, w, h):
    period = rng.uniform(8, 16)
    a = base_angle + rng.uniform(-0.2, 0.2)
    nx, ny = math.cos(a), math.sin(a)  # stripe direction; offsets go along the normal
    span = w + h
    for k in range(int(-span / period), int(span / period) + 1):
        ox, oy = -ny * k * period + w / 2, nx * k * period + h / 2
        draw.line([(ox - nx * span, oy - ny * span), (ox + nx * span, oy + ny * span)],
                  fill=fg, width=max(2, int(period / 2)))


def _hstripes(draw, rng, fg, cx, cy, r, angle, w, h):
    _stripes(draw, rng, fg, 0.0, w, h)


def _vstripes(draw, rng, fg, cx, cy, r, angle, w, h):
    _stripes(draw, rng, fg, math.pi / 2, w, h)


def _checker(draw, rng, fg, cx, cy, r, angle, w, h):
    cell = int(rng.integers(8, 17))
    for y in range(0, h, cell):
        for x in range((y // cell % 2) * cell, w, 2 * cell):
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fg)


def _dots(draw, rng, fg, cx, cy, r, angle, w, h):
    step = rng.uniform(12, 20)
    rad = step * 0.25
    for y in np.arange(step / 2, h, step):
        for x in np.arange(step / 2, w, step):
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fg)


_SHAPES = {
    "circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross,
    "ring": _ring, "star": _star, "hstripes": _hstripes, "vstripes": _vstripes,
    "checker": _checker, "dots": _dots,
}
