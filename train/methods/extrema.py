"""ExtreMA (RECIPES.md section 2): extreme masking, K disjoint masks, one teacher forward.

Views: ``shared_crop_two_colors`` -- one crop, two colourings; view 1 for the student, view 2
for the teacher. The teacher (EMA encoder + projector) sees all N tokens of view 2 once.
The student keeps n_keep = int(N (1 - r)) tokens per mask; the K keep-sets of an image are
disjoint slices of one random permutation; they are K student passes of one group, which
the engine batches into B*K sequences of n_keep tokens in one forward (or loops over).
Loss: asymmetric BYOL, 2 - 2 cos(predictor(projector(student_k)), projector(teacher)),
averaged over the batch and the K masks; or MoCo-v3 InfoNCE (temperature 0.2, keys
gathered over ranks, scaled by 2 T) as an option.
Logged with the loss (no gradient): ``target_spread``, the per-dimension std over the batch
of the L2-normalised teacher projections times sqrt(dim) (SimSiam's collapse monitor): about
1 when they spread over all directions, 0 when every image gets the same one.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from model.masking import keep_count
from model.vit import num_patches
from train.methods.passes import MASKS_THEN_TARGETS, PassRunner, StudentPass, as_draws

LOSSES = ("byol", "infonce")


class ExtremaNet(PassRunner):
    """Encoder (trunk without [CLS] + class-attention pool) and projector; the student adds the
    predictor (``predictor=True``), which the teacher lacks (the EMA pairs by name).

    teach(images [B, 3, H, W]) -> {"z": [B, proj_dim]}      the full view, all tokens
    forward(passes, mode), group "masked": shared images [B, 3, H, W], own keep [B, P, n_keep]
        -> {"q": [B*P, proj_dim]}, row b*P + p = image b under keep-set p
    """

    def __init__(self, arch: str, vit_kwargs: dict, drop_path: float, pool_depth: int = 2,
                 proj_hidden: int = 4096, proj_dim: int = 256, pred_hidden: int = 4096, predictor: bool = True):
        super().__init__()
        from model.class_attention import ExtremaEncoder
        from model.heads import byol_predictor, byol_projector

        self.encoder = ExtremaEncoder(arch, pool_depth=pool_depth, drop_path_rate=drop_path, **vit_kwargs)
        dim = self.encoder.trunk.embed_dim
        self.projector = byol_projector(dim, proj_hidden, proj_dim)
        self.predictor = byol_predictor(proj_dim, pred_hidden) if predictor else None

    def teach(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.projector(self.encoder(images))}

    def run_group(self, group: str, shared: dict, own: dict) -> dict[str, torch.Tensor]:
        if group != "masked":
            raise ValueError(f"ExtremaNet has no student pass group {group!r}")
        z = self.projector(self.encoder(shared["images"], own["keep"]))              # [B*P, proj_dim]
        return {"q": self.predictor(z) if self.predictor is not None else z}

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """What k-NN and linear probes read: the class-attention [CLS] [B, D] (or the mean of
        the trunk's final-norm tokens, pool="avgpool")."""
        if pool == "cls":
            return self.encoder(images)
        from model.vit import forward_full

        return forward_full(self.encoder.trunk, images).mean(dim=1)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return []  # nothing is frozen in the first epoch

    def top_level_parameters(self) -> list[nn.Parameter]:
        """Used outside their owner's forward (ZeRO-3 must gather them with ours)."""
        return [self.encoder.trunk.pos_embed]


def byol_loss(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """||q/|q| - k/|k|||^2 = 2 - 2 cos(q, k), averaged over rows."""
    return (2 - 2 * F.cosine_similarity(q.float(), k.float(), dim=-1)).mean()


def infonce_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3: row i's positive is key i of this rank; the negatives are every other key of
    every rank (gathered, no gradient through other ranks' keys); CE x 2T."""
    q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
    offset = 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, k.contiguous())
        offset = dist.get_rank() * k.shape[0]
        k = torch.cat(parts)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class ExtreMA(nn.Module):
    """Pure: targets / masks / student passes / losses (the engine runs the step)."""

    step_order = MASKS_THEN_TARGETS
    ema_every = "step"
    knn_on = "teacher"

    def __init__(self, mask_ratio: float = 0.8, n_masks: int = 5, disjoint: bool = True, loss: str = "byol",
                 temperature: float = 0.2, patch_size: int = 16):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"ExtreMA loss {loss!r}: choose one of {', '.join(LOSSES)}")
        self.mask_ratio, self.n_masks, self.disjoint = mask_ratio, n_masks, disjoint
        self.loss_name, self.temperature, self.patch_size = loss, temperature, patch_size

    def schedules(self, iters_per_epoch: int, total: int) -> dict:
        return {}

    def n_keep(self, n: int) -> int:
        return keep_count(n, self.mask_ratio)

    def describe_masks(self, views) -> str:
        x = views.global_views[0]
        n = num_patches(x, self.patch_size)
        return f"one crop, two colourings; {self.n_masks} masks x {self.n_keep(n)} of {n} tokens"

    def targets(self, teacher, views, masks, sched: dict) -> dict[str, torch.Tensor]:
        return teacher(views.global_views[1])                                          # view 2, all tokens

    def masks(self, views, targets, draws) -> dict:
        """keep: indices [B, K, n_keep] of view 1's N tokens (sorted within each set), drawn for
        the world's batch and sliced (independent of the process count)."""
        from model.masking import disjoint_keep_sets

        draws, x = as_draws(draws), views.global_views[0]
        n = num_patches(x, self.patch_size)
        keep = disjoint_keep_sets(draws.rows(x.shape[0]), n, self.n_masks, self.n_keep(n), self.disjoint,
                                  generator=draws.shared, device=x.device)
        return {"keep": draws.local(keep), "tokens": n}

    def student_passes(self, views, masks: dict) -> list[StudentPass]:
        shared = {"images": views.global_views[0]}
        return [StudentPass("masked", shared, {"keep": masks["keep"][:, k]}) for k in range(self.n_masks)]

    def losses(self, outputs: list[dict], targets: dict, masks: dict, sched: dict) -> dict[str, torch.Tensor]:
        z = targets["z"].detach()
        if self.loss_name == "byol":
            per_mask = [byol_loss(o["q"], z) for o in outputs]
        else:
            per_mask = [infonce_loss(o["q"], z, self.temperature) for o in outputs]
        ratio = 1.0 - masks["keep"].shape[-1] / masks["tokens"]
        return {"loss": torch.stack(per_mask).mean(), "mask_ratio": torch.tensor(ratio, device=z.device),
                "target_spread": projection_spread(z)}

    def collapse_warning(self, row: dict) -> str | None:
        return spread_warning(row, "the teacher's projections")


@torch.no_grad()
def projection_spread(z: torch.Tensor) -> torch.Tensor:
    """The SimSiam/BYOL collapse monitor: the per-dimension std over the batch of the
    L2-normalised targets z [B, D], times sqrt(D): about 1 when they spread, 0 when collapsed."""
    return F.normalize(z.float(), dim=-1).std(0, unbiased=False).mean() * z.shape[-1] ** 0.5


def spread_warning(row: dict, what: str) -> str | None:
    """One line for the log when the targets are nearly the same for every image."""
    spread = row.get("target_spread")
    if spread is None or not spread < 0.1:
        return None
    return (f"{what} are nearly the same for every image (target_spread {spread:.3f}; about 1 when they "
            f"spread, 0 when collapsed): the students have nothing left to predict; see the README, 'Collapse'")
