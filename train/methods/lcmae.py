"""LC-MAE (RECIPES.md section 3): MAE plus global guidance from a momentum encoder.

Views: ``src_pair`` -- view 1 a simple resized crop, view 2 the same kind of crop with colour
jitter and 3-augment. The student is MAE on view 1 (n_keep = int(N (1 - r)) tokens kept, the
decoder reconstructs the normalised pixels of the masked patches: L_MIM) and, from the same
encoder call, the mean of its final-norm visible patch tokens ([CLS] left out) through its
head and predictor: u. The target network, an EMA of the encoder and the head (not the
decoder, not the predictor), encodes all N tokens of view 2 once; the mean of its final-norm
patch tokens through its head is v. L_GG = 2 - 2 cos(u, v); loss = L_MIM + alpha L_GG.

The heads' BatchNorm: the student's is in training mode, synchronised over ranks (the engine
converts every BatchNorm of a student), its statistics over all B*K rows of the K masks
(``finish_group``); the target network runs in eval mode on the EMA of the student's running
statistics (train/ema.py averages floating-point buffers too).

``n_masks`` K > 1: K masks of view 1 against the single target forward of view 2: K MIM and
K guidance terms, each averaged. ``views="two"`` (the authors' code): one permutation gives
view 1 the first n_keep tokens and view 2 the next n_keep (disjoint, so r >= 0.5); the
target network encodes both full views, the guidance is cross-view and symmetric (student
view 1 against target view 2 and student view 2 against target view 1, averaged) and only
view 1 is reconstructed, as in the code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from model.masking import keep_count
from model.vit import num_patches
from train.methods.extrema import byol_loss, projection_spread, spread_warning
from train.methods.mae import MaskedAutoencoder, encoder_features, masked_patch_loss
from train.methods.passes import MASKS_THEN_TARGETS, StudentPass, as_draws

VIEWS = ("one", "two")


def _init_head(head: nn.Module) -> None:
    """LC-MAE's code initialises its heads as the rest of MAE: Linear weights xavier-uniform."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


def pooled_patches(vit, tokens: torch.Tensor) -> torch.Tensor:
    """Final-norm tokens [S, prefix + n, D] -> the mean of the n patch tokens [S, D] ([CLS] and
    any other prefix token left out)."""
    from model.vit import num_prefix

    return tokens[:, num_prefix(vit):].mean(dim=1)


class LCMAENet(MaskedAutoencoder):
    """MAE (encoder ``backbone.*`` + pixel decoder) with the guidance head ``head.*`` and the
    student-only ``predictor.*``.

    forward(passes, mode):
      group "visible": shared images, own keep [B, P, n_keep] -> {"pred": [B*P, N, p*p*3], "u": [B*P, D]}
      group "encode":  the same without the decoder (the two-view form's view 2) -> {"u": [B*P, D]}
    """

    def __init__(self, arch: str, vit_kwargs: dict, drop_path: float, grid: tuple[int, int],
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 hidden: int = 4096, head_depth: int = 2, predictor_depth: int = 2):
        super().__init__(arch, vit_kwargs, drop_path, grid, "pixels", decoder_dim, decoder_depth, decoder_heads)
        from model.heads import lcmae_head

        dim = self.backbone.embed_dim
        self.head = lcmae_head(dim, dim, hidden, head_depth)
        self.predictor = lcmae_head(dim, dim, hidden, predictor_depth)
        _init_head(self.head)
        _init_head(self.predictor)

    def run_group(self, group: str, shared: dict, own: dict) -> dict[str, torch.Tensor]:
        from model.vit import forward_visible

        if group not in ("visible", "encode"):
            raise ValueError(f"LCMAENet has no student pass group {group!r}")
        keep = own["keep"]                                                       # [B, P, n_keep]
        tokens = forward_visible(self.backbone, shared["images"], keep)          # [B*P, 1+n_keep, D]
        out = {"pooled": pooled_patches(self.backbone, tokens)}
        if group == "visible":
            out["pred"] = self.decoder(tokens, keep.flatten(0, 1))               # [B*P, N, p*p*3]
        return out

    def finish_group(self, group: str, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head and predictor once on every pass's rows: BatchNorm statistics over B*P."""
        out = dict(out)
        out["u"] = self.predictor(self.head(out.pop("pooled")))
        return out


class LCMAETarget(nn.Module):
    """The target network: the encoder and the head, parameter names as the student's.

    teach(images [S, 3, H, W]) -> {"v": [S, D]}: all tokens, patch-token mean, head (eval BN)
    """

    def __init__(self, arch: str, vit_kwargs: dict, hidden: int = 4096, head_depth: int = 2):
        super().__init__()
        from model.heads import lcmae_head
        from model.vit import create_vit, set_sincos_pos_embed

        self.backbone = create_vit(arch, drop_path_rate=0.0, **vit_kwargs)
        set_sincos_pos_embed(self.backbone)
        dim = self.backbone.embed_dim
        self.head = lcmae_head(dim, dim, hidden, head_depth)

    def teach(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from model.vit import forward_full

        return {"v": self.head(pooled_patches(self.backbone, forward_full(self.backbone, images)))}

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        return encoder_features(self.backbone, images, pool)


def guidance_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u [B, K, D] (student, K masks) against v [B, D] (target): 2 - 2 cos, averaged over B and K."""
    return byol_loss(u.flatten(0, 1), v.detach().unsqueeze(1).expand_as(u).flatten(0, 1))


class LCMAE(nn.Module):
    """Pure: masks -> targets (view 1's pixels, the target network on the full view 2) ->
    student passes -> L_MIM + alpha L_GG."""

    step_order = MASKS_THEN_TARGETS
    ema_every = "step"          # momentum 0.996 -> 1, cosine per iteration
    knn_on = "student"          # the online encoder is what LC-MAE fine-tunes

    def __init__(self, mask_ratio: float = 0.75, n_masks: int = 1, alpha: float = 0.25, views: str = "one",
                 norm_pix: bool = True, disjoint: bool = True, patch_size: int = 16):
        super().__init__()
        if views not in VIEWS:
            raise ValueError(f"LC-MAE views {views!r}: choose one of {', '.join(VIEWS)}")
        if views == "two" and (n_masks != 1 or mask_ratio < 0.5):
            raise ValueError("LC-MAE's two-view form needs one mask per view and a mask ratio >= 0.5 "
                             "(the two visible sets are disjoint)")
        self.mask_ratio, self.n_masks, self.alpha, self.views = mask_ratio, n_masks, alpha, views
        self.norm_pix, self.disjoint, self.patch_size = norm_pix, disjoint or views == "two", patch_size

    def schedules(self, iters_per_epoch: int, total: int) -> dict:
        return {}

    def describe_masks(self, views) -> str:
        n = num_patches(views.global_views[0], self.patch_size)
        if self.views == "two":
            return f"two views x {keep_count(n, self.mask_ratio)} of {n} tokens (disjoint); targets: both full views"
        return f"{self.n_masks} masks x {keep_count(n, self.mask_ratio)} of {n} tokens of view 1; target: view 2, all tokens"

    def masks(self, views, targets, draws) -> dict:
        """keep [B, K, n_keep]: K keep-sets of view 1 (two-view form: [:, 0] of view 1, [:, 1]
        of view 2, one permutation), drawn for the world's batch and sliced."""
        from model.masking import disjoint_keep_sets

        draws, x = as_draws(draws), views.global_views[0]
        n = num_patches(x, self.patch_size)
        sets = 2 if self.views == "two" else self.n_masks
        keep = disjoint_keep_sets(draws.rows(x.shape[0]), n, sets, keep_count(n, self.mask_ratio),
                                  self.disjoint, generator=draws.shared, device=x.device)
        return {"keep": draws.local(keep), "tokens": n}

    def targets(self, teacher, views, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        from model.decoder import normalize_patches, patchify

        v1, v2 = views.global_views[0], views.global_views[1]
        pixels = patchify(v1.float(), self.patch_size)                                      # [B, N, p*p*3]
        out = {"pixels": normalize_patches(pixels) if self.norm_pix else pixels}
        if self.views == "two":  # both full views in one call (eval-mode BN: rows do not interact)
            v = teacher(torch.cat([v1, v2]))["v"]
            out["v"], out["v_view1"] = v[v1.shape[0]:], v[:v1.shape[0]]
        else:
            out["v"] = teacher(v2)["v"]
        return out

    def student_passes(self, views, masks: dict) -> list[StudentPass]:
        keep = masks["keep"]
        shared = {"images": views.global_views[0]}
        if self.views == "two":
            return [StudentPass("visible", shared, {"keep": keep[:, 0]}),
                    StudentPass("encode", {"images": views.global_views[1]}, {"keep": keep[:, 1]})]
        return [StudentPass("visible", shared, {"keep": keep[:, k]}) for k in range(self.n_masks)]

    def losses(self, outputs: list[dict], targets: dict, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        mim_out = [o for o in outputs if "pred" in o]
        pred = torch.stack([o["pred"] for o in mim_out], dim=1)                            # [B, K, N, L]
        mim = masked_patch_loss(pred, targets["pixels"], masks["keep"][:, :len(mim_out)])
        if self.views == "two":  # student view 1 vs target view 2, student view 2 vs target view 1
            gg = 0.5 * (guidance_loss(outputs[0]["u"].unsqueeze(1), targets["v"])
                        + guidance_loss(outputs[1]["u"].unsqueeze(1), targets["v_view1"]))
        else:
            gg = guidance_loss(torch.stack([o["u"] for o in outputs], dim=1), targets["v"])
        ratio = 1.0 - masks["keep"].shape[-1] / masks["tokens"]
        return {"loss": mim + self.alpha * gg, "mim": mim.detach(), "guidance": gg.detach(),
                "mask_ratio": torch.tensor(ratio, device=mim.device),
                "target_spread": projection_spread(targets["v"])}

    def collapse_warning(self, row: dict) -> str | None:
        return spread_warning(row, "the target network's guidance vectors")
