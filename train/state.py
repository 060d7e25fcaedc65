"""What a trainer's checkpoint holds, and how a run resumes from it (train/checkpoint.py
writes and reads the files atomically).

    save_trainer(trainer) -> Path        collective: every rank calls it
    resume_trainer(trainer) -> Path | None

Rank 0's ``state.pt``: step, world size, config, student, teacher (None for a method without
one), the method's buffers (loss centers), the backend's optimizer, the non-finite counters.
Every rank's ``rank<r>.pt``: RNG states, loader position, skipped samples and, under ZeRO-3,
its teacher partitions. DeepSpeed writes its own files beside them.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from train import checkpoint as ckpt


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_trainer(t) -> Path:
    b = t.backend
    state = None
    if t.rank == 0:
        state = {"step": t.step, "world": t.world, "config": OmegaConf.to_container(t.cfg, resolve=True),
                 "student": b.module.state_dict(),
                 "teacher": b.teacher_module.state_dict() if b.teacher_module is not None else None,
                 "method": t.method.state_dict(), "backend": b.state_dict(),
                 "nonfinite_total": t.nonfinite_total, "nonfinite_run": t.nonfinite_run}
    rank_state = {"rng": _rng_state(), "loader": t.loader.state(), "skipped": list(t.loader.stats.corrupt)}
    if b.name == "deepspeed" and b.stage == 3 and b.teacher_module is not None:  # this rank's teacher partitions
        rank_state["teacher_partitions"] = [p.detach().cpu() for p in b.pairs[0]]
    return ckpt.save_checkpoint(t.run_dir, t.step, t.rank, state, rank_state, t._barrier,
                                t.cfg.run.keep_checkpoints, extra=b.save)


def resume_trainer(t) -> Path | None:
    """Load the checkpoint that ``run.resume`` names into the built trainer (None: none)."""
    path = ckpt.resolve_resume(t.run_dir, t.cfg.run.resume)
    if path is None:
        return None
    state, rank_state = ckpt.load_checkpoint(path, t.rank, t.world)
    _check_same_model(t.cfg, path, state["config"])
    b = t.backend
    if b.name == "deepspeed":
        b.load(path)
        if b.teacher_module is not None and b.stage == 3:
            for p, saved in zip(b.pairs[0], rank_state["teacher_partitions"]):
                p.data.copy_(saved)
        elif b.teacher_module is not None:
            b.teacher_module.load_state_dict(state["teacher"])
    else:
        b.module.load_state_dict(state["student"])
        if b.teacher_module is not None:
            b.teacher_module.load_state_dict(state["teacher"])
        b.load_state_dict(state["backend"])
    t.method.load_state_dict(state["method"])
    t.step = state["step"]
    t.nonfinite_total, t.nonfinite_run = state["nonfinite_total"], state["nonfinite_run"]
    t.loader.load_state(rank_state["loader"])
    t.loader.stats.corrupt.extend(rank_state["skipped"])
    _set_rng_state(rank_state["rng"])
    return path


def _check_same_model(cfg, path: Path, saved: dict) -> None:
    """A checkpoint of another model or method cannot be resumed: say which keys differ."""
    now = OmegaConf.to_container(cfg, resolve=True)
    keys = [f"{section}.{k}" for section in ("model", "method") for k in now[section]
            if section == "model" or k in ("name", "patch_weight")]
    diff = [f"{k} {_get(saved, k)!r} -> {_get(now, k)!r}" for k in keys if _get(saved, k) != _get(now, k)]
    if diff:
        raise ckpt.CheckpointError(f"{path} was trained with another model ({'; '.join(diff)}); "
                                   f"use a new run.dir or run.resume=never")


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
