"""LC-MAE on the shared engine: the guidance loss against a hand computation, the target
network (one call on the full view 2, an EMA of encoder + head and of BN's statistics),
BatchNorm over all B*K rows, K masks batched == looped, the two-view form, config errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.config import CONFIGS, ConfigError, load_config
from train.engine import Trainer, step_seed

LCMAE = CONFIGS / "lcmae_vits16.yaml"
HEADS = ["model.guide_hidden=48"]


def _trainer(tiny_mae, *extra):
    return Trainer(load_config(LCMAE, tiny_mae + HEADS + list(extra)))


def _views(trainer):
    return next(iter(trainer.loader))


def _gen(step=0):
    return torch.Generator().manual_seed(step_seed(0, step, 0))


def test_the_recipes_are_the_papers(tiny_mae):
    for name, arch, alpha in (("lcmae_vits16.yaml", "vit_small_patch16_224", 1.0),
                              ("lcmae_vitb16.yaml", "vit_base_patch16_224", 0.25)):
        cfg = load_config(CONFIGS / name, ["data.train=embedded:train", "data.val="])
        assert (cfg.model.arch, cfg.method.guidance_weight, cfg.method.mask_ratio[0]) == (arch, alpha, 0.75)
        assert (cfg.optim.lr_scaling, list(cfg.optim.betas), cfg.optim.momentum_teacher) == ("sqrt", [0.9, 0.95], 0.996)
        assert (cfg.optim.base_lr, cfg.optim.warmup_epochs, cfg.optim.epochs, cfg.optim.weight_decay) == \
            (1.5e-4, 40, 1600, 0.05)
    trainer = _trainer(tiny_mae)
    assert trainer.loader.recipe.name == "src_pair" and trainer.method.ema_every == "step"
    assert trainer.method.knn_on == "student"  # k-NN on the online encoder
    assert trainer.ema_at.all()


def test_guidance_pools_patch_tokens_only_and_the_predictor_is_the_students_alone(tiny_mae):
    from model.vit import forward_full, forward_visible

    trainer = _trainer(tiny_mae)
    student, target = trainer.backend.module, trainer.backend.teacher_module
    assert not hasattr(target, "predictor") and not hasattr(target, "decoder")
    views = _views(trainer)
    method = trainer.method
    masks = method.masks(views, None, _gen())
    with torch.no_grad():
        targets = method.targets(trainer.backend.teacher, views, masks, {})
        outputs = student(method.student_passes(views, masks))
        losses = method.losses(outputs, targets, masks, {})
        v1, v2 = views.global_views[0], views.global_views[1]
        keep = masks["keep"][:, 0]
        tokens = forward_visible(student.backbone, v1, keep)                       # [B, 1 + 4, D]
        u = student.predictor(student.head(tokens[:, 1:].mean(1)))
        v = target.head(forward_full(target.backbone, v2)[:, 1:].mean(1))
        with_cls = student.predictor(student.head(tokens.mean(1)))                  # [CLS] in the mean: wrong
    torch.testing.assert_close(outputs[0]["u"], u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets["v"], v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_cls, u, atol=1e-3)
    cos = (u / u.norm(dim=1, keepdim=True) * (v / v.norm(dim=1, keepdim=True))).sum(1)
    hand_gg = float((2 - 2 * cos).mean())
    assert float(losses["guidance"]) == pytest.approx(hand_gg, rel=1e-5)
    alpha = trainer.cfg.method.guidance_weight
    assert float(losses["loss"]) == pytest.approx(float(losses["mim"]) + alpha * hand_gg, rel=1e-5)


def test_target_network_runs_once_on_the_full_view_2_and_is_an_ema_of_encoder_head_and_bn_stats(tiny_mae):
    trainer = _trainer(tiny_mae)
    b = trainer.backend
    names = set(b.teacher_module.state_dict())
    assert names and all(k.startswith(("backbone.", "head.")) for k in names)
    assert any(k.startswith("head.") and k.endswith("running_var") for k in names)
    calls = []
    teach = b.teacher
    b.teacher = lambda images: calls.append(images.clone()) or teach(images)
    views = _views(trainer)
    teacher_before = {k: v.clone() for k, v in b.teacher_module.state_dict().items()}
    trainer.train_step(views)
    assert len(calls) == 1 and torch.equal(calls[0], views.global_views[1])   # all N tokens of view 2, once
    m = trainer.schedules["momentum"][0]
    student = b.module.state_dict()
    changed = 0
    for k, v in b.teacher_module.state_dict().items():
        if v.dtype.is_floating_point and k != "backbone.pos_embed":
            torch.testing.assert_close(v, m * teacher_before[k] + (1 - m) * student[k], atol=1e-6, rtol=1e-5)
            changed += "running" in k and not torch.equal(v, teacher_before[k])
    assert changed >= 2  # the BN running mean and var moved towards the student's


def test_the_heads_batchnorm_sees_all_k_masks_and_k_masks_batched_equal_the_loop(tiny_mae):
    trainer = _trainer(tiny_mae, "method.n_masks=4")
    student = trainer.backend.module
    views = _views(trainer)
    masks = trainer.method.masks(views, None, _gen())
    keep = masks["keep"]
    assert keep.shape == (16, 4, 4) and all(sorted(keep[i].flatten().tolist()) == list(range(16)) for i in range(16))
    rows = []
    bn = student.head[1]
    bn.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    passes = trainer.method.student_passes(views, masks)
    torch.manual_seed(0)
    batched = student(passes, "batched")
    torch.manual_seed(0)
    looped = student(passes, "loop")
    assert rows == [64, 64]                                  # B*K rows in one BN call, in both modes
    for a, c in zip(batched, looped):
        torch.testing.assert_close(a["u"], c["u"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a["pred"], c["pred"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        targets = trainer.method.targets(trainer.backend.teacher, views, masks, {})
    la = trainer.method.losses(batched, targets, masks, {})
    lb = trainer.method.losses(looped, targets, masks, {})
    assert float(la["loss"].detach()) == pytest.approx(float(lb["loss"].detach()), rel=1e-5)
    per_mask = [float((2 - 2 * F.cosine_similarity(o["u"].detach(), targets["v"], dim=-1)).mean()) for o in batched]
    assert float(la["guidance"]) == pytest.approx(np.mean(per_mask), rel=1e-5)   # K terms, averaged


def test_the_two_view_form_has_disjoint_visible_sets_and_cross_view_guidance(tiny_mae):
    trainer = _trainer(tiny_mae, "method.views=two")
    views = _views(trainer)
    method = trainer.method
    masks = method.masks(views, None, _gen())
    keep = masks["keep"]
    assert keep.shape == (16, 2, 4)
    assert all(not set(keep[i, 0].tolist()) & set(keep[i, 1].tolist()) for i in range(16))
    calls = []
    teach = trainer.backend.teacher
    trainer.backend.teacher = lambda images: calls.append(images.shape[0]) or teach(images)
    passes = method.student_passes(views, masks)
    assert [p.group for p in passes] == ["visible", "encode"]
    assert passes[1].shared["images"] is views.global_views[1]
    with torch.no_grad():
        targets = method.targets(trainer.backend.teacher, views, masks, {})
        outputs = trainer.backend.module(passes)
        losses = method.losses(outputs, targets, masks, {})
        v_of = {i: trainer.backend.teacher_module.teach(views.global_views[i])["v"] for i in (0, 1)}
    assert calls == [32] and "pred" in outputs[0] and "pred" not in outputs[1]   # both views, one call; MIM on view 1
    torch.testing.assert_close(targets["v_view1"], v_of[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets["v"], v_of[1], atol=1e-5, rtol=1e-5)

    def gg(u, v):
        return (2 - 2 * F.cosine_similarity(u, v, dim=-1)).mean()

    hand = 0.5 * (gg(outputs[0]["u"], v_of[1]) + gg(outputs[1]["u"], v_of[0]))
    assert float(losses["guidance"]) == pytest.approx(float(hand), rel=1e-5)


@pytest.mark.parametrize("override, key", [
    (["method.views=two", "method.mask_ratio=[0.4,0.4]"], "method.mask_ratio"),
    (["method.views=two", "method.n_masks=2"], "method.n_masks"),
    (["method.views=three"], "method.views"),
    (["method.n_masks=5"], "method.n_masks"),
    (["method.guidance_weight=-1"], "method.guidance_weight"),
    (["model.guide_head_depth=0"], "model.guide_head_depth"),
    (["data.batch_size=1"], "data.batch_size"),
])
def test_bad_lcmae_config_is_one_line_naming_the_key(tiny_mae, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(LCMAE, tiny_mae + override)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_a_short_run_trains_and_logs_both_terms(tiny_mae):
    from train.metrics import read_metrics

    cfg = load_config(LCMAE, tiny_mae + HEADS + ["run.max_steps=3"])
    summary = Trainer(cfg).fit()
    rows = [r for r in read_metrics(cfg.run.dir) if "loss" in r]
    assert summary["steps"] == 3 and len(rows) == 3
    assert all(r["loss"] == pytest.approx(r["mim"] + 1.0 * r["guidance"], rel=1e-5) for r in rows)
    assert all(0 <= r["guidance"] <= 4 and 0 < r["target_spread"] for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_give_the_eager_losses(tiny_mae, tmp_path):
    """The heads' BatchNorm (its running statistics updated inside the captured region) included."""
    from train.metrics import read_metrics

    overrides = tiny_mae + HEADS + ["run.max_steps=4", "distributed.precision=fp32", "method.n_masks=2",
                                    "data.train=synthetic"]  # no DALI needed
    Trainer(load_config(LCMAE, overrides + [f"run.dir={tmp_path / 'eager'}"])).fit()
    Trainer(load_config(LCMAE, overrides + [f"run.dir={tmp_path / 'graphed'}", "train.cuda_graphs=true"])).fit()
    a = [r["loss"] for r in read_metrics(tmp_path / "eager") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "graphed") if "loss" in r]
    assert len(a) == len(b) == 4 and b == pytest.approx(a, rel=1e-4)


def test_the_profilers_memory_probe_leaves_the_batchnorm_statistics_alone(tiny_mae):
    from train.memory import estimate_step_memory

    trainer = _trainer(tiny_mae)
    before = {k: v.clone() for k, v in trainer.backend.module.state_dict().items()}
    est = estimate_step_memory(trainer, _views(trainer))
    assert est.activations > 0
    after = trainer.backend.module.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
