"""manifest.json: what a conversion wrote, read back by loaders and by a resumed conversion.

Keys: ``format`` ("webdataset" | "ffcv"), ``num_samples``, ``num_read``, ``classes`` (names in
label order), ``shards`` ([{file, num_samples} + ``index`` for WebDataset]), ``skipped``
([{path, reason}]), ``options`` (everything that decides the output), ``source``, ``plan``
(fingerprint of options + ordered inputs), ``stats``, ``version``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
VERSION = 1


class ManifestError(Exception):
    """A shard folder has no usable manifest; the message says what to do."""


def write_json_atomic(path: Path, obj, durable: bool = False) -> None:
    """Write JSON so that `path` is either absent, the old content, or the complete new one
    (to other processes; `durable` also fsyncs it, for what must survive a machine crash)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST}: convert a dataset into it with "
                            f"tools/convert.py (an interrupted conversion finishes when re-run)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON ({err}); re-run the conversion") from None
    if manifest.get("version") != VERSION:
        raise ManifestError(f"{path} has version {manifest.get('version')}, this hide reads "
                            f"version {VERSION}; convert the dataset again")
    return manifest
