"""Random access to converted samples by global id, and the corrupt-sample rules every engine shares.
``read(i) -> (jpeg bytes, label, key)``, for both formats, so one sampler order
(data/sampler.py) can drive any engine that decodes JPEG bytes itself (DALI's external
source, the torchvision reference).

- WebDataset: offsets and sizes come from the DALI index beside each tar (written by
  DALI's wds2idx, format ``v1.2 N`` then per sample ``ext offset size name`` per
  component), so a sample is two ``pread`` calls, no tar parsing.
- FFCV: the beton's metadata (``data_ptr``) and allocation table give each JPEG's bytes;
  the file is memory-mapped.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from data.images import inspect_baseline_jpeg
from data.sampler import locate, shard_starts
from data.shards.ffcv import BETON
from data.shards.manifest import load_manifest

log = logging.getLogger(__name__)


class SampleError(Exception):
    """A shard's files do not match its manifest; the message names the file."""


class CorruptSample(RuntimeError):
    """Strict mode: a sample that is not a complete JPEG (names the file and key)."""


def check_sample(samples, i: int, data: bytes, key: str, epoch: int, strict: bool) -> dict | None:
    """None for a complete baseline JPEG (all the converter writes). Otherwise, the skip record
    {shard, key, epoch} (also logged), or CorruptSample in strict mode. Used by every engine."""
    if inspect_baseline_jpeg(data) is not None:
        return None
    shard = samples.shard_of(i)
    if strict:
        raise CorruptSample(f"sample {key} in {shard} is not a complete JPEG; fix or re-convert that file")
    log.warning("skipping corrupt sample %s in %s (replaced by another sample of its batch)", key, shard)
    return {"shard": shard, "key": key, "epoch": epoch}


def replacement_sources(size: int, bad: list[int]) -> list[int]:
    """For each bad position of a batch of `size`, the good position whose sample fills it
    (keeps batches full and their shapes static): the n-th bad takes the n-th good, cyclically."""
    good = [j for j in range(size) if j not in set(bad)]
    if not good:
        raise CorruptSample(f"every sample of a batch of {size} is corrupt")
    return [good[n % len(good)] for n in range(len(bad))]


class WebDatasetSamples:
    def __init__(self, folder: str | Path, manifest: dict | None = None):
        self.folder = Path(folder)
        self.manifest = manifest or load_manifest(folder)
        self.counts = [s["num_samples"] for s in self.manifest["shards"]]
        self._starts = shard_starts(self.counts)
        self._index = [self._parse(self.folder / s["index"], s["num_samples"]) for s in self.manifest["shards"]]
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(self.counts)

    def shard_name(self, shard: int) -> str:
        return self.manifest["shards"][shard]["file"]

    def shard_of(self, i: int) -> str:
        """The file that holds global sample i."""
        return self.shard_name(locate(self._starts, i)[0])

    @staticmethod
    def _parse(path: Path, expected: int) -> dict:
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise SampleError(f"cannot read the DALI index {path}: {err.strerror}; convert the dataset again") from None
        head = lines[0].split() if lines else []
        if len(head) != 2 or head[0] != "v1.2" or int(head[1]) != expected or len(lines) != expected + 1:
            raise SampleError(f"{path} does not describe {expected} samples as the manifest says; "
                              f"convert the dataset again")
        fields = {"jpg": [], "cls": []}
        keys = []
        for line in lines[1:]:
            parts = line.split()
            comp = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
            for ext in fields:
                if ext not in comp:
                    raise SampleError(f"{path}: a sample has no .{ext} component")
                fields[ext].append(comp[ext])
            keys.append(parts[3].rsplit(".", 1)[0])
        return {"jpg": np.array(fields["jpg"], dtype=np.int64), "cls": np.array(fields["cls"], dtype=np.int64),
                "keys": keys}

    def _fd(self, shard: int) -> int:
        if shard not in self._fds:  # one descriptor per shard and process (pread is thread-safe)
            self._fds[shard] = os.open(self.folder / self.shard_name(shard), os.O_RDONLY)
        return self._fds[shard]

    def read(self, i: int) -> tuple[bytes, int, str]:
        shard, j = locate(self._starts, i)
        idx = self._index[shard]
        (jo, js), (co, cs) = idx["jpg"][j], idx["cls"][j]
        fd = self._fd(shard)
        jpeg, label = os.pread(fd, int(js), int(jo)), os.pread(fd, int(cs), int(co))
        if len(jpeg) != js or len(label) != cs:
            raise SampleError(f"{self.shard_name(shard)} is shorter than its index says (key {idx['keys'][j]})")
        return jpeg, int(label), idx["keys"][j]

    def __getstate__(self):  # DataLoader workers open their own descriptors
        return {**self.__dict__, "_fds": {}}


class BetonSamples:
    def __init__(self, folder: str | Path, manifest: dict | None = None):
        from ffcv.reader import Reader

        self.folder = Path(folder)
        self.manifest = manifest or load_manifest(folder)
        path = self.folder / BETON
        reader = Reader(str(path))
        column = {name: reader.metadata[f"f{i}"] for i, name in enumerate(reader.field_names)}
        size_at = dict(zip(reader.alloc_table["ptr"].tolist(), reader.alloc_table["size"].tolist()))
        self.ptr = column["image"]["data_ptr"].astype(np.int64)
        self.size = np.array([size_at[p] for p in self.ptr.tolist()], dtype=np.int64)
        self.labels = column["label"].astype(np.int64)
        self.counts = [len(self.ptr)]
        self.path = path
        self._map = None

    def __len__(self) -> int:
        return len(self.ptr)

    def shard_name(self, shard: int) -> str:
        return BETON

    def shard_of(self, i: int) -> str:
        return BETON

    def read(self, i: int) -> tuple[bytes, int, str]:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        p, n = int(self.ptr[i]), int(self.size[i])
        return self._map[p:p + n].tobytes(), int(self.labels[i]), str(i)

    def __getstate__(self):
        return {**self.__dict__, "_map": None}


def open_samples(folder: str | Path):
    """The random-access reader for a converted folder, by its manifest's format."""
    manifest = load_manifest(folder)
    return (WebDatasetSamples if manifest["format"] == "webdataset" else BetonSamples)(folder, manifest)
