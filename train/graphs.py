"""CUDA graphs of the student passes (``train.cuda_graphs=true``).

    runner = GraphedStudent(student)      # student: the plain module (no DDP / DeepSpeed wrapper)
    outputs = runner(passes, mode)        # as ``student(passes, mode)``, replayed from a graph

The first call with a new pass structure (groups, keys, shapes, dtypes) captures the
student's forward and backward with ``torch.cuda.make_graphed_callables`` (which warms up
on a side stream first); every later call copies the inputs into the graph's static tensors
and replays. Nothing inside the region synchronises with the host: masks and keep indices
are device tensors, drop-path draws come from the CUDA generator (graph-safe, re-seeded per
step). The loss, the teacher and the optimizer run eagerly around it.

Refused (``check_supported``): no CUDA; DeepSpeed (its ZeRO hooks run host logic during
backward); several DDP processes (DDP's reducer launches the all-reduce from autograd hooks
that a captured backward never calls).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from train.methods.passes import StudentPass


class GraphsUnsupported(ValueError):
    """This run cannot capture the student passes; the message says why and what to change."""


def check_supported(device: torch.device, backend: str, world: int) -> None:
    if device.type != "cuda":
        raise GraphsUnsupported("train.cuda_graphs=true needs CUDA and this process has no GPU; "
                                "set train.cuda_graphs=false (the eager path computes the same step)")
    if backend == "deepspeed":
        raise GraphsUnsupported("train.cuda_graphs=true is not supported with distributed.backend=deepspeed "
                                "(ZeRO's gradient hooks run host logic during backward); use distributed.backend=ddp "
                                "or train.cuda_graphs=false")
    if world > 1:
        raise GraphsUnsupported(f"train.cuda_graphs=true runs on one process only ({world} here): DDP starts its "
                                f"all-reduce from autograd hooks that a captured backward never calls; "
                                f"set train.cuda_graphs=false for multi-process runs")


def flatten(passes: list[StudentPass]) -> tuple[tuple, list[torch.Tensor]]:
    """(structure, tensors): each distinct shared tensor once, then every own tensor."""
    tensors: list[torch.Tensor] = []
    index: dict[int, int] = {}
    structure = []
    for p in passes:
        shared = {}
        for k, v in p.shared.items():
            if id(v) not in index:
                index[id(v)] = len(tensors)
                tensors.append(v)
            shared[k] = index[id(v)]
        own = {}
        for k, v in p.own.items():
            own[k] = len(tensors)
            tensors.append(v)
        structure.append((p.group, tuple(shared.items()), tuple(own.items())))
    return tuple(structure), tensors


def unflatten(structure: tuple, tensors) -> list[StudentPass]:
    return [StudentPass(group, {k: tensors[i] for k, i in shared}, {k: tensors[i] for k, i in own})
            for group, shared, own in structure]


class _FlatPasses(nn.Module):
    """tensors -> flat output tensors, for one fixed pass structure (what gets captured)."""

    def __init__(self, net: nn.Module, structure: tuple, mode: str):
        super().__init__()
        self.net, self.structure, self.mode = net, structure, mode
        self.out_keys: list[list[str]] | None = None

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.net(unflatten(self.structure, tensors), self.mode)
        self.out_keys = [list(o) for o in outputs]
        return tuple(v for o in outputs for v in o.values())


class GraphedStudent:
    def __init__(self, student: nn.Module, warmup: int = 3):
        self.student, self.warmup = student, warmup
        self.graphs: dict[tuple, tuple[nn.Module, _FlatPasses]] = {}

    def __call__(self, passes: list[StudentPass], mode: str = "batched") -> list[dict[str, torch.Tensor]]:
        structure, tensors = flatten(passes)
        key = (structure, mode, tuple((tuple(t.shape), t.dtype) for t in tensors), self.student.training)
        if key not in self.graphs:
            flat = _FlatPasses(self.student, structure, mode)
            graphed = torch.cuda.make_graphed_callables(flat, tuple(tensors), num_warmup_iters=self.warmup,
                                                           allow_unused_input=True)
            self.graphs[key] = (graphed, flat)
        graphed, flat = self.graphs[key]
        values = graphed(*tensors)
        out, i = [], 0
        for keys in flat.out_keys:
            out.append(dict(zip(keys, values[i:i + len(keys)])))
            i += len(keys)
        return out
