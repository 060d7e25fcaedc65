"""SdAE (RECIPES.md section 4): an MAE student regresses EMA-teacher features of multi-fold
masked tokens.

Views: ``single_rrc``. Masks come first: one permutation per image gives the visible n_keep
tokens and the masked rest in random order, cut into t disjoint folds of (N - n_keep) // t
(``model.masking.folds``; a remainder is no target). Teacher: an EMA of the student's encoder
only (``backbone.*``; not the decoder, not its mask token). It never sees the visible tokens:
each fold is its own sequence with its own [CLS] and its own tokens' positions, so attention
never crosses folds, and all folds run as one teacher call of B*t sequences. With
``teacher_input="full"`` the teacher encodes the whole image once instead (the paper's
full-image teacher) and its outputs at the fold positions are the targets.
Targets: the teacher's final-norm tokens, [CLS] dropped, each normalised over D without
affine, (x - mean) / sqrt(var + 1e-6) with torch's unbiased var (the authors' code).
Loss: 1 - cos(prediction, target) over the feature dimension, per target token, averaged
(the paper; the authors' code takes the cosine along the token axis, see the README).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.masking import keep_count
from model.vit import num_patches
from train.methods.mae import encoder_features
from train.methods.passes import MASKS_THEN_TARGETS, as_draws

TEACHER_INPUTS = ("folds", "full")


class SdAETeacher(nn.Module):
    """The EMA teacher: the encoder alone (parameter names ``backbone.*`` as the student's).

    teach(images [B, 3, H, W], folds [B, t, f], full=False) -> {"tokens": [B, t, f, D]}
    """

    def __init__(self, arch: str, vit_kwargs: dict):
        super().__init__()
        from model.vit import create_vit, set_sincos_pos_embed

        self.backbone = create_vit(arch, drop_path_rate=0.0, **vit_kwargs)
        set_sincos_pos_embed(self.backbone)

    def teach(self, images: torch.Tensor, folds: torch.Tensor, full: bool = False) -> dict[str, torch.Tensor]:
        from model.vit import forward_full, forward_visible, gather_tokens

        b, t, f = folds.shape
        if full:  # the whole image once; the targets are its tokens at the fold positions
            tokens = gather_tokens(forward_full(self.backbone, images)[:, 1:], folds)      # [B*t, f, D]
        else:     # every fold its own sequence with its own [CLS]: one call of B*t sequences
            tokens = forward_visible(self.backbone, images, folds)[:, 1:]                  # [B*t, f, D]
        return {"tokens": tokens.reshape(b, t, f, -1)}

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        return encoder_features(self.backbone, images, pool)


def feature_cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cos over the last (feature) dimension for every token, averaged over the tokens."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


class SdAE(nn.Module):
    """Pure: masks (visible set + folds) -> teacher targets on the folds -> the student -> loss."""

    step_order = MASKS_THEN_TARGETS
    knn_on = "student"  # the student encoder is what SdAE releases and fine-tunes

    def __init__(self, mask_ratio: float = 0.75, folds: int = 3, teacher_input: str = "folds",
                 ema_every: str = "epoch", patch_size: int = 16):
        super().__init__()
        if teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"SdAE teacher input {teacher_input!r}: choose one of {', '.join(TEACHER_INPUTS)}")
        self.mask_ratio, self.n_folds, self.teacher_input = mask_ratio, folds, teacher_input
        self.ema_every, self.patch_size = ema_every, patch_size

    def schedules(self, iters_per_epoch: int, total: int) -> dict:
        return {}

    def describe_masks(self, views) -> str:
        x = views.global_views[0]
        n = num_patches(x, self.patch_size)
        n_keep = keep_count(n, self.mask_ratio)
        return (f"{n_keep} of {n} tokens visible; teacher: {self.n_folds} folds of "
                f"{(n - n_keep) // self.n_folds} ({self.teacher_input})")

    def masks(self, views, targets, draws) -> dict:
        """keep [B, n_keep] and folds [B, t, f]: disjoint token indices of the image (drawn
        for the world's batch and sliced: independent of the process count)."""
        from model.masking import folds

        draws, x = as_draws(draws), views.global_views[0]
        n = num_patches(x, self.patch_size)
        keep, fold = folds(draws.rows(x.shape[0]), n, keep_count(n, self.mask_ratio), self.n_folds, draws.shared,
                           x.device)
        return {"keep": draws.local(keep), "folds": draws.local(fold), "tokens": n}

    def targets(self, teacher, views, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        from model.decoder import normalize_patches

        out = teacher(views.global_views[0], masks["folds"], full=self.teacher_input == "full")
        return {"features": normalize_patches(out["tokens"].float())}                      # [B, t, f, D]

    def student_passes(self, views, masks: dict):
        from train.methods.passes import StudentPass

        return [StudentPass("visible", {"images": views.global_views[0]}, {"keep": masks["keep"]})]

    def losses(self, outputs: list[dict], targets: dict, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        from model.vit import gather_tokens

        fold = masks["folds"]                                                              # [B, t, f]
        pred = gather_tokens(outputs[0]["pred"], fold).reshape(targets["features"].shape)  # [B, t, f, D]
        loss = feature_cosine_loss(pred, targets["features"])
        ratio = 1.0 - masks["keep"].shape[-1] / masks["tokens"]
        return {"loss": loss, "mask_ratio": torch.tensor(ratio, device=loss.device)}
