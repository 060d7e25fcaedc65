"""AdamW parameter groups and per-parameter gradient clipping (iBOT / DINO habits).

Groups: weight decay on >= 2-D weights only; none on biases, norm weights, 1-D parameters,
pos_embed and the cls / mask tokens (RECIPES.md, shared blocks). The head's last layer sits
in groups of its own (``last_layer: True``) so that it can be frozen in the first epoch by
a learning rate of 0 where gradients cannot be dropped (DeepSpeed).
"""
from __future__ import annotations

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "dist_token", "reg_token")


def param_groups(model: nn.Module, last_layer: list[nn.Parameter] | tuple = ()) -> list[dict]:
    last = {id(p) for p in last_layer}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in NO_DECAY_NAMES)
        groups.setdefault((not no_decay, id(p) in last), []).append(p)
    return [{"params": ps, "decay": decay, "last_layer": is_last}
            for (decay, is_last), ps in sorted(groups.items())]


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, freeze_last: bool) -> None:
    """Set this step's lr / weight decay in every group (0 for the frozen last layer)."""
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if (freeze_last and g.get("last_layer")) else lr
        g["weight_decay"] = weight_decay if g.get("decay") else 0.0


@torch.no_grad()
def clip_per_parameter(params, max_norm: float) -> None:
    """Each gradient tensor scaled to L2 norm <= max_norm on its own (DINO's clip_gradients),
    with fused foreach kernels (no Python loop over tensors)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    scales = torch._foreach_reciprocal(torch._foreach_add(torch._foreach_norm(grads), 1e-6))
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)  # min(1, max_norm / (norm + 1e-6))
    torch._foreach_mul_(grads, scales)
