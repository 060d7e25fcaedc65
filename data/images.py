"""Turn the bytes of one source image into the JPEG we store in a shard.

Two paths:

1. pass-through: bytes that already are a complete baseline, 8-bit, 3-component (YCbCr)
   JPEG within ``max_side`` are stored byte-for-byte. Deciding this is a structural check
   (`inspect_baseline_jpeg`), not a decode: it walks the markers, requires a baseline SOF,
   an interleaved 3-component scan, an EOI at the end, and entropy-coded data free of
   stray markers. That catches truncated files, progressive / arithmetic / lossless /
   CMYK / grayscale JPEGs and anything that is not a JPEG, at ~1/10 of a decode's cost.
   A decode would not catch more: libjpeg decodes corrupted entropy data, and a file cut
   short that still ends in an EOI, as artefacts without an error (200 of 200 corrupted
   test files decoded at 1/8 scale), so we do not pay for one. The loaders skip and count
   samples that fail to decode at training time.
2. re-encode: everything else is decoded with Pillow, converted to RGB (grayscale, CMYK,
   palette, RGBA over white, 16-bit scaled to 8-bit), resized so the longer side is at most
   ``max_side`` (bicubic, JPEG draft decoding at a reduced DCT scale when the image is at
   least twice too large) and encoded as a baseline JPEG at ``quality``.

Progressive JPEGs are re-encoded on purpose: the hardware JPEG decoders that DALI uses on
A100/H100 only take baseline streams, so a progressive file would fall back to a slower path.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 400_000_000  # larger images are skipped (each would need > 1 GB per worker)

_SOF_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline, extended sequential (8-bit here)
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_RGB_COMPONENT_IDS = (82, 71, 66)  # 'R', 'G', 'B': an RGB-coded (not YCbCr) JPEG
_STRAY_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in entropy-coded data: a cut or corrupt scan


def configure_pillow() -> None:
    """Runtime setup for a converting process: allow images up to MAX_PIXELS (Pillow's own
    guard would refuse ImageNet-22k's largest photos); larger ones are skipped by `prepare`."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadImage(Exception):
    """The input cannot be turned into an image; the message is the skip reason."""


@dataclass(frozen=True)
class Prepared:
    jpeg: bytes                 # what goes into the shard
    size: tuple[int, int]       # (width, height) of `jpeg`
    source_size: tuple[int, int]  # (width, height) of the input
    source_mode: str            # Pillow mode of the input ("RGB", "CMYK", "I;16", ...)
    passthrough: bool           # True: `jpeg` is the input, byte-for-byte
    resized: bool


def inspect_baseline_jpeg(buf: bytes) -> tuple[int, int] | None:
    """(width, height) if `buf` is a complete baseline 8-bit YCbCr JPEG, else None.

    None means "not provably a plain baseline JPEG", never "broken": such input takes
    the decode path, which decides whether it is usable.
    """
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8 or buf[n - 2] != 0xFF or buf[n - 1] != 0xD9:
        return None
    pos, size = 2, None
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return None  # standalone markers do not belong in the header
        seglen = (buf[pos + 2] << 8) | buf[pos + 3]
        end = pos + 2 + seglen
        if seglen < 2 or end > n:
            return None
        seg = buf[pos + 4:end]
        if marker in _SOF_SEQUENTIAL_HUFFMAN:
            if size is not None or len(seg) < 15 or seg[0] != 8 or seg[5] != 3:
                return None
            height, width = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4]
            if width == 0 or height == 0 or (seg[6], seg[9], seg[12]) == _RGB_COMPONENT_IDS:
                return None
            size = (width, height)
        elif marker in _SOF_OTHER:
            return None  # progressive, lossless, arithmetic or hierarchical
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12 and seg[11] == 0:
            return None  # Adobe transform 0: components are RGB, not YCbCr
        elif marker == 0xDA:  # start of scan: the rest is entropy-coded data + EOI
            if size is None or len(seg) < 1 or seg[0] != 3:
                return None  # non-interleaved scans: let the decoder judge
            return size if _entropy_data_clean(buf, end, n - 2) else None
        pos = end
    return None


def _entropy_data_clean(buf: bytes, start: int, stop: int) -> bool:
    """In [start, stop), every 0xFF is a stuffed byte (FF 00) or a restart marker (FF D0-D7).
    An 0xFF at stop - 1 pairs with the EOI's 0xFF at stop: invalid, as it should be."""
    return _STRAY_MARKER.search(buf, start, stop + 1) is None


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Scale (w, h) so the longer side is at most `max_side`; smaller sizes are unchanged."""
    w, h = size
    longest = max(w, h)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def prepare(buf: bytes, max_side: int, quality: int, passthrough: bool = True) -> Prepared:
    """Bytes of one input -> the JPEG to store. Raises BadImage(reason) when unusable."""
    if not buf:
        raise BadImage("empty file")
    if passthrough:
        size = inspect_baseline_jpeg(buf)
        if size is not None and max(size) <= max_side:
            return Prepared(buf, size, size, "RGB", passthrough=True, resized=False)
    return _reencode(buf, max_side, quality)


def _reencode(buf: bytes, max_side: int, quality: int) -> Prepared:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(buf))
    except UnidentifiedImageError:
        raise BadImage("not an image (no decoder recognises it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"unreadable image header: {err}") from None
    source_size, source_mode = im.size, im.mode
    if source_size[0] * source_size[1] > MAX_PIXELS:
        raise BadImage(f"image too large: {source_size[0]}x{source_size[1]} > {MAX_PIXELS} pixels")
    target = fit_within(source_size, max_side)
    try:
        if im.format == "JPEG" and target != source_size:
            im.draft(im.mode, target)  # decode at 1/2, 1/4 or 1/8 scale when that still covers target
        im.load()
        rgb = to_rgb(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"truncated or corrupt image data: {err}") from None
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)  # baseline, 4:2:0, no optimisation pass
    return Prepared(out.getvalue(), rgb.size, source_size, source_mode,
                    passthrough=False, resized=target != source_size)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparency is composited over white."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grayscale
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        gray = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
