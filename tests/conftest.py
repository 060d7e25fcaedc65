"""Shared fixtures: small generated image trees with every awkward case the converter meets."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (JPEG-compressible like a natural image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def _awkward_files(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected fate): passthrough | reencode | resize | skip."""
    photo = _photo(200, 150, seed)
    big = _photo(900, 600, seed + 1)
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    full = _encode(photo, quality=90)
    return {
        "baseline.JPEG": (full, "passthrough"),
        "progressive.JPEG": (_encode(photo, quality=90, progressive=True), "reencode"),
        "big.JPEG": (_encode(big, quality=90), "resize"),
        "gray.JPEG": (_encode(photo.convert("L")), "reencode"),
        "cmyk.JPEG": (_encode(photo.convert("CMYK")), "reencode"),
        "palette.png": (_encode(photo.convert("P"), "PNG"), "reencode"),
        "rgba.png": (_encode(rgba, "PNG"), "reencode"),
        "gray16.png": (_encode(Image.fromarray(gray16), "PNG"), "reencode"),
        "png_named.JPEG": (_encode(photo, "PNG"), "reencode"),
        "truncated.JPEG": (full[: len(full) // 2], "skip"),
        "empty.JPEG": (b"", "skip"),
        "notes.txt": (b"this is not an image\n", "skip"),
    }


@pytest.fixture(scope="session")
def images():
    """Factories for test images."""
    return SimpleNamespace(photo=_photo, encode=_encode, awkward=_awkward_files)


@pytest.fixture
def class_tree(tmp_path):
    """SRC/<wnid>/<file>: three classes; class n0000002 holds the awkward files."""
    root = tmp_path / "train"
    expected = {}
    for c, wnid in enumerate(["n00000001", "n00000002", "n00000003"]):
        (root / wnid).mkdir(parents=True)
        files = _awkward_files(seed=c) if wnid == "n00000002" else {
            f"{wnid}_{i}.JPEG": (_encode(_photo(120 + 8 * i, 96, 100 * c + i)), "passthrough")
            for i in range(6)}
        for name, (data, fate) in files.items():
            (root / wnid / name).write_bytes(data)
            expected[f"{wnid}/{name}"] = (c, fate)
    return SimpleNamespace(root=root, expected=expected, classes=["n00000001", "n00000002", "n00000003"])


@pytest.fixture
def synset_tars(tmp_path):
    """ImageNet-22k layout: SRC/<wnid>.tar with JPEG members; the last tar is cut short."""
    root = tmp_path / "in22k"
    root.mkdir()
    counts = {}
    for c, wnid in enumerate(["n10000001", "n10000002", "n10000003"]):
        path = root / f"{wnid}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(5):
                data = _encode(_photo(100, 80 + i, 1000 * c + i))
                info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        counts[wnid] = 5
    cut = root / "n10000003.tar"
    with tarfile.open(cut) as tf:
        last = tf.getmembers()[-1]
    cut.write_bytes(cut.read_bytes()[: last.offset_data + last.size // 2])  # last member cut in half
    return SimpleNamespace(root=root, counts=counts)


@pytest.fixture
def run_cli():
    """Run a tools/*.py script in a fresh interpreter, as a user would."""
    def run(script: str, *args, check: bool = False, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / script), *map(str, args)],
                              capture_output=True, text=True, cwd=ROOT, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc
    return run


@pytest.fixture
def corrupt_copy(tmp_path):
    """Copy a converted folder and zero the second half (EOI included) of global sample `victim`'s
    JPEG. Returns (folder, key, file holding it). Works for WebDataset shards and FFCV betons."""
    import shutil

    from data.shards.samples import BetonSamples, open_samples

    def plant(src: Path, victim: int):
        folder = tmp_path / f"corrupt-{src.name}"
        shutil.copytree(src, folder)
        samples = open_samples(folder)
        if isinstance(samples, BetonSamples):
            offset, size = int(samples.ptr[victim]), int(samples.size[victim])
        else:
            starts = np.cumsum([0] + samples.counts)
            shard = int(np.searchsorted(starts, victim, side="right") - 1)
            offset, size = (int(v) for v in samples._index[shard]["jpg"][victim - starts[shard]])
        name = samples.shard_of(victim)
        key = samples.read(victim)[2]
        raw = bytearray((folder / name).read_bytes())
        raw[offset + size // 2:offset + size] = b"\0" * (size - size // 2)
        (folder / name).write_bytes(bytes(raw))
        return folder, key, name
    return plant
