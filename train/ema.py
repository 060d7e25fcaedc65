"""The EMA teacher update: theta_t <- m * theta_t + (1 - m) * theta_s, for every parameter
the teacher has and every floating-point buffer (BatchNorm's running mean and variance: a
teacher in eval mode normalises with the EMA of the student's statistics, as timm's ModelEma
and LC-MAE's code do), as two fused ``torch._foreach`` kernels (no Python loop over tensors)."""
from __future__ import annotations

import torch
import torch.nn as nn


def paired_parameters(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher and student parameters matched by name; the teacher may lack student-only parts
    (e.g. ExtreMA's predictor), but every teacher parameter needs a student counterpart."""
    s = dict(student.named_parameters())
    t = dict(teacher.named_parameters())
    missing = sorted(set(t) - set(s))
    if missing:
        raise ValueError(f"teacher parameters without a student counterpart: {missing[:5]}")
    for name, p in t.items():
        if p.shape != s[name].shape:
            raise ValueError(f"{name}: teacher {tuple(p.shape)} vs student {tuple(s[name].shape)}")
    names = list(t)
    return [t[n] for n in names], [s[n] for n in names]


def paired_buffers(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher's floating-point buffers and the student's of the same names (integer ones,
    e.g. BatchNorm's batch counter, are not averaged)."""
    s = dict(student.named_buffers())
    saved = teacher.state_dict().keys()  # persistent buffers only (not fixed position tables)
    t = {n: b for n, b in teacher.named_buffers() if b.is_floating_point() and n in saved}
    missing = sorted(set(t) - set(s))
    if missing:
        raise ValueError(f"teacher buffers without a student counterpart: {missing[:5]}")
    names = list(t)
    return [t[n] for n in names], [s[n] for n in names]


@torch.no_grad()
def copy_into_teacher(teacher: nn.Module, student: nn.Module) -> None:
    """The teacher starts as an exact copy of the student (of the parts it has)."""
    state = student.state_dict()
    teacher.load_state_dict({k: state[k] for k in teacher.state_dict()})


@torch.no_grad()
def ema_update(teacher_params: list[torch.Tensor], student_params: list[torch.Tensor], momentum: float) -> None:
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1.0 - momentum)
