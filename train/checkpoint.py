"""Atomic checkpoints in ``RUN/checkpoints/step_<step>/``.

Writing: every rank writes into ``.step_<step>.tmp/`` (rank 0: ``state.pt`` with the models,
optimizer, loss centers, schedule position and config; every rank: ``rank<r>.pt`` with its
RNG states and loader position; DeepSpeed adds its own ``deepspeed/`` files), each file
flushed to disk; then rank 0 renames the folder to ``step_<step>`` (one atomic rename), so a
crash at any moment leaves either the new checkpoint complete or only a temporary folder
that is ignored and later removed. Older complete checkpoints beyond ``keep`` are deleted
after the rename. Several nodes need the run directory on a shared filesystem, as DeepSpeed does.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d{9})$")


class CheckpointError(RuntimeError):
    pass


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """resume: 'auto' (newest complete checkpoint, or None), 'never', or a checkpoint folder."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.pt").is_file():
        raise CheckpointError(f"run.resume={resume}: not a complete checkpoint folder (no state.pt); "
                              f"give a RUN/checkpoints/step_* folder, auto or never")
    return path


def _save_file(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | Path, step: int, rank: int, state: dict | None, rank_state: dict,
                    barrier: Callable[[], None], keep: int = 2,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank calls it. ``state`` is rank 0's (None elsewhere); ``extra(tmp)``
    writes engine-owned files (DeepSpeed) into the temporary folder on every rank."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step_{step:09d}"
    tmp = root / f".step_{step:09d}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*.tmp"):  # left by a crash while saving
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # the same step saved before (a resumed run ending where it began)
            shutil.rmtree(final)
        tmp.mkdir()
    barrier()
    if extra is not None:
        extra(tmp)
    _save_file(rank_state, tmp / f"rank{rank}.pt")
    if rank == 0:
        _save_file(state, tmp / "state.pt")
    barrier()
    if rank == 0:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, rank: int, world: int) -> tuple[dict, dict]:
    """(rank 0's state, this rank's state). The world size must match the one that saved."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    saved_world = state.get("world", 1)
    if saved_world != world:
        raise CheckpointError(f"{path} was written by {saved_world} processes and this run has {world}; "
                              f"resume with --num_processes {saved_world} or start afresh with run.resume=never")
    rank_file = path / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{path} has no {rank_file.name}; the checkpoint is incomplete")
    return state, torch.load(rank_file, map_location="cpu", weights_only=False)
