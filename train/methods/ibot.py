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
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


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

class IBOTNet(nn.Module):
    """A timm ViT, a learnable mask token (zero-init) and one head shared by [CLS] and patches.
    The student and the teacher are two instances (the teacher without drop-path).

    forward(global_crops, local_crops=(), masks=None, with_attention=False, patches=True):
        global_crops  list of G tensors [B, 3, S, S]; local_crops list of M [B, 3, s, s]
        masks         [G*B, N] True = masked (mask-token replaces the patch embedding)
      -> dict  cls [G+M, B, K] logits; patch [G, B, N, K] (patches=True);
               attention [G*B, N] (with_attention=True, from the last block, no extra forward)
    """

    def __init__(self, arch: str, vit_kwargs: dict, drop_path: float, out_dim: int, hidden: int,
                 bottleneck: int, norm_last_layer: bool):
        super().__init__()
        from model.heads import DINOHead
        from model.vit import create_vit

        self.backbone = create_vit(arch, drop_path_rate=drop_path, **vit_kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
        self.head = DINOHead(self.backbone.embed_dim, out_dim, hidden, bottleneck, norm_last_layer=norm_last_layer)

    def forward(self, global_crops, local_crops=(), masks=None, with_attention: bool = False,
                patches: bool = True) -> dict[str, torch.Tensor]:
        from model.vit import forward_full, forward_masked

        g, b = len(global_crops), global_crops[0].shape[0]
        x = torch.cat(list(global_crops))                                              # [G*B, 3, S, S]
        out = {}
        if masks is not None:
            tokens = forward_masked(self.backbone, x, masks, self.mask_token)        # [G*B, 1+N, D]
        elif with_attention:
            tokens, out["attention"] = forward_full(self.backbone, x, return_cls_attention=True)
        else:
            tokens = forward_full(self.backbone, x)
        logits = self.head(tokens if patches else tokens[:, :1])                      # [G*B, 1(+N), K]
        cls = [logits[:, 0].reshape(g, b, -1)]
        if patches:
            out["patch"] = logits[:, 1:].reshape(g, b, logits.shape[1] - 1, -1)
        if local_crops:
            local = forward_full(self.backbone, torch.cat(list(local_crops)))[:, 0]   # [M*B, D]
            cls.append(self.head(local).reshape(len(local_crops), b, -1))
        out["cls"] = torch.cat(cls)                                                    # [G+M, B, K]
        return out

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """What 'freeze the last layer in the first epoch' freezes (iBOT / DINO)."""
        return list(self.head.last_layer.parameters())

    def top_level_parameters(self) -> list[nn.Parameter]:
        """Parameters used outside their owner's forward (ZeRO-3 must gather them with ours)."""
        return [p for p in (self.backbone.cls_token, self.backbone.pos_embed) if p is not None]


# ---------------------------------------------------------------------------------- method

class IBOT(nn.Module):
    """iBOT (and DINO: patch_weight 0) with AttMask / block / random masking.

    One step: 1. the teacher runs once on the unmasked global crops -> targets and the [CLS]
    attention; 2. masks on the device from that attention (AttMask) or from a generator;
    3. the student runs on the masked global crops and the local crops; 4. the loss module.
    Pure: no backward, no optimizer, no EMA (the engine owns those). Its state (the centers)
    is in buffers, so ``state_dict()`` checkpoints it.
    """

    def __init__(self, masking: str = "attmask_high", mask_ratio=(0.1, 0.5), mask_prob: float = 0.5,
                 hint_max: float = 0.1, patch_weight: float = 1.0, student_temp: float = 0.1,
                 center_momentum: float = 0.9, out_dim: int = 8192):
        super().__init__()
        self.masking, self.mask_ratio, self.mask_prob, self.hint_max = masking, tuple(mask_ratio), mask_prob, hint_max
        self.patch_weight = patch_weight
        self.loss = IBOTLoss(out_dim, student_temp, center_momentum, patch_weight)

    @property
    def needs_attention(self) -> bool:
        return self.masking.startswith("attmask")

    def masks(self, attention: torch.Tensor | None, count: int, grid: tuple[int, int],
              generator: torch.Generator, device) -> torch.Tensor | None:
        """[count, N] True = masked, or None for no masking. ``count`` = G * B crops."""
        from model.masking import attmask, block_mask, random_mask

        n = grid[0] * grid[1]
        if self.masking == "none":
            return None
        if self.needs_attention:
            return attmask(attention, self.masking.removeprefix("attmask_"), self.mask_ratio, self.mask_prob,
                           self.hint_max, generator=generator)
        if self.masking == "block":
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            return block_mask(count, grid, self.mask_ratio, 1.0 - self.mask_prob,
                              rng=np.random.default_rng(seed)).to(device)
        lo, hi = self.mask_ratio  # random: one ratio per batch, each crop masked with prob mask_prob
        r = lo + (hi - lo) * float(torch.rand((), generator=generator, device=generator.device))
        m = random_mask(count, n, int(n * r), generator=generator, device=device)
        keep = torch.rand(count, generator=generator, device=device) < self.mask_prob
        return m & keep[:, None]

    def forward(self, student: nn.Module, teacher: nn.Module, global_crops, local_crops,
                teacher_temp: float, teacher_patch_temp: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
        patches = self.patch_weight > 0
        # 1. one teacher forward: targets and [CLS] attention
        with torch.no_grad():
            t = teacher(global_crops, with_attention=self.needs_attention, patches=patches)
        # 2. masks on the device
        g, b = len(global_crops), global_crops[0].shape[0]
        patch = student_patch_size(student)
        grid = (global_crops[0].shape[-2] // patch, global_crops[0].shape[-1] // patch)
        n = grid[0] * grid[1]
        masks = self.masks(t.get("attention"), g * b, grid, generator, global_crops[0].device)
        if masks is None:  # masking "none": the student still takes the mask-token path, nothing masked
            masks = torch.zeros(g * b, n, dtype=torch.bool, device=global_crops[0].device)  # [G*B, N]
        # 3. the student on the masked globals and the locals
        s = student(global_crops, local_crops, masks=masks, patches=patches)
        # 4. the loss
        mask_views = masks.reshape(g, b, n)                                               # [G, B, N]
        out = self.loss(s["cls"], s.get("patch"), t["cls"], t.get("patch"), mask_views, teacher_temp, teacher_patch_temp)
        out["mask_ratio"] = mask_views.float().mean().detach()
        return out


def student_patch_size(net: nn.Module) -> int:
    inner = getattr(net, "module", net)  # DDP / DeepSpeed wrappers keep the model in .module
    return int(inner.backbone.patch_embed.patch_size[0])
