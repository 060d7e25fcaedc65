"""data/images.py: pass-through decisions, RGB conversion, resizing, skip reasons."""
import io

import numpy as np
import pytest
from PIL import Image

from data.images import BadImage, fit_within, inspect_baseline_jpeg, prepare, to_rgb


def test_fit_within_is_exact_and_leaves_small_images_alone():
    assert fit_within((900, 600), 512) == (512, 341)
    assert fit_within((600, 900), 512) == (341, 512)
    assert fit_within((512, 100), 512) == (512, 100)
    assert fit_within((5000, 3), 512) == (512, 1)  # never zero


def test_every_awkward_case_meets_its_fate(images):
    for name, (data, fate) in images.awkward().items():
        if fate == "skip":
            with pytest.raises(BadImage):
                prepare(data, max_side=512, quality=90)
            continue
        p = prepare(data, max_side=512, quality=90)
        out = Image.open(io.BytesIO(p.jpeg))
        out.load()
        assert out.format == "JPEG" and out.mode == "RGB", name
        assert out.size == p.size and max(p.size) <= 512, name
        assert not out.info.get("progressive"), name
        assert p.passthrough == (fate == "passthrough"), name
        assert (p.jpeg == data) == (fate == "passthrough"), name
        assert p.resized == (fate == "resize"), name
        assert p.size == fit_within(p.source_size, 512), name


def test_skip_reasons_name_the_problem(images):
    files = images.awkward()
    reasons = {}
    for name in ("truncated.JPEG", "empty.JPEG", "notes.txt"):
        with pytest.raises(BadImage) as err:
            prepare(files[name][0], 512, 90)
        reasons[name] = str(err.value)
    assert reasons["empty.JPEG"] == "empty file"
    assert "not an image" in reasons["notes.txt"]
    assert "truncated" in reasons["truncated.JPEG"]


def test_passthrough_off_reencodes_everything(images):
    data = images.encode(images.photo(64, 48, 0))
    p = prepare(data, 512, 75, passthrough=False)
    assert not p.passthrough and p.jpeg != data and p.size == (64, 48)


def test_structure_check_rejects_what_it_cannot_prove(images):
    photo = images.photo(64, 48, 1)
    good = images.encode(photo, quality=90)
    assert inspect_baseline_jpeg(good) == (64, 48)
    assert inspect_baseline_jpeg(images.encode(photo, progressive=True)) is None
    assert inspect_baseline_jpeg(images.encode(photo.convert("L"))) is None
    assert inspect_baseline_jpeg(images.encode(photo.convert("CMYK"))) is None
    assert inspect_baseline_jpeg(good[:-1]) is None          # EOI cut off
    assert inspect_baseline_jpeg(images.encode(photo, "PNG")) is None
    sos = good.rfind(b"\xff\xda")
    mid = (sos + len(good)) // 2
    stray = good[:mid] + b"\xff\xc4" + good[mid + 2:]        # a marker inside the entropy data
    assert inspect_baseline_jpeg(stray) is None


def test_rgba_is_composited_over_white_and_16_bit_is_scaled():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))             # fully transparent black
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    gray16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert gray16.mode.startswith("I")
    assert [to_rgb(gray16).getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]


def test_palette_png_under_a_jpeg_name_keeps_its_pixels(images):
    photo = images.photo(40, 30, 3)
    p = prepare(images.encode(photo, "PNG"), 512, 100)
    decoded = np.asarray(Image.open(io.BytesIO(p.jpeg)), dtype=np.int16)
    assert np.abs(decoded - np.asarray(photo, dtype=np.int16)).mean() < 3.0
