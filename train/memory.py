"""How much memory a training step needs, estimated before it is allocated.

    need = estimate_step_memory(trainer, views)     # bytes, for the views' batch size
    free = available_memory(trainer.device)         # bytes this device can still give

The estimate has three parts, each measured rather than modelled:
1. weights and optimizer state: the student's parameters x 4 (weights, gradients, AdamW's two
   moments) + the teacher's, in bytes, counted on the built trainer;
2. activations: one step's loss is computed on a 2-image slice of the batch under torch's
   ``saved_tensors_hooks``, which count the bytes autograd keeps for backward (parameters and
   repeated storages once); that figure is scaled linearly to the batch size;
3. a margin of 25 % on the activations for what lives only during a layer (attention
   scores, the teacher's forward, allocator slack).
It is what the profiler checks before it draws its batches, so that a request that cannot fit
ends with a message and the estimate, not with the kernel's out-of-memory kill.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

PROBE_IMAGES = 2
TRANSIENT_MARGIN = 1.25


@dataclass
class StepMemory:
    static: int        # bytes: weights, gradients, optimizer moments, teacher
    activations: int   # bytes at the batch size asked for, with the transient margin
    batch_size: int

    @property
    def total(self) -> int:
        return self.static + self.activations

    def fits(self, batch_size: int) -> int:
        return int(self.activations * batch_size / self.batch_size + self.static)


def available_memory(device: torch.device) -> int:
    """Bytes the device can still allocate: CUDA's free memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def slice_views(views, n: int):
    """The first n images of a batch (every view, label and id)."""
    return replace(views, views={k: [v[:n] for v in vs] for k, vs in views.views.items()},
                   labels=views.labels[:n], ids=views.ids[:n])


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def estimate_step_memory(trainer, views) -> StepMemory:
    """Memory of one training step of ``trainer`` at the batch size of ``views`` (see above).
    The method's state (iBOT's centers) and the modules' buffers (BatchNorm's running
    statistics) are restored after the probe."""
    b = trainer.backend
    modules = [m for m in (b.module, b.teacher_module) if m is not None]  # no teacher: MAE
    static = 4 * _parameter_bytes(b.module) + sum(_parameter_bytes(m) for m in modules[1:])
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    seen: set[int] = set()
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved += storage.nbytes()
        return t

    batch = views.labels.shape[0]
    probe = slice_views(views, min(PROBE_IMAGES, batch))
    state = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    buffers = [(buf, buf.clone()) for m in modules for buf in m.buffers()]  # BatchNorm's running statistics
    sched = {k: float(v[0]) for k, v in trainer.schedules.items()}
    generator = torch.Generator(trainer.device).manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype or torch.float32,
                           enabled=trainer.autocast_dtype is not None):
        losses = trainer.compute_losses(probe, sched, generator)
    del losses
    trainer.method.load_state_dict(state)
    with torch.no_grad():
        for buf, before in buffers:
            buf.copy_(before)
    per_image = saved / probe.labels.shape[0]
    return StepMemory(static, int(per_image * batch * TRANSIENT_MARGIN), batch)


def views_bytes(views) -> int:
    return sum(v.numel() * v.element_size() for vs in views.views.values() for v in vs)
