"""ExtreMA's backbone: a timm ViT trunk *without* [CLS], fixed 2-D sin-cos positions and no
layer scale, followed by CaiT class-attention blocks (timm's ``LayerScaleBlockClassAttn``,
layer scale 0.1, no drop-path) in which a [CLS] query attends to [CLS, patches], then a LN.
Every LayerNorm has eps 1e-6, as in ExtreMA's code (and timm's ViT trunk): the [CLS] token
starts with std 0.02 (variance 4e-4), close enough to torch's default 1e-5 to change it.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.cait import LayerScaleBlockClassAttn
from timm.models.vision_transformer import VisionTransformer

from model.vit import create_vit, forward_full, forward_visible, set_sincos_pos_embed

NORM = partial(nn.LayerNorm, eps=1e-6)  # ExtreMA's vits.py builds every norm this way


class ClassAttentionPool(nn.Module):
    """tokens [S, n, D] -> [CLS] feature [S, D] through `depth` class-attention blocks."""

    def __init__(self, dim: int, num_heads: int, depth: int = 2, init_values: float = 0.1,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            LayerScaleBlockClassAttn(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                                     init_values=init_values, norm_layer=NORM)
            for _ in range(depth))
        self.norm = NORM(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        for blk in self.blocks:
            cls = blk(tokens, cls)  # the query is [CLS]; keys/values are [CLS, tokens]
        return self.norm(cls)[:, 0]


class ExtremaEncoder(nn.Module):
    """``trunk`` (timm ViT, exportable on its own) + ``pool`` (class attention)."""

    def __init__(self, name: str = "vit_base_patch16_224", pool_depth: int = 2,
                 drop_path_rate: float = 0.0, **vit_kwargs):
        super().__init__()
        self.trunk: VisionTransformer = create_vit(
            name, class_token=False, global_pool="avg", init_values=None,
            drop_path_rate=drop_path_rate, **vit_kwargs)
        set_sincos_pos_embed(self.trunk)
        self.pool = ClassAttentionPool(self.trunk.embed_dim, self.trunk.blocks[0].attn.num_heads,
                                       depth=pool_depth)

    def forward(self, images: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, 3, H, W] (+ keep_idx [B, K, n_keep]) -> [B*K, D] (K = 1 without masks)."""
        tokens = forward_full(self.trunk, images) if keep_idx is None else forward_visible(self.trunk, images, keep_idx)
        return self.pool(tokens)
