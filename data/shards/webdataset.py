"""WebDataset shards: one tar of ``KEY.cls``, ``KEY.jpg``, ``KEY.json`` per sample + DALI index.

A shard is never visible under its final name before it is complete: samples go to a
temporary file, DALI's ``wds2idx.IndexCreator`` indexes it (the index format that
``fn.readers.webdataset(index_paths=...)`` reads), then the index and the tar are renamed.
Tar headers carry a fixed mtime and owner, so the same samples give the same bytes:
a resumed or split conversion is byte-identical to a single uninterrupted one.
"""
from __future__ import annotations

import os
import socket
import tarfile
from pathlib import Path

from wds2idx import IndexCreator

TAR_MTIME = 0.0  # reproducible tar headers
MAX_KEY_LEN = 90  # KEY + ".json" fits a ustar name (100 characters)


def shard_stem(index: int) -> str:
    return f"shard-{index:06d}"


def tmp_suffix() -> str:
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


class ShardWriter:
    """Writes one shard atomically. `index=True` also writes the DALI index beside it."""

    def __init__(self, tar_path: Path, index: bool = True):
        self.tar_path = Path(tar_path)
        self.idx_path = self.tar_path.with_suffix(".idx") if index else None
        self.tmp_tar = self.tar_path.with_name(self.tar_path.name + tmp_suffix())
        import webdataset as wds  # imports torch (~1 s): only where shards are written

        self._stream = open(self.tmp_tar, "wb")
        self._writer = wds.TarWriter(self._stream, mtime=TAR_MTIME, user="hide", group="hide",
                                     mode=0o444)
        # Plain ustar headers: tarfile's default PAX headers cost ~70 us per member (a third of
        # a pass-through sample) and carry nothing for our ASCII names of <= 100 characters
        # (keys are capped at MAX_KEY_LEN by the plan). Set before the first member is written.
        self._writer.tarstream.format = tarfile.USTAR_FORMAT
        self.num_samples = 0

    def write(self, key: str, jpeg: bytes, label: int, meta: dict) -> None:
        self._writer.write({"__key__": key, "jpg": jpeg, "cls": label, "json": meta})
        self.num_samples += 1

    def commit(self) -> bool:
        """Publish the shard. A shard with no samples is not written (returns False)."""
        self._writer.close()
        self._stream.close()  # no fsync: see data/shards/convert.py on crashes
        if self.num_samples == 0:
            self.tmp_tar.unlink()
            return False
        if self.idx_path is not None:
            tmp_idx = self.idx_path.with_name(self.idx_path.name + tmp_suffix())
            with IndexCreator(str(self.tmp_tar), str(tmp_idx), verbose=False) as creator:
                creator.create_index()
            os.replace(tmp_idx, self.idx_path)
        os.replace(self.tmp_tar, self.tar_path)
        return True

    def abort(self) -> None:
        """Drop the unfinished shard. The tar stream is closed before its file, or tarfile
        would flush into a closed file when it is garbage-collected."""
        try:
            if not self._stream.closed:
                self._writer.close()
        except (OSError, ValueError):
            pass
        finally:
            self._stream.close()
            self.tmp_tar.unlink(missing_ok=True)
