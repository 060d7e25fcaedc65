"""Forward modes over a timm ``VisionTransformer``: functions over its modules, not a fork.

Students and teachers are plain ``timm.create_model`` ViTs, so a trained backbone's state
dict loads into ``timm.create_model(name)`` with ``strict=True``. The modes:

- ``forward_full``    all tokens; optionally the last block's [CLS] attention over the N
                      patch keys, averaged over heads, from the *same* forward (AttMask).
- ``forward_masked``  masked patch embeddings replaced by a mask token before positions are
                      added; all N + 1 tokens kept (iBOT / SimMIM).
- ``forward_visible`` only kept tokens; ``keep_idx [B, K, n_keep]`` runs K masks per image
                      as one batch of B*K sequences of static shape (MAE / ExtreMA / SdAE).

Any input size that is a multiple of the patch size works (96-px local crops): position
embeddings are resampled bicubically with timm's ``resample_abs_pos_embed``.
Token layout: ``[B, prefix + N, D]`` with prefix = 1 ([CLS]) or 0 (ExtreMA's trunk).
"""
from __future__ import annotations

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer


def create_vit(name: str, **kwargs) -> VisionTransformer:
    """A timm ViT backbone (no classifier) that accepts any multiple of its patch size."""
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)  # forward-time option; state dict unchanged
    vit = timm.create_model(name, pretrained=False, **kwargs)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{name} is a {type(vit).__name__}, not a timm VisionTransformer")
    if getattr(vit, "reg_token", None) is not None:
        raise ValueError(f"{name} has register tokens, which these forward modes do not handle")
    return vit


def patch_size_of(arch: str, kwargs: dict) -> int:
    """A backbone's patch size, from a model built on the meta device (no memory, no init).
    ValueError (timm's own message) when the name or its arguments do not build a ViT."""
    if not timm.is_model(arch):
        raise ValueError(f"{arch!r} is not a timm model (e.g. vit_small_patch16_224)")
    with torch.device("meta"):
        vit = create_vit(arch, **kwargs)
    return int(vit.patch_embed.patch_size[0])


def num_patches(images: torch.Tensor, patch: int) -> int:
    """Patch tokens N of an image batch [B, 3, H, W] at a patch size."""
    return (images.shape[-2] // patch) * (images.shape[-1] // patch)


def sincos_pos_table(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The fixed 2-D sin-cos positions of MAE's code, which ExtreMA, SdAE and LC-MAE reuse ->
    ``[h*w, dim]``, tokens in the patch embedding's row-major order.

    Columns: [sin x | cos x | sin y | cos y], x the token's column and y its row, each over
    dim / 4 frequencies 1 / temperature^(i / (dim / 4)), computed in float64 as MAE's numpy
    does. (timm's ``build_sincos2d_pos_embed`` orders them [sin y | sin x | cos y | cos x]:
    the same information, but not the table the authors' checkpoints were trained with.)
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need an embedding dim divisible by 4, not {dim}")
    h, w = grid
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)      # [dim/4]
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")                                                   # [h, w] each
    ax, ay = x.reshape(-1, 1) * omega, y.reshape(-1, 1) * omega                            # [h*w, dim/4]
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1).float()


def set_sincos_pos_embed(vit: VisionTransformer) -> None:
    """Replace the learned position embedding by MAE's fixed 2-D sin-cos table (``sincos_pos_table``;
    ExtreMA, MAE, SdAE, LC-MAE); a [CLS] position, if the ViT has one, is zero as in MAE."""
    grid = vit.patch_embed.grid_size
    table = sincos_pos_table(tuple(grid), vit.embed_dim).unsqueeze(0)
    prefix = vit.pos_embed.shape[1] - table.shape[1]
    with torch.no_grad():
        vit.pos_embed[:, prefix:] = table
        vit.pos_embed[:, :prefix] = 0.0
    vit.pos_embed.requires_grad_(False)


def num_prefix(vit: VisionTransformer) -> int:
    return 1 if vit.cls_token is not None else 0


def embed_patches(vit: VisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """images [B, 3, H, W] -> patch embeddings [B, N, D] (no positions) and the grid (h, w)."""
    p = vit.patch_embed.patch_size
    if images.shape[-2] % p[0] or images.shape[-1] % p[1]:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {tuple(p)}; "
                         f"use crops of a multiple of {p[0]} px")
    x = vit.patch_embed(images)
    if x.ndim == 4:  # NHWC from a dynamic-size patch embed
        b, h, w, d = x.shape
        return x.reshape(b, h * w, d), (h, w)
    return x, tuple(vit.patch_embed.grid_size)


def pos_embed_for(vit: VisionTransformer, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix positions [1, P, D], patch positions [1, h*w, D]) for a grid of patches."""
    prefix = 0 if vit.no_embed_class else num_prefix(vit)
    pos = vit.pos_embed
    if tuple(grid) != tuple(vit.patch_embed.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(vit.patch_embed.grid_size),
                                     num_prefix_tokens=prefix)
    return pos[:, :prefix], pos[:, prefix:]


def _with_prefix(vit: VisionTransformer, x: torch.Tensor, prefix_pos: torch.Tensor) -> torch.Tensor:
    """x [S, n, D] with positions added -> [S, prefix + n, D] (the [CLS] token and its position)."""
    if vit.cls_token is None:
        return x
    cls = vit.cls_token.expand(x.shape[0], -1, -1)
    if prefix_pos.shape[1]:
        cls = cls + prefix_pos
    return torch.cat([cls, x], dim=1)


def _trunk(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Positioned tokens -> final-norm tokens, through timm's own modules."""
    x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
    return vit.norm(vit.blocks(x))


def forward_full(vit: VisionTransformer, images: torch.Tensor, return_cls_attention: bool = False):
    """All tokens: ``[B, prefix + N, D]``; with ``return_cls_attention`` also ``[B, N]``.

    The attention is the last block's post-softmax [CLS] query row over the N patch keys
    (softmax taken over all keys, [CLS] included), averaged over heads. The blocks run as
    timm wrote them (fused SDPA: the N x N matrix is never formed); a hook keeps the last
    block's qkv projection, from which only q_cls . K^T is computed: O(N) extra work.
    """
    x, grid = embed_patches(vit, images)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    x = _with_prefix(vit, x + patch_pos, prefix_pos)
    if not return_cls_attention:
        return _trunk(vit, x)
    if vit.cls_token is None:
        raise ValueError("this ViT has no [CLS] token, so it has no [CLS] attention")
    attn = vit.blocks[-1].attn
    captured = {}
    handle = attn.qkv.register_forward_hook(lambda mod, inp, out: captured.__setitem__("qkv", out))
    try:
        tokens = _trunk(vit, x)
    finally:
        handle.remove()
    return tokens, cls_attention(attn, captured["qkv"])


def cls_attention(attn, qkv: torch.Tensor) -> torch.Tensor:
    """[CLS]-row attention over patch keys, head-averaged, from a timm Attention's qkv output.

    qkv [B, T, 3 * H * hd] -> [B, T - 1]. Computed in fp32 whatever the autocast dtype.
    """
    b, t, _ = qkv.shape
    with torch.autocast(qkv.device.type, enabled=False):  # a [B, H, 1, T] product: fp32 costs nothing
        q, k, _ = qkv.float().reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q_cls = attn.q_norm(q[:, :, :1]).float()                   # [B, H, 1, hd]
        k = attn.k_norm(k).float()                                 # [B, H, T, hd]
        logits = (q_cls * attn.scale) @ k.transpose(-2, -1)        # [B, H, 1, T]
        return logits.softmax(dim=-1)[:, :, 0, 1:].mean(dim=1)     # [B, N]


def forward_masked(vit: VisionTransformer, images: torch.Tensor, mask: torch.Tensor,
                   mask_token: torch.Tensor) -> torch.Tensor:
    """iBOT / SimMIM: mask [B, N] (True = masked) patch embeddings become ``mask_token``
    ([1, 1, D] or [D]) before positions are added; returns all tokens [B, prefix + N, D]."""
    x, grid = embed_patches(vit, images)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match {x.shape[0]} images of {x.shape[1]} patches")
    x = torch.where(mask.unsqueeze(-1), mask_token.reshape(1, 1, -1).to(x.dtype), x)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    return _trunk(vit, _with_prefix(vit, x + patch_pos, prefix_pos))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, K, n] -> [B*K, n, D]: sequence b*K + k holds x[b, idx[b, k]]."""
    b, k, n = idx.shape
    flat = idx.reshape(b, k * n, 1).expand(-1, -1, x.shape[-1])
    return x.gather(1, flat).reshape(b * k, n, x.shape[-1])


def forward_visible(vit: VisionTransformer, images: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """MAE-style: only kept tokens. keep_idx [B, n_keep] or [B, K, n_keep] (patch indices)
    -> [B*K, prefix + n_keep, D]; sequence b*K + k is image b under keep-set k.
    Positions are added before the gather, so each token keeps its own."""
    if keep_idx.ndim == 2:
        keep_idx = keep_idx.unsqueeze(1)
    x, grid = embed_patches(vit, images)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    x = gather_tokens(x + patch_pos, keep_idx)                    # [B*K, n_keep, D]
    return _trunk(vit, _with_prefix(vit, x, prefix_pos))
