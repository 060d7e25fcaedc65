"""Projection heads of the four recipes (hyper-parameters from ../shared/RECIPES.md).

- ``DINOHead``   iBOT / DINO: MLP in -> 2048 -> 2048 -> 256 (GELU, no norm), L2-normalise,
                 weight-normalised last layer 256 -> out_dim without bias. Applied to any
                 ``[..., D]`` tensor, so one head serves [CLS] and patch tokens (iBOT shares it).
- ``mlp``        the BYOL projector (3 layers, 4096, LayerNorm + GELU, nothing after the last)
                 and predictor (2 layers) of ExtreMA; ``lcmae_head`` (Linear without bias ->
                 BatchNorm -> ReLU -> Linear) of LC-MAE.
- ``sync_batchnorm``  every BatchNorm synchronised when training is distributed: the batch
                 statistics of all ranks, so that 2 processes on half batches compute what 1
                 process computes on the whole batch. torch's SyncBatchNorm on a GPU; it refuses
                 CPU tensors (and DDP refuses it on CPU modules), so on a CPU (gloo)
                 ``CPUSyncBatchNorm`` sums the statistics with ``torch.distributed.nn``'s
                 differentiable all-reduce instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(_trunc_normal_init)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)  # g: the per-output norm
        if norm_last_layer:  # DINO's option: keep the last layer's rows at unit norm
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> logits [..., out_dim]."""
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return self.last_layer(x)


def mlp(dims: list[int], norm: str | None = "ln", act: type[nn.Module] = nn.GELU,
        bias: bool = True, last_bias: bool = True) -> nn.Sequential:
    """Linear layers through ``dims``; after every one but the last: norm ('ln', 'bn' or None) + act."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last_bias if last else bias))
        if not last:
            if norm == "ln":
                layers.append(nn.LayerNorm(b))
            elif norm == "bn":
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    return nn.Sequential(*layers)


def byol_projector(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """ExtreMA projector: D -> 4096 -> 4096 -> 256, LayerNorm + GELU between."""
    return mlp([in_dim, hidden_dim, hidden_dim, out_dim], norm="ln")


def byol_predictor(dim: int = 256, hidden_dim: int = 4096) -> nn.Sequential:
    """ExtreMA predictor (student only): 256 -> 4096 -> 256, LayerNorm + GELU between."""
    return mlp([dim, hidden_dim, dim], norm="ln")


def lcmae_head(in_dim: int, out_dim: int, hidden_dim: int = 4096, depth: int = 2) -> nn.Sequential:
    """LC-MAE head or predictor (the authors' code): (Linear -> BatchNorm -> ReLU) x (depth - 1)
    -> Linear, no Linear with a bias, nothing after the last."""
    if depth < 1:
        raise ValueError(f"an LC-MAE head needs depth >= 1, not {depth}")
    return mlp([in_dim] + [hidden_dim] * (depth - 1) + [out_dim], norm="bn", act=nn.ReLU, bias=False, last_bias=False)


class CPUSyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training-mode statistics cover every rank, for CPU processes (gloo),
    where torch's SyncBatchNorm refuses to run (and DDP refuses to wrap it): the per-channel
    count, sum and sum of squares are summed over the ranks with a differentiable all-reduce,
    the batch is normalised by the global mean and biased variance, and the running
    statistics take the global unbiased variance, as torch's SyncBatchNorm does on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        c = x.shape[1]
        rows = xf.transpose(0, 1).reshape(c, -1)                                   # [C, rows]
        stats = torch.cat([torch.full((1,), float(rows.shape[1])), rows.sum(1), (rows * rows).sum(1)])
        stats = all_reduce(stats)                                                  # summed over the ranks
        n = stats[0]
        mean = stats[1:1 + c] / n
        var = stats[1 + c:] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Every BatchNorm of ``module`` synchronised over the ranks when torch.distributed runs
    on more than one: torch's SyncBatchNorm for a GPU ``device``, ``CPUSyncBatchNorm`` (same
    state) for the CPU; else ``module`` unchanged."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return module
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, CPUSyncBatchNorm):
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            sync_batchnorm(child, device)
    return module


def _trunc_normal_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
