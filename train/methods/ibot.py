"""iBOT's loss (also DINO's with patch_weight 0), a module with its centers in buffers.

Shapes (K = head output dim, V = 2 global + M local student crops, B images, N patches):
    student_cls   [V, B, K]     logits of every student crop's [CLS] (globals first)
    student_patch [2, B, N, K]  logits of the masked global crops' patch tokens
    teacher_cls   [2, B, K]     teacher logits on the unmasked global crops
    teacher_patch [2, B, N, K]
    masks         [2, B, N]     True = masked for the student

L_CLS: for each teacher global view q, H(teacher_q, student_v) for every student crop v != q,
averaged over the 2 * (V - 1) terms. L_MIM: for v = q only, H summed over masked tokens /
max(#masked, 1) per image, averaged over images (unmasked images count 0) and the two
views. H(t, s) = -sum softmax((t - center) / T_t) * log_softmax(s / T_s).
Centers: EMA (momentum 0.9) of the teacher's batch means (patches: over all tokens),
all-reduced across ranks, updated after the loss is computed.
Logged with the losses (no gradient): ``cls_target_entropy``, the mean entropy of the [CLS]
targets, and ``cls_kl`` = L_CLS - that entropy, the mean KL(target || student). Uniform
collapse shows as entropy -> ln K with KL -> 0; one-prototype collapse as entropy -> 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from train.methods.passes import TARGETS_THEN_MASKS, PassRunner, StudentPass, as_draws


class IBOTLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 patch_weight: float = 1.0):
        super().__init__()
        self.student_temp, self.center_momentum, self.patch_weight = student_temp, center_momentum, patch_weight
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_patch", torch.zeros(1, 1, out_dim))

    def forward(self, student_cls, student_patch, teacher_cls, teacher_patch, masks,
                teacher_temp: float, teacher_patch_temp: float) -> dict[str, torch.Tensor]:
        teacher_cls = teacher_cls.detach()  # targets: never a gradient, whoever computed them
        teacher_patch = teacher_patch.detach() if teacher_patch is not None else None
        t_cls = F.softmax((teacher_cls.float() - self.center) / teacher_temp, dim=-1)           # [2, B, K]
        s_cls = F.log_softmax(student_cls.float() / self.student_temp, dim=-1)                  # [V, B, K]
        cls_terms = [(-t_cls[q] * s_cls[v]).sum(-1).mean()
                     for q in range(t_cls.shape[0]) for v in range(s_cls.shape[0]) if v != q]
        loss_cls = torch.stack(cls_terms).mean()
        out = {"cls": loss_cls}
        with torch.no_grad():  # the DINO paper's collapse monitors: target entropy and KL = CE - H
            entropy = -(t_cls * t_cls.clamp_min(1e-12).log()).sum(-1).mean()
            out["cls_target_entropy"] = entropy
            out["cls_kl"] = loss_cls.detach() - entropy  # every q meets V - 1 crops: mean CE - mean H
        loss = loss_cls
        if self.patch_weight > 0:
            t_patch = F.softmax((teacher_patch.float() - self.center_patch) / teacher_patch_temp, dim=-1)
            s_patch = F.log_softmax(student_patch.float() / self.student_temp, dim=-1)          # [2, B, N, K]
            per_token = (-t_patch * s_patch).sum(-1)                                              # [2, B, N]
            m = masks.float()
            per_image = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)                        # [2, B]
            out["mim"] = per_image.mean()
            loss = loss + self.patch_weight * out["mim"]
        out["loss"] = loss
        self.update_center(teacher_cls, teacher_patch)
        return out

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor | None) -> None:
        k = teacher_cls.shape[-1]
        cls_sum = teacher_cls.float().reshape(-1, k).sum(0, keepdim=True)                       # [1, K]
        patch_sum = (teacher_patch.float().reshape(-1, k).sum(0).view(1, 1, -1) if teacher_patch is not None
                     else torch.zeros_like(self.center_patch))
        counts = torch.tensor([teacher_cls[..., 0].numel(),
                               teacher_patch[..., 0].numel() if teacher_patch is not None else 0],
                              dtype=torch.float32, device=cls_sum.device)
        if dist.is_available() and dist.is_initialized():
            for t in (cls_sum, patch_sum, counts):
                dist.all_reduce(t)
        m = self.center_momentum
        self.center.mul_(m).add_(cls_sum / counts[0], alpha=1 - m)
        if counts[1] > 0:
            self.center_patch.mul_(m).add_(patch_sum / counts[1], alpha=1 - m)


# ---------------------------------------------------------------------------------- networks

class IBOTNet(PassRunner):
    """A timm ViT, a learnable mask token (zero-init) and one head shared by [CLS] and patches.
    The student and the teacher are two instances (the teacher without drop-path).

    teach(global_crops, with_attention=False)   the teacher's targets
        global_crops  list of G tensors [B, 3, S, S]
      -> dict  cls [G, B, K] logits; patch [G, B, N, K] (unless patches is off: DINO);
               attention [G*B, N] (with_attention=True, from the last block, no extra forward)
    forward(passes, mode)   the student's passes (train/methods/passes.py), groups:
        "globals"  shared images [G*B, 3, S, S], own mask [G*B, 1, N] (True = the mask token
                   replaces the patch embedding; N+1 tokens whatever the ratio: static shape)
                   -> cls [G*B, K], patch [G*B, N, K] (unless patches is off)
        "locals"   shared images [M*B, 3, s, s] -> cls [M*B, K]
    """

    def __init__(self, arch: str, vit_kwargs: dict, drop_path: float, out_dim: int, hidden: int,
                 bottleneck: int, norm_last_layer: bool, patches: bool = True):
        super().__init__()
        from model.heads import DINOHead
        from model.vit import create_vit

        self.backbone = create_vit(arch, drop_path_rate=drop_path, **vit_kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
        self.head = DINOHead(self.backbone.embed_dim, out_dim, hidden, bottleneck, norm_last_layer=norm_last_layer)
        self.patches = patches  # patch-token logits (iBOT's MIM term); off for DINO

    def teach(self, global_crops, with_attention: bool = False) -> dict[str, torch.Tensor]:
        from model.vit import forward_full

        g, b = len(global_crops), global_crops[0].shape[0]
        x = torch.cat(list(global_crops))                                              # [G*B, 3, S, S]
        if with_attention:
            tokens, attention = forward_full(self.backbone, x, return_cls_attention=True)
        else:
            tokens, attention = forward_full(self.backbone, x), None
        out = {k: v.reshape(g, b, *v.shape[1:]) for k, v in self._logits(tokens).items()}  # [G, B, (N,) K]
        if attention is not None:
            out["attention"] = attention
        return out

    def run_group(self, group: str, shared: dict, own: dict) -> dict[str, torch.Tensor]:
        from model.vit import forward_full, forward_masked

        if group == "globals":
            mask = own["mask"]
            if mask.shape[1] != 1:
                raise ValueError("iBOT runs one masked pass per global crop batch")
            return self._logits(forward_masked(self.backbone, shared["images"], mask[:, 0], self.mask_token))
        if group == "locals":
            return {"cls": self.head(forward_full(self.backbone, shared["images"])[:, 0])}
        raise ValueError(f"IBOTNet has no student pass group {group!r}")

    def _logits(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens [S, 1+N, D] -> cls [S, K] and (self.patches) patch [S, N, K] head logits."""
        logits = self.head(tokens if self.patches else tokens[:, :1])
        out = {"cls": logits[:, 0]}
        if self.patches:
            out["patch"] = logits[:, 1:]
        return out

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """What k-NN and linear probes read: the backbone's last-layer [CLS] [B, D] (or the
        mean of its patch tokens, pool="avgpool")."""
        from train.methods.mae import encoder_features

        return encoder_features(self.backbone, images, pool)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """What 'freeze the last layer in the first epoch' freezes (iBOT / DINO)."""
        return list(self.head.last_layer.parameters())

    def top_level_parameters(self) -> list[nn.Parameter]:
        """Parameters used outside their owner's forward (ZeRO-3 must gather them with ours)."""
        return [p for p in (self.backbone.cls_token, self.backbone.pos_embed) if p is not None]


# ---------------------------------------------------------------------------------- method

class IBOT(nn.Module):
    """iBOT (and DINO: patch_weight 0) with AttMask / block / random masking.

    One step (the engine calls these in order, train/methods/passes.py):
    1. ``targets``: the teacher runs once on the unmasked global crops -> targets and the
       [CLS] attention; 2. ``masks`` on the device from that attention (AttMask) or from a
    generator; 3. ``student_passes``: the masked global crops (mask-token path, N+1 tokens)
    and the local crops; 4. ``losses``: the loss module.
    Pure: no backward, no optimizer, no EMA (the engine owns those). Its state (the centers)
    is in buffers, so ``state_dict()`` checkpoints it.
    """

    step_order = TARGETS_THEN_MASKS  # AttMask reads the teacher's attention
    ema_every = "step"
    knn_on = "teacher"

    def __init__(self, masking: str = "attmask_high", mask_ratio=(0.1, 0.5), mask_prob: float = 0.5,
                 hint_max: float = 0.1, patch_weight: float = 1.0, student_temp: float = 0.1,
                 center_momentum: float = 0.9, out_dim: int = 8192, patch_size: int = 16,
                 teacher_temp: tuple[float, float] = (0.04, 0.07), teacher_patch_temp: tuple[float, float] = (0.04, 0.07),
                 warmup_teacher_temp_epochs: int = 30):
        super().__init__()
        self.teacher_temp, self.teacher_patch_temp = tuple(teacher_temp), tuple(teacher_patch_temp)
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.patch_size = patch_size
        self.masking, self.mask_ratio, self.mask_prob, self.hint_max = masking, tuple(mask_ratio), mask_prob, hint_max
        self.patch_weight = patch_weight
        self.loss = IBOTLoss(out_dim, student_temp, center_momentum, patch_weight)

    def schedules(self, iters_per_epoch: int, total: int) -> dict:
        """The teacher temperatures ([CLS], patches): (warm-up, final), linear over the first
        warmup_teacher_temp_epochs, then constant; per iteration."""
        from train.schedules import linear_warmup

        warm = self.warmup_teacher_temp_epochs * iters_per_epoch
        return {"teacher_temp": linear_warmup(*self.teacher_temp, warm, total),
                "teacher_patch_temp": linear_warmup(*self.teacher_patch_temp, warm, total)}

    def collapse_warning(self, row: dict) -> str | None:
        """One line for the log when a logged window shows the [CLS] targets uniform (the head's
        output has collapsed: the [CLS] term no longer teaches anything), else None."""
        entropy, kl = row.get("cls_target_entropy"), row.get("cls_kl")
        if entropy is None or kl is None:
            return None
        ln_k = math.log(self.loss.center.shape[-1])
        if entropy < 0.99 * ln_k or kl > 0.01 * ln_k:
            return None
        return (f"the [CLS] targets are uniform (entropy {entropy:.3f} of ln K = {ln_k:.3f}, KL {kl:.4f}): the "
                f"head has collapsed. Sharper targets (a lower method.warmup_teacher_temp, then "
                f"method.teacher_temp) are the lever; see the README, 'Collapse'")

    @property
    def needs_attention(self) -> bool:
        return self.masking.startswith("attmask")

    @property
    def patches(self) -> bool:
        return self.patch_weight > 0

    def targets(self, teacher, views, masks, sched: dict) -> dict[str, torch.Tensor]:
        return teacher(views.global_views, with_attention=self.needs_attention)

    def masks(self, views, targets: dict, draws) -> torch.Tensor:
        """[G*B, N] True = masked (all False for masking "none"); drawn from this rank's stream
        (AttMask: one ratio per rank's batch, as each of the authors' processes draws its own)."""
        from model.masking import attmask, block_mask, per_crop_random_mask

        generator = as_draws(draws).own

        crops = views.global_views
        count, device = len(crops) * crops[0].shape[0], crops[0].device
        grid = (crops[0].shape[-2] // self.patch_size, crops[0].shape[-1] // self.patch_size)
        n = grid[0] * grid[1]
        if self.masking == "none":  # the student still takes the mask-token path, nothing masked
            return torch.zeros(count, n, dtype=torch.bool, device=device)
        if self.needs_attention:
            return attmask(targets["attention"], self.masking.removeprefix("attmask_"), self.mask_ratio,
                           self.mask_prob, self.hint_max, generator=generator)
        if self.masking == "block":
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            return block_mask(count, grid, self.mask_ratio, 1.0 - self.mask_prob,
                              rng=np.random.default_rng(seed)).to(device)
        # random (iBOT's): a ratio per crop, each crop masked with probability mask_prob
        return per_crop_random_mask(count, n, self.mask_ratio, self.mask_prob, generator, device)

    def student_passes(self, views, masks: torch.Tensor) -> list[StudentPass]:
        passes = [StudentPass("globals", {"images": torch.cat(list(views.global_views))}, {"mask": masks})]
        if views.local_views:
            passes.append(StudentPass("locals", {"images": torch.cat(list(views.local_views))}))
        return passes

    def losses(self, outputs: list[dict], targets: dict, masks: torch.Tensor, sched: dict) -> dict[str, torch.Tensor]:
        g, b = targets["cls"].shape[:2]
        n = masks.shape[-1]
        cls = [outputs[0]["cls"].reshape(g, b, -1)]
        if len(outputs) > 1:
            cls.append(outputs[1]["cls"].reshape(-1, b, cls[0].shape[-1]))
        student_patch = outputs[0]["patch"].reshape(g, b, n, -1) if self.patches else None
        mask_views = masks.reshape(g, b, n)                                                   # [G, B, N]
        out = self.loss(torch.cat(cls), student_patch, targets["cls"], targets.get("patch"), mask_views,
                        sched["teacher_temp"], sched["teacher_patch_temp"])
        out["mask_ratio"] = mask_views.float().mean().detach()
        return out
