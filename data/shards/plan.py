"""The conversion plan: which input goes into which shard, as a pure function of
(options, ordered inputs). Every job of a split conversion computes the same plan, so
job j can write shards j, j + num_jobs, ... and the parts add up to a single run.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from data.shards.webdataset import MAX_KEY_LEN
from data.sources import Item, Source

FORMATS = ("webdataset", "ffcv")


class ConvertError(Exception):
    """The conversion cannot go ahead; the message names the problem and the fix."""


@dataclass(frozen=True)
class ConvertOptions:
    format: str = "webdataset"
    max_side: int = 512        # px, longer side; smaller images are untouched
    quality: int = 90          # JPEG quality for re-encoded images
    shard_size: int = 1000     # samples per shard (per part tar for ffcv)
    seed: int = 0              # shuffles samples across shards
    passthrough: bool = True   # store baseline RGB JPEGs within max_side byte-for-byte
    workers: int = 2           # processes; does not change the output
    job_index: int = 0         # this machine's part of a split conversion
    num_jobs: int = 1

    def validate(self) -> None:
        checks = [
            (self.format in FORMATS, f"--format must be one of {', '.join(FORMATS)}"),
            (16 <= self.max_side <= 65535, "--max-side must be between 16 and 65535 px"),
            (1 <= self.quality <= 100, "--quality must be between 1 and 100"),
            (self.shard_size >= 1, "--shard-size must be at least 1"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.num_jobs >= 1, "--num-jobs must be at least 1"),
            (0 <= self.job_index < self.num_jobs,
             f"--job-index must be in [0, {self.num_jobs - 1}] for --num-jobs {self.num_jobs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConvertError(message)

    def identity(self) -> dict:
        """The options that decide the output (not how the work is spread)."""
        out = asdict(self)
        for k in ("workers", "job_index", "num_jobs"):
            out.pop(k)
        return out


@dataclass(frozen=True)
class Sample:
    key: str     # WebDataset key: no dots, unique in the conversion
    item: Item


@dataclass
class Plan:
    shards: list[list[Sample]]
    fingerprint: str  # options + ordered (path, label) of every input

    def shards_of_job(self, job_index: int, num_jobs: int) -> list[int]:
        return [s for s in range(len(self.shards)) if s % num_jobs == job_index]


def make_plan(source: Source, opts: ConvertOptions) -> Plan:
    items = source.items
    keys = unique_keys([it.path for it in items])
    order = np.random.default_rng(opts.seed).permutation(len(items))
    samples = [Sample(keys[i], items[i]) for i in order]
    shards = [samples[s:s + opts.shard_size] for s in range(0, len(samples), opts.shard_size)]
    h = hashlib.sha256(json.dumps([opts.identity(), source.classes, source.skipped],
                                  sort_keys=True).encode())
    for it in items:
        h.update(f"{it.path}\0{it.label}\n".encode())
    return Plan(shards, h.hexdigest())


def unique_keys(paths: list[str]) -> list[str]:
    """Keys from source paths: extension dropped, anything but [A-Za-z0-9_-] -> '_'.

    Keys keep the source recognisable (``n01440764_n01440764_10026``). Two paths that
    sanitise alike get ``_2``, ``_3``, ... in input order, so keys stay unique and stable.
    A key longer than MAX_KEY_LEN keeps its start and gets a hash of the whole path.
    """
    used: set[str] = set()
    keys = []
    for path in paths:
        stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem.replace(".tar/", "/")).strip("_") or "sample"
        if len(base) > MAX_KEY_LEN - 12:  # room for the hash and a _N suffix
            base = f"{base[:MAX_KEY_LEN - 24]}_{hashlib.sha1(path.encode()).hexdigest()[:10]}"
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys
