"""MAE-style decoder: visible encoder tokens + mask tokens at the hidden positions ->
a prediction per patch: pixels (MAE, LC-MAE) or a feature vector (SdAE).

Shapes: encoder tokens ``[B, prefix + n_vis, D]`` with ``keep_idx [B, n_vis]`` -> the
decoder sees ``[B, prefix + N, Dd]`` (fixed 2-D sin-cos positions) -> ``[B, N, out_dim]``.
For ViT-B: Dd = 512, 8 blocks, 16 heads (RECIPES.md). Norms at eps 1e-6 and the [CLS] token
at position zero, as in MAE's (and SdAE's) code.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from model.vit import sincos_pos_table


class MAEDecoder(nn.Module):
    def __init__(self, embed_dim: int, out_dim: int, grid: tuple[int, int], decoder_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, prefix: int = 1):
        super().__init__()
        if decoder_dim % num_heads:
            raise ValueError(f"decoder width {decoder_dim} does not split into {num_heads} heads")
        self.grid, self.prefix = tuple(grid), prefix
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_pos_table(tuple(grid), decoder_dim).unsqueeze(0)                    # MAE's table
        self.register_buffer("pos_embed", pos, persistent=False)  # fixed, rebuilt from the grid
        self.blocks = nn.Sequential(*[Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)])
        self.norm = norm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """tokens [B, prefix + n_vis, D], keep_idx [B, n_vis] -> predictions [B, N, out_dim]."""
        x = self.embed(tokens)
        b, n = x.shape[0], self.pos_embed.shape[1]
        full = self.mask_token.to(x.dtype).expand(b, n, -1).clone()        # [B, N, Dd]
        full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, self.prefix:])
        full = full + self.pos_embed.to(x.dtype)
        x = torch.cat([x[:, :self.prefix], full], dim=1)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, self.prefix:])


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, patch*patch*C], row-major patches, pixels (p, q, c) within each."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``."""
    b = patches.shape[0]
    x = patches.reshape(b, grid[0], grid[1], patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid[0] * patch, grid[1] * patch)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6, unbiased: bool = True) -> torch.Tensor:
    """Each row of the last dimension to zero mean, unit variance: (x - mean) / sqrt(var + eps).
    MAE's norm_pix_loss target (per patch) and SdAE's teacher targets (per token, over D); both
    authors' codes take torch's default, unbiased variance."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=unbiased)
    return (patches - mean) / (var + eps).sqrt()


@torch.no_grad()
def mae_init(module: nn.Module) -> None:
    """MAE's initialisation, in place: every Linear xavier-uniform with zero bias, LayerNorms
    1 / 0, the patch embedding's conv weight xavier-uniform as a matrix, [CLS] and mask tokens
    normal(std 0.02). Fixed position tables are buffers or frozen and are left alone."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):  # the patch embedding (its bias keeps torch's default, as in MAE)
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
    for name, p in module.named_parameters():
        if name.endswith(("cls_token", "mask_token")):
            nn.init.normal_(p, std=0.02)
