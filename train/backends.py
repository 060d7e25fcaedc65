"""How the student is trained across processes: DDP through accelerate, or DeepSpeed ZeRO.

Both present the same small surface to the engine:
    student        the callable to run the student through (DDP wrapper / DeepSpeed engine)
    teacher        a callable running the EMA teacher (no grad; ZeRO-3 gathers its partitions),
                   or None for a method without a teacher (then teacher_module is None too)
    backward(loss); step(clip, freeze_last) -> None; zero_grad()
    ema(momentum)  theta_t <- m theta_t + (1 - m) theta_s on what this rank holds (parameters,
                   then floating-point buffers: BatchNorm's running statistics)
    save(tmp) / load(path) the engine-owned state (optimizer; DeepSpeed's own files)

Why DeepSpeed is driven by ``deepspeed.initialize`` and not accelerate's DeepSpeed plugin:
the plugin imports ``transformers`` and manages one trained model per engine, while the
teacher here must be partitioned exactly like the student for a ZeRO-3 EMA on local
partitions. accelerate still launches the processes and sets up torch.distributed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from train.ema import copy_into_teacher, ema_update, paired_buffers, paired_parameters
from train.optim import apply_schedules, clip_per_parameter, param_groups

DS_CONFIGS = Path(__file__).parent / "configs" / "deepspeed"


class DDPBackend:
    """Plain module on one process; DistributedDataParallel (accelerate.prepare) on several."""

    name = "ddp"

    def __init__(self, accelerator, student: nn.Module, teacher: nn.Module | None, last_layer, betas):
        self.accelerator = accelerator
        self.module, self.teacher_module = student, teacher
        optimizer = torch.optim.AdamW(param_groups(student, last_layer), lr=0.0, betas=tuple(betas))
        self.student, self.optimizer = accelerator.prepare(student, optimizer)
        self.last_layer = list(last_layer)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.pairs = _pairs(teacher, student, lambda p: p) if teacher is not None else ([], [])
        self.teacher = self._teach if teacher is not None else None

    def _teach(self, *args, **kwargs):
        return self.teacher_module.teach(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float, weight_decay: float, clip: float, freeze_last: bool) -> None:
        apply_schedules(self.optimizer, lr, weight_decay, freeze_last)
        clip_per_parameter(self.params, clip)  # 3.0 per tensor (iBOT / DINO)
        if freeze_last:  # no gradient at all: AdamW leaves these tensors and their moments alone
            for p in self.last_layer:
                p.grad = None
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def ema(self, momentum: float) -> None:
        ema_update(*self.pairs, momentum)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, tmp: Path) -> None:
        pass

    def load(self, path: Path) -> None:
        pass


def _pairs(teacher: nn.Module, student: nn.Module, local) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What the EMA updates: the paired parameters (``local``: the tensor this rank holds of
    each), then the paired floating-point buffers (never partitioned)."""
    t, s = paired_parameters(teacher, student)
    tb, sb = paired_buffers(teacher, student)
    return [local(p) for p in t] + tb, [local(p) for p in s] + sb


def deepspeed_config(stage: int, micro_batch: int, clip: float) -> dict:
    cfg = json.loads((DS_CONFIGS / f"zero{stage}.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_accumulation_steps"] = 1
    cfg["gradient_clipping"] = clip  # DeepSpeed clips the global norm; see the README
    return cfg


class DeepSpeedBackend:
    """ZeRO 1 / 2 / 3 via ``deepspeed.initialize``. Under ZeRO-3 the teacher (an exact copy of
    the student) is partitioned by ``zero.Init(module=...)`` with the student's config, so
    each of its parameters is split into the same local partition as the student's; the EMA
    then runs on the partitions (``ds_tensor``) with no communication, and the teacher's
    forward gathers its full parameters for the duration of the call."""

    name = "deepspeed"

    def __init__(self, build_student, build_teacher, last_layer_of, stage: int, micro_batch: int,
                 clip: float, betas, external_of=None):
        import deepspeed

        self.deepspeed, self.stage = deepspeed, stage
        config = deepspeed_config(stage, micro_batch, clip)
        student = build_student()
        teacher = build_teacher() if build_teacher is not None else None
        if teacher is not None:
            copy_into_teacher(teacher, student)  # the teacher starts as an exact copy
            teacher.requires_grad_(False)
        if stage == 3:
            for p in external_of(student) if external_of else ():
                deepspeed.zero.register_external_parameter(student, p)
        optimizer = torch.optim.AdamW(param_groups(student, last_layer_of(student)), lr=0.0, betas=tuple(betas))
        self.student, self.optimizer, _, _ = deepspeed.initialize(model=student, optimizer=optimizer, config=config)
        if stage == 3 and teacher is not None:  # the same per-parameter split as the student's: identical local partitions
            deepspeed.zero.Init(module=teacher, config_dict_or_path=config)
        self.module, self.teacher_module = student, teacher
        local = (lambda p: p.ds_tensor) if stage == 3 else (lambda p: p)  # ZeRO-3: this rank's partitions
        self.pairs = _pairs(teacher, self.module, local) if teacher is not None else ([], [])
        self.teacher = self._teach if teacher is not None else None

    def _teach(self, *args, **kwargs):
        if self.stage != 3:
            return self.teacher_module.teach(*args, **kwargs)
        with self.deepspeed.zero.GatheredParameters(list(self.teacher_module.parameters())):
            return self.teacher_module.teach(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.student.backward(loss)

    def step(self, lr: float, weight_decay: float, clip: float, freeze_last: bool) -> None:
        apply_schedules(self.optimizer, lr, weight_decay, freeze_last)
        self.student.step()  # clips (global norm), steps, zeroes the gradients

    def zero_grad(self) -> None:
        self.student.zero_grad()

    def ema(self, momentum: float) -> None:
        ema_update(*self.pairs, momentum)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def save(self, tmp: Path) -> None:
        """Collective: DeepSpeed's model + optimizer partitions into tmp/deepspeed."""
        self.student.save_checkpoint(str(tmp), tag="deepspeed")

    def load(self, path: Path) -> None:
        self.student.load_checkpoint(str(path), tag="deepspeed", load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
