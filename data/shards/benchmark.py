"""Conversion benchmark: the converter against a naive single-process PIL loop, same tree,
same run. Figures are steady-state: imports are warmed and the tree is in the page cache
before anything is timed, so fixed start-up costs (which vanish over ImageNet's 1.28 M
images) do not decide the ratios. Each figure is the median of `repeats` runs.

Two trees. ``within``: every image already within --max-side, the images pass-through is
for; the goals are checked here. ``mixed``: one image in ten is a larger photo that must be
resized whatever the options, closer to ImageNet-1k as downloaded; its pass-through ratio
is lower because those images cost a full re-encode in both runs. Defaults: the production
shard size (1000) and enough images for two shards per worker, so per-run fixed costs
(pool start, index files, manifest) weigh about as little as they do on a real dataset.
"""
from __future__ import annotations

import io
import os
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data.images import fit_within
from data.shards.convert import convert
from data.shards.plan import ConvertOptions
from data.sources import open_source

GOALS = {"reencode_vs_naive": 1.8, "passthrough_vs_reencode": 5.0}


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    small = rng.integers(0, 256, size=(h // 12, w // 12, 3), dtype=np.uint8)
    im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def imagenet_like_tree(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """`n` photo-like baseline JPEGs (quality 90) in `classes` folders, sized like most of
    ImageNet-1k: a 500-px longer side (4:3 55 %, 3:4 28 %, 3:2 17 %)."""
    rng = np.random.default_rng(seed)
    shapes = [(500, 375), (375, 500), (500, 333)]
    for i in range(n):
        w, h = shapes[rng.choice(3, p=[0.55, 0.28, 0.17])]
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        _photo(rng, w, h).save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def with_large_photos(src: Path, root: Path, every: int, seed: int = 1) -> Path:
    """A copy of `src` (hard links) in which every `every`-th image is a 1024x768 photo."""
    rng = np.random.default_rng(seed)
    for i, path in enumerate(sorted(src.rglob("*.JPEG"))):
        target = root / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if i % every == 0:
            _photo(rng, 1024, 768).save(target, quality=90)
        else:
            os.link(path, target)
    return root


def naive_convert(src: Path, out_tar: Path, max_side: int = 512, quality: int = 90) -> int:
    """What a hand-written script does: one process, decode -> RGB -> resize -> JPEG -> tar."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    n = 0
    with tarfile.open(out_tar, "w") as tf:
        for label, wnid in enumerate(classes):
            for path in sorted((src / wnid).iterdir()):
                im = Image.open(path).convert("RGB")
                target = fit_within(im.size, max_side)
                if target != im.size:
                    im = im.resize(target, Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=quality)
                for ext, data in (("jpg", buf.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{wnid}_{path.stem}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                n += 1
    return n


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(work: Path, src: Path, workers: int, repeats: int, shard_size: int,
             with_naive: bool) -> dict:
    for p in src.rglob("*.JPEG"):  # page cache
        p.read_bytes()
    source = open_source(str(src))

    def run_converter(passthrough: bool, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        convert(source, out, ConvertOptions(shard_size=shard_size, workers=workers,
                                            passthrough=passthrough), progress=False)

    run_converter(True, work / "warmup")  # imports (webdataset -> torch) and code paths
    times = {"naive": [], "reencode": [], "passthrough": []} if with_naive else {"reencode": [], "passthrough": []}
    for _ in range(repeats):
        if with_naive:
            times["naive"].append(_timed(lambda: naive_convert(src, work / "naive.tar")))
        times["reencode"].append(_timed(lambda: run_converter(False, work / "reencode")))
        times["passthrough"].append(_timed(lambda: run_converter(True, work / "passthrough")))
    n = len(source.items)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    ratios = {"passthrough_vs_reencode": rate["passthrough"] / rate["reencode"]}
    if with_naive:
        ratios["reencode_vs_naive"] = rate["reencode"] / rate["naive"]
    return {"images": n, "images_per_s": {k: round(v, 1) for k, v in rate.items()},
            "seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
            "ratios": {k: round(v, 2) for k, v in ratios.items()}}


def benchmark_convert(work: Path, images: int = 4000, workers: int = 2, repeats: int = 3,
                      shard_size: int = 1000, large_every: int = 10) -> dict:
    within_src = imagenet_like_tree(work / "within" / "src", images)
    mixed_src = with_large_photos(within_src, work / "mixed" / "src", large_every)
    within = _measure(work / "within", within_src, workers, repeats, shard_size, with_naive=True)
    mixed = _measure(work / "mixed", mixed_src, workers, repeats, shard_size, with_naive=True)
    ratios = within["ratios"]
    return {
        "benchmark": "convert",
        "workers": workers, "repeats": repeats, "shard_size": shard_size,
        "trees": {"within": "baseline JPEGs q90 with a 500-px longer side (all within --max-side 512)",
                  "mixed": f"the same tree with every {large_every}th image a 1024x768 photo "
                           f"(resized in every run)"},
        "within": within,
        "mixed": mixed,
        "goals": GOALS,
        "goals_met": {k: ratios[k] >= g for k, g in GOALS.items()},
    }
