"""Projection heads of the four recipes (hyper-parameters from ../shared/RECIPES.md).

- ``DINOHead``   iBOT / DINO: MLP in -> 2048 -> 2048 -> 256 (GELU, no norm), L2-normalise,
                 weight-normalised last layer 256 -> out_dim without bias. Applied to any
                 ``[..., D]`` tensor, so one head serves [CLS] and patch tokens (iBOT shares it).
- ``mlp``        the BYOL projector (3 layers, 4096, LayerNorm + GELU, nothing after the last)
                 and predictor (2 layers) of ExtreMA; ``lcmae_head`` (Linear without bias ->
                 BatchNorm -> ReLU -> Linear) of LC-MAE.
- ``sync_batchnorm``  BatchNorm -> SyncBatchNorm when training is distributed (LC-MAE).
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
        bias: bool = True) -> nn.Sequential:
    """Linear layers through ``dims``; after every one but the last: norm ('ln', 'bn' or None) + act."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=bias or last))
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


def lcmae_head(in_dim: int, out_dim: int = 256, hidden_dim: int = 4096, depth: int = 2) -> nn.Sequential:
    """LC-MAE head: (Linear without bias -> BatchNorm -> ReLU) x (depth - 1) -> Linear."""
    return mlp([in_dim] + [hidden_dim] * (depth - 1) + [out_dim], norm="bn", act=nn.ReLU, bias=False)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm in place of BatchNorm when torch.distributed runs on more than one rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def _trunc_normal_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
