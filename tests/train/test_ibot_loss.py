"""train/methods/ibot.py against a hand computation with explicit loops."""
import math

import torch

from train.methods.ibot import IBOTLoss


def _softmax(xs):
    e = [math.exp(x - max(xs)) for x in xs]
    return [v / sum(e) for v in e]


def _h(t_logits, s_logits, center, t_temp, s_temp):
    t = _softmax([(a - c) / t_temp for a, c in zip(t_logits, center)])
    s = _softmax([a / s_temp for a in s_logits])
    return -sum(p * math.log(q) for p, q in zip(t, s))


def test_ibot_loss_equals_the_hand_computation_and_updates_its_centers():
    g = torch.Generator().manual_seed(0)
    V, B, N, K = 4, 3, 5, 6  # 2 global + 2 local crops
    s_cls, t_cls = torch.randn(V, B, K, generator=g), torch.randn(2, B, K, generator=g)
    s_patch, t_patch = torch.randn(2, B, N, K, generator=g), torch.randn(2, B, N, K, generator=g)
    masks = torch.rand(2, B, N, generator=g) < 0.5
    masks[1, 2] = False  # an unmasked image contributes 0 to its view's mean
    loss = IBOTLoss(K, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, K, generator=g))
    loss.center_patch.copy_(torch.randn(1, 1, K, generator=g))
    c, cp = loss.center.clone(), loss.center_patch.clone()
    out = loss(s_cls, s_patch, t_cls, t_patch, masks, teacher_temp=0.05, teacher_patch_temp=0.06)

    terms = [sum(_h(t_cls[q, b].tolist(), s_cls[v, b].tolist(), c[0].tolist(), 0.05, 0.1) for b in range(B)) / B
             for q in range(2) for v in range(V) if v != q]
    expected_cls = sum(terms) / len(terms)
    per_view = []
    for q in range(2):
        per_image = []
        for b in range(B):
            masked = [n for n in range(N) if masks[q, b, n]]
            total = sum(_h(t_patch[q, b, n].tolist(), s_patch[q, b, n].tolist(), cp[0, 0].tolist(), 0.06, 0.1)
                        for n in masked)
            per_image.append(total / max(len(masked), 1))
        per_view.append(sum(per_image) / B)
    expected_mim = sum(per_view) / 2
    assert abs(out["cls"].item() - expected_cls) < 1e-4
    assert abs(out["mim"].item() - expected_mim) < 1e-4
    assert abs(out["loss"].item() - (expected_cls + expected_mim)) < 1e-4
    targets = [_softmax([(a - cc) / 0.05 for a, cc in zip(t_cls[q, b].tolist(), c[0].tolist())])
               for q in range(2) for b in range(B)]
    expected_entropy = sum(-sum(p * math.log(p) for p in t) for t in targets) / len(targets)
    assert abs(out["cls_target_entropy"].item() - expected_entropy) < 1e-4
    assert abs(out["cls_kl"].item() - (expected_cls - expected_entropy)) < 1e-4 and out["cls_kl"] > 0
    torch.testing.assert_close(loss.center, 0.9 * c + 0.1 * t_cls.reshape(-1, K).mean(0, keepdim=True))
    torch.testing.assert_close(loss.center_patch, 0.9 * cp + 0.1 * t_patch.reshape(-1, K).mean(0).view(1, 1, K))


def test_dino_is_the_cls_term_alone_and_gradients_reach_only_the_student():
    g = torch.Generator().manual_seed(1)
    s_cls = torch.randn(3, 2, 8, generator=g, requires_grad=True)
    t_cls = torch.randn(2, 2, 8, generator=g, requires_grad=True)
    dino = IBOTLoss(8, patch_weight=0.0)
    out = dino(s_cls, None, t_cls, None, None, 0.04, 0.04)
    assert set(out) == {"cls", "loss", "cls_target_entropy", "cls_kl"} and torch.equal(out["loss"], out["cls"])
    out["loss"].backward()
    assert s_cls.grad.abs().sum() > 0
    assert t_cls.grad is None                        # teacher logits are targets: detached in the loss
    assert torch.equal(dino.center_patch, torch.zeros(1, 1, 8))  # no patches: that center is untouched


def test_uniform_targets_are_reported_as_a_collapse():
    from train.methods.ibot import IBOT

    K = 16
    method = IBOT(masking="none", patch_weight=0.0, out_dim=K)
    flat = torch.zeros(2, 4, K)  # every image gets the same logits: centered, the targets are uniform
    out = method.loss(flat.clone(), None, flat, None, None, 0.04, 0.04)
    assert abs(out["cls_target_entropy"].item() - math.log(K)) < 1e-5 and abs(out["cls_kl"].item()) < 1e-5
    row = {k: v.item() for k, v in out.items()}
    message = method.collapse_warning(row)
    assert message and "collapsed" in message and "method.warmup_teacher_temp" in message

    g = torch.Generator().manual_seed(0)
    sharp = torch.randn(2, 4, K, generator=g) * 5  # distinct images: peaked targets, no warning
    out = IBOT(masking="none", patch_weight=0.0, out_dim=K).loss(sharp.clone(), None, sharp, None, None, 0.04, 0.04)
    assert out["cls_target_entropy"].item() < 0.5 * math.log(K)
    assert method.collapse_warning({k: v.item() for k, v in out.items()}) is None
    assert method.collapse_warning({"loss": 1.0}) is None  # rows without the monitors (ExtreMA)
