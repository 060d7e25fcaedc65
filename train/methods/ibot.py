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
