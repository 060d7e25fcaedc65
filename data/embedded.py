"""The embedded default dataset: "hide-shapes", generated deterministically, no download.

Ten classes defined by *shape or texture* only. A light figure (each channel in 160..255)
is painted over a darker background (a gradient between two colours with channels in
0..89) plus noise. Everything a self-supervised method's augmentations are meant to make it
invariant to is random per image and drawn independently of the class: the hues, the
background gradient and noise, position, scale, rotation, image size and aspect ratio, and
the share of the image the figure covers (``COVER``, the same range for every class:
shapes are scaled to it, textures get line widths, square sides and dot radii from it).

Version 2. Version 1 drew foreground and background colours from the whole cube, so a
figure was as often darker than its background as lighter, and often of nearly the same
colour. Its colour statistics carried no label information at all, but an untrained
network did not see the shapes either (k-NN at chance) and the DINO / iBOT objectives,
which bootstrap from the teacher's initial features, collapsed on it within a few hundred
steps while a contrastive one learned (README, "The demo"). A light figure on a dark ground
with a class-independent area keeps colour from predicting the label (README: what is
left, measured) and lets them learn.

Image i of split s is a pure function of (s, i): the train split (1,200 images, 120 per
class) and the held-out split (300 images, 30 per class) never share a random stream.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

VERSION = 2  # bumped whenever an image changes: converted copies are cached per version
CLASSES = ("circle", "square", "triangle", "cross", "ring",
           "star", "hstripes", "vstripes", "checker", "dots")
SPLITS = {"train": 120, "val": 30}  # images per class
_SPLIT_STREAM = {"train": 1, "val": 2}
COVER = (0.12, 0.3)  # share of the image painted with the figure, uniform per image, any class


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
    fg = tuple(int(v) for v in rng.integers(160, 256, size=3))
    cover = rng.uniform(*COVER)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASSES[label]
    if name in _TEXTURES:
        mask = _mask(w, h, lambda d: _TEXTURES[name](d, rng, cover, w, h))
    else:  # a shape's area grows with r squared: draw once at r0, then at the r giving `cover`
        def shape(r):
            return _mask(w, h, lambda d: _SHAPES[name](d, cx, cy, r, angle))
        r0 = 0.3 * min(w, h)
        got = max(float(np.mean(np.asarray(shape(r0)) > 0)), 1e-3)
        mask = shape(min(r0 * math.sqrt(cover / got), 0.6 * min(w, h)))
    im.paste(fg, mask=mask)
    noise = rng.normal(0.0, 6.0, size=(h, w, 3))
    arr = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _mask(w, h, paint) -> Image.Image:
    """A w x h figure mask (255 inside) painted by `paint(ImageDraw)`."""
    m = Image.new("L", (w, h), 0)
    paint(ImageDraw.Draw(m))
    return m


def jpeg_bytes(split: str, index: int, quality: int = 90) -> bytes:
    out = io.BytesIO()
    render(split, index).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c0, c1 = rng.integers(0, 90, size=(2, 3))
    t = np.linspace(0.0, 1.0, w)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0.0, 1.0, h)[:, None, None]
    arr = c0 * (1 - t) + c1 * t
    return Image.fromarray(np.broadcast_to(arr, (h, w, 3)).astype(np.uint8), "RGB")


def _polygon(cx, cy, radii, angle):
    n = len(radii)
    return [(cx + rad * math.cos(angle + 2 * math.pi * k / n),
             cy + rad * math.sin(angle + 2 * math.pi * k / n)) for k, rad in enumerate(radii)]


def _circle(d, cx, cy, r, angle):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)


def _square(d, cx, cy, r, angle):
    d.polygon(_polygon(cx, cy, [r] * 4, angle), fill=255)


def _triangle(d, cx, cy, r, angle):
    d.polygon(_polygon(cx, cy, [r] * 3, angle), fill=255)


def _star(d, cx, cy, r, angle):
    d.polygon(_polygon(cx, cy, [r, 0.4 * r] * 5, angle), fill=255)


def _cross(d, cx, cy, r, angle):
    t = max(2, int(0.35 * r))
    for a in (angle, angle + math.pi / 2):
        dx, dy = r * math.cos(a), r * math.sin(a)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=t)


def _ring(d, cx, cy, r, angle):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=max(2, int(0.3 * r)))


def _stripes(d, rng, cover, base_angle, w, h):
    period = rng.uniform(16, 32)
    a = base_angle + rng.uniform(-0.2, 0.2)
    nx, ny = math.cos(a), math.sin(a)  # stripe direction; offsets go along the normal
    span = w + h
    for k in range(int(-span / period), int(span / period) + 1):
        ox, oy = -ny * k * period + w / 2, nx * k * period + h / 2
        d.line([(ox - nx * span, oy - ny * span), (ox + nx * span, oy + ny * span)],
               fill=255, width=max(1, round(cover * period)))


def _hstripes(d, rng, cover, w, h):
    _stripes(d, rng, cover, 0.0, w, h)


def _vstripes(d, rng, cover, w, h):
    _stripes(d, rng, cover, math.pi / 2, w, h)


def _checker(d, rng, cover, w, h):
    cell = rng.uniform(10, 20)
    side = cell * math.sqrt(2 * cover)
    for j in range(int(h / cell) + 1):
        for i in range(j % 2, int(w / cell) + 1, 2):
            x, y = (i + 0.5) * cell - side / 2, (j + 0.5) * cell - side / 2
            d.rectangle([x, y, x + side - 1, y + side - 1], fill=255)


def _dots(d, rng, cover, w, h):
    step = rng.uniform(14, 26)
    rad = step * math.sqrt(cover / math.pi)
    for y in np.arange(step / 2, h, step):
        for x in np.arange(step / 2, w, step):
            d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)


_TEXTURES = {"hstripes": _hstripes, "vstripes": _vstripes, "checker": _checker, "dots": _dots}
_SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross,
           "ring": _ring, "star": _star}
