"""MAE (RECIPES.md section 5), the student SdAE and LC-MAE build on.

Views: ``single_rrc``. No teacher: no EMA, no teacher state. Each image keeps a random
n_keep = int(N (1 - r)) of its tokens (one permutation per image from sorted uniform noise);
with ``n_masks`` K > 1 the image, decoded and augmented once, is trained under K masks (K
disjoint keep-sets when ``disjoint``), run as B*K sequences in one encoder and one decoder call.
Loss: the decoder's prediction of every masked patch against its pixels, each target patch
normalised by its own mean and unbiased variance (+1e-6) when ``norm_pix``; the squared error
averaged over a patch's pixels, then over the masked patches of every sequence.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from model.masking import keep_count
from model.vit import num_patches
from train.methods.passes import MASKS_THEN_TARGETS, PassRunner, StudentPass, as_draws


class MaskedAutoencoder(PassRunner):
    """timm ViT encoder ([CLS], fixed sin-cos positions) + MAE decoder, MAE's initialisation.

    forward(passes, mode), group "visible": shared images [B, 3, H, W], own keep [B, P, n_keep]
        -> {"pred": [B*P, N, out_dim]}, row b*P + p = image b under keep-set p; out_dim is
           p*p*3 (pixels: MAE) or D (features: SdAE)
    The encoder's parameters are ``backbone.*``: an EMA teacher of the encoder only (SdAE)
    pairs with them by name.
    """

    def __init__(self, arch: str, vit_kwargs: dict, drop_path: float, grid: tuple[int, int],
                 predict: str = "pixels", decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16):
        super().__init__()
        from model.decoder import MAEDecoder, mae_init
        from model.vit import create_vit, set_sincos_pos_embed

        self.backbone = create_vit(arch, drop_path_rate=drop_path, **vit_kwargs)
        set_sincos_pos_embed(self.backbone)
        dim, patch = self.backbone.embed_dim, self.backbone.patch_embed.patch_size[0]
        out_dim = patch * patch * 3 if predict == "pixels" else dim
        self.decoder = MAEDecoder(dim, out_dim, grid, decoder_dim, decoder_depth, decoder_heads)
        mae_init(self)

    def run_group(self, group: str, shared: dict, own: dict) -> dict[str, torch.Tensor]:
        from model.vit import forward_visible

        if group != "visible":
            raise ValueError(f"MaskedAutoencoder has no student pass group {group!r}")
        keep = own["keep"]                                                       # [B, P, n_keep]
        tokens = forward_visible(self.backbone, shared["images"], keep)          # [B*P, 1+n_keep, D]
        return {"pred": self.decoder(tokens, keep.flatten(0, 1))}                # [B*P, N, out_dim]

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        return encoder_features(self.backbone, images, pool)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []

    def top_level_parameters(self) -> list[nn.Parameter]:
        """Used outside their owner's forward (ZeRO-3 must gather them with ours)."""
        return [self.backbone.cls_token, self.backbone.pos_embed]


def encoder_features(vit, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """What k-NN and linear probes read: the final-norm [CLS] (MAE's linear-probe feature),
    or with ``pool="avgpool"`` the mean of the final-norm patch tokens -> [B, D]."""
    from model.vit import forward_full

    tokens = forward_full(vit, images)
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """pred [B, P, N, L], target [B, N, L], keep [B, P, n_keep] -> the squared error averaged over
    each patch's L values, then over every masked (not kept) patch of the B*P sequences."""
    per_patch = ((pred.float() - target.float().unsqueeze(1)) ** 2).mean(dim=-1)           # [B, P, N]
    masked = torch.ones_like(per_patch).scatter_(2, keep, 0.0)                              # 1 = masked
    return (per_patch * masked).sum() / masked.sum()


class MAE(nn.Module):
    """Pure: masks -> targets (the pixels; there is no teacher) -> student passes -> losses."""

    step_order = MASKS_THEN_TARGETS
    ema_every = None  # no teacher
    knn_on = "student"

    def __init__(self, mask_ratio: float = 0.75, n_masks: int = 1, disjoint: bool = True, norm_pix: bool = True,
                 patch_size: int = 16):
        super().__init__()
        self.mask_ratio, self.n_masks, self.disjoint = mask_ratio, n_masks, disjoint
        self.norm_pix, self.patch_size = norm_pix, patch_size

    def schedules(self, iters_per_epoch: int, total: int) -> dict:
        return {}

    def describe_masks(self, views) -> str:
        x = views.global_views[0]
        n = num_patches(x, self.patch_size)
        return f"{self.n_masks} masks x {keep_count(n, self.mask_ratio)} of {n} tokens per decoded image"

    def masks(self, views, targets, draws) -> dict:
        """keep: [B, K, n_keep] token indices of the image (sorted within each set), drawn for
        the world's batch and sliced, so that they do not depend on the process count."""
        from model.masking import disjoint_keep_sets

        draws, x = as_draws(draws), views.global_views[0]
        n = num_patches(x, self.patch_size)
        keep = disjoint_keep_sets(draws.rows(x.shape[0]), n, self.n_masks, keep_count(n, self.mask_ratio),
                                  self.disjoint, generator=draws.shared, device=x.device)
        return {"keep": draws.local(keep), "tokens": n}

    def targets(self, teacher, views, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        from model.decoder import normalize_patches, patchify

        pixels = patchify(views.global_views[0].float(), self.patch_size)                 # [B, N, p*p*3]
        return {"pixels": normalize_patches(pixels) if self.norm_pix else pixels}

    def student_passes(self, views, masks: dict) -> list[StudentPass]:
        shared = {"images": views.global_views[0]}
        return [StudentPass("visible", shared, {"keep": masks["keep"][:, k]}) for k in range(self.n_masks)]

    def losses(self, outputs: list[dict], targets: dict, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        pred = torch.stack([o["pred"] for o in outputs], dim=1)                            # [B, K, N, L]
        loss = masked_patch_loss(pred, targets["pixels"], masks["keep"])
        ratio = 1.0 - masks["keep"].shape[-1] / masks["tokens"]
        return {"loss": loss, "mask_ratio": torch.tensor(ratio, device=loss.device)}
