"""Student passes: what a method asks the student to compute, and how the engine runs it.

The engine's step, for every method, in the order the method declares (``step_order``):

    targets = method.targets(teacher, views, masks, sched)   # one teacher forward, no grad
    masks   = method.masks(views, targets, generator)        # device tensors
    passes  = method.student_passes(views, masks)            # list[StudentPass]
    outputs = student(passes, mode)                          # one call of the (wrapped) student
    losses  = method.losses(outputs, targets, masks, sched)  # dict, "loss" is what backward sees

``TARGETS_THEN_MASKS`` (AttMask: the masks come from the teacher's attention; ``masks`` is
None when the targets are made) or ``MASKS_THEN_TARGETS`` (MAE, SdAE, ExtreMA: the masks are
drawn first; SdAE's teacher input is the masked set; ``targets`` is None when the masks are
made). A method without a teacher gets ``teacher=None`` and makes its targets from the views.

A ``StudentPass`` is one student computation of static shape: ``group`` names the net's
function that computes it, ``shared`` holds tensors that every pass of the group uses as they
are (the image batch), ``own`` this pass's tensors (its keep indices) with the batch first.
Passes of one group differ only in ``own``, so the engine may

  * ``batched``: stack the ``own`` tensors along a new dim 1 ([B, P, ...]) and run the group
    once on B*P sequences (ExtreMA's K masks: one patch embedding, one trunk call);
  * ``loop``: run every pass on its own ([B, 1, ...]), the way a Python loop over masks does.

Both give the same numbers for the same passes (up to float summation order); the student
module sees a single ``forward`` call per step either way, which DDP and DeepSpeed require.
A net that runs passes implements ``run_group(group, shared, own) -> dict`` whose outputs have
B*P rows ordered b*P + p, and inherits ``forward`` from ``PassRunner``. It may also implement
``finish_group(group, out) -> dict``, run once per group on the B*P rows of all its passes in
either mode: what must see every pass at once (LC-MAE's heads, whose BatchNorm statistics
cover all B*K rows) goes there, so that the loop computes what the batched form computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

MODES = ("batched", "loop")
TARGETS_THEN_MASKS = ("targets", "masks")
MASKS_THEN_TARGETS = ("masks", "targets")


@dataclass
class StudentPass:
    group: str
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    own: dict[str, torch.Tensor] = field(default_factory=dict)


def run_passes(run_group, passes: list[StudentPass], mode: str = "batched",
               finish_group=None) -> list[dict[str, torch.Tensor]]:
    """Outputs of every pass, in the order of ``passes`` (each output has the pass's batch first)."""
    if mode not in MODES:
        raise ValueError(f"student pass mode {mode!r}: choose one of {', '.join(MODES)}")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(passes):
        groups.setdefault(p.group, []).append(i)
    outputs: list[dict[str, torch.Tensor] | None] = [None] * len(passes)
    for group, idx in groups.items():
        first = passes[idx[0]]
        for i in idx[1:]:
            if passes[i].shared.keys() != first.shared.keys() or any(
                    passes[i].shared[k] is not v for k, v in first.shared.items()) \
                    or passes[i].own.keys() != first.own.keys():
                raise ValueError(f"passes of group {group!r} must share the same tensors and own the same keys")
        if len(idx) == 1:  # B*1 rows: the group's output as it is (no copy)
            out = run_group(group, first.shared, {k: v.unsqueeze(1) for k, v in first.own.items()})
        elif mode == "loop":
            each = [run_group(group, passes[i].shared, {k: v.unsqueeze(1) for k, v in passes[i].own.items()})
                    for i in idx]                                                            # P x [B, ...]
            out = {k: torch.stack([o[k] for o in each], dim=1).flatten(0, 1) for k in each[0]}  # [B*P, ...]
        else:
            own = {k: torch.stack([passes[i].own[k] for i in idx], dim=1) for k in first.own}   # [B, P, ...]
            out = run_group(group, first.shared, own)                                            # [B*P, ...]
        if finish_group is not None:
            out = finish_group(group, out)
        for j, i in enumerate(idx):
            outputs[i] = {k: v.unflatten(0, (-1, len(idx)))[:, j] for k, v in out.items()}
    return outputs


@dataclass
class MaskDraws:
    """What a method's ``masks`` draws from.

    shared  one stream for every rank, seeded by (seed, step): draw for the world's batch
            (``rows(B)`` = B x world) and keep this rank's rows (``local``), so that an image's
            mask does not depend on how many processes share the batch
    own     this rank's stream, seeded by (seed, step, rank), for draws made per rank
    A bare ``torch.Generator`` stands for both, on one process (``as_draws``).
    """
    shared: torch.Generator
    own: torch.Generator
    rank: int = 0
    world: int = 1

    def rows(self, batch: int) -> int:
        return batch * self.world

    def local(self, t: torch.Tensor) -> torch.Tensor:
        """[B x world, ...] drawn from ``shared`` -> this rank's [B, ...]."""
        b = t.shape[0] // self.world
        return t[self.rank * b:(self.rank + 1) * b]


def as_draws(draws) -> MaskDraws:
    return draws if isinstance(draws, MaskDraws) else MaskDraws(draws, draws)


class PassRunner(nn.Module):
    """``forward(passes, mode)``: every pass in one module call (see the module docstring)."""

    def forward(self, passes: list[StudentPass], mode: str = "batched") -> list[dict[str, torch.Tensor]]:
        return run_passes(self.run_group, passes, mode, self.finish_group)

    def run_group(self, group: str, shared: dict, own: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def finish_group(self, group: str, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What runs once on the B*P rows of every pass of ``group`` (default: nothing)."""
        return out


def targets_and_masks(method, teacher, views, sched: dict, generator: torch.Generator) -> tuple:
    """(targets, masks), made in the order the method declares; the targets under no_grad."""
    made: dict = {"targets": None, "masks": None}
    for stage in method.step_order:
        if stage == "targets":
            with torch.no_grad():
                made["targets"] = method.targets(teacher, views, made["masks"], sched)
        else:
            made["masks"] = method.masks(views, made["targets"], generator)
    return made["targets"], made["masks"]


def shared_step(method, student, teacher, views, sched: dict, generator: torch.Generator,
                mode: str = "batched") -> dict[str, torch.Tensor]:
    """views -> targets (one teacher forward) and masks -> the student passes -> losses."""
    targets, masks = targets_and_masks(method, teacher, views, sched, generator)
    outputs = student(method.student_passes(views, masks), mode)
    return method.losses(outputs, targets, masks, sched)
