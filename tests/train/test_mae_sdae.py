"""MAE and SdAE on the shared engine: losses against hand computations, folds, the teacher
call, the EMA's cadence, no teacher for MAE, K masks batched == looped, config errors."""
import numpy as np
import pytest
import torch

from train.config import CONFIGS, ConfigError, load_config
from train.engine import Trainer, step_seed
from train.metrics import read_metrics

MAE = CONFIGS / "mae_vitb16.yaml"
SDAE = CONFIGS / "sdae_vitb16.yaml"


def _views(trainer):
    return next(iter(trainer.loader))


def _sched(trainer, step=0):
    return {k: float(v[step]) for k, v in trainer.schedules.items()}


def _gen(step=0):
    return torch.Generator().manual_seed(step_seed(0, step, 0))


# ------------------------------------------------------------------ MAE

def test_mae_loss_is_the_masked_patches_normalised_pixel_error():
    from train.methods.mae import MAE as MAEMethod

    torch.manual_seed(0)
    method = MAEMethod(0.75, 1, True, True, patch_size=8)
    images = torch.randn(2, 3, 16, 16)
    views = type("V", (), {"global_views": [images]})()
    masks = method.masks(views, None, torch.Generator().manual_seed(0))
    keep = masks["keep"]                                                   # [2, 1, 1]
    assert keep.shape == (2, 1, 1)
    pred = torch.randn(2, 4, 192)
    loss = method.losses([{"pred": pred}], method.targets(None, views, masks, {}), masks, {})["loss"]
    total, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            if t in keep[b, 0].tolist():
                continue
            r, c = divmod(t, 2)
            patch = images[b, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].permute(1, 2, 0).reshape(-1)  # (p, q, c)
            target = (patch - patch.mean()) / (patch.var(unbiased=True) + 1e-6).sqrt()
            total += ((pred[b, t] - target) ** 2).mean().item()
            count += 1
    assert count == 6 and abs(loss.item() - total / count) < 1e-5
    raw = MAEMethod(0.75, 1, True, False, patch_size=8)
    pixels = raw.targets(None, views, masks, {})["pixels"]
    assert torch.equal(pixels[0, 3], images[0, :, 8:, 8:].permute(1, 2, 0).reshape(-1))  # raw pixels


def test_mae_has_no_teacher_no_ema_and_none_in_its_checkpoint(tiny_mae, tmp_path):
    trainer = Trainer(load_config(MAE, tiny_mae + ["run.max_steps=3"]))
    assert trainer.backend.teacher_module is None and trainer.backend.teacher is None
    assert "momentum" not in trainer.schedules and not trainer.ema_at.any()
    summary = trainer.fit()
    assert summary["steps"] == 3 and np.isfinite(summary["loss"])
    state = torch.load(next((tmp_path / "run" / "checkpoints").iterdir()) / "state.pt", weights_only=False)
    assert state["teacher"] is None and any(k.startswith("decoder.") for k in state["student"])


def test_mae_k_masks_batched_equal_the_loop_and_are_disjoint(tiny_mae):
    trainer = Trainer(load_config(MAE, tiny_mae + ["method.n_masks=4"]))
    views = _views(trainer)
    masks = trainer.method.masks(views, None, _gen())
    keep = masks["keep"]                                                   # [B, 4, 4]: all 16 tokens
    assert keep.shape == (16, 4, 4)
    assert all(sorted(keep[b].flatten().tolist()) == list(range(16)) for b in range(16))
    passes = trainer.method.student_passes(views, masks)
    assert len(passes) == 4
    calls = []
    trainer.backend.module.decoder.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    batched = trainer.backend.module(passes, "batched")
    assert calls == [(64, 16, 192)]                                        # one decoder call of B*K sequences
    looped = trainer.backend.module(passes, "loop")
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a["pred"], b["pred"], atol=1e-5, rtol=1e-5)


def test_mae_k_mask_step_trains_from_one_decoded_batch(tiny_mae):
    cfg = load_config(MAE, tiny_mae + ["method.n_masks=2", "run.max_steps=2"])
    trainer = Trainer(cfg)
    trainer.fit()
    rows = [r for r in read_metrics(cfg.run.dir) if "loss" in r]
    assert len(rows) == 2 and all(abs(r["mask_ratio"] - 0.75) < 1e-6 for r in rows)


# ------------------------------------------------------------------ SdAE

def test_sdae_folds_partition_the_masked_set_and_each_is_its_own_teacher_sequence(tiny_mae):
    trainer = Trainer(load_config(SDAE, tiny_mae))
    views = _views(trainer)
    masks = trainer.method.masks(views, None, _gen())
    keep, folds = masks["keep"], masks["folds"]
    assert keep.shape == (16, 4) and folds.shape == (16, 3, 4)
    for b in range(16):
        visible, fold_sets = set(keep[b].tolist()), [set(f.tolist()) for f in folds[b]]
        assert all(not (visible & f) for f in fold_sets)                       # never a visible token
        assert set().union(*fold_sets) == set(range(16)) - visible             # cover the masked set
        assert sum(map(len, fold_sets)) == 12                                  # disjoint
    seen = []
    blocks = trainer.backend.teacher_module.backbone.blocks
    blocks[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    targets = trainer.method.targets(trainer.backend.teacher, views, masks, _sched(trainer))
    assert seen == [(16 * 3, 1 + 4, 32)]                                       # one call of B*t sequences, [CLS] each
    # each fold alone through the teacher gives the same tokens: attention never crosses folds
    from model.decoder import normalize_patches
    from model.vit import forward_visible

    alone = forward_visible(trainer.backend.teacher_module.backbone, views.global_views[0][:1], folds[:1, 1])
    torch.testing.assert_close(targets["features"][0, 1], normalize_patches(alone[0, 1:]), atol=1e-5, rtol=1e-5)


def test_sdae_targets_are_normalised_over_d_and_the_loss_is_a_cosine_over_d(tiny_mae):
    trainer = Trainer(load_config(SDAE, tiny_mae))
    views = _views(trainer)
    masks = trainer.method.masks(views, None, _gen())
    targets = trainer.method.targets(trainer.backend.teacher, views, masks, _sched(trainer))["features"]
    assert targets.shape == (16, 3, 4, 32)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(16, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1), torch.ones(16, 3, 4), atol=1e-3, rtol=0)   # unbiased var
    pred = torch.randn(16, 16, 32)
    loss = trainer.method.losses([{"pred": pred}], {"features": targets}, masks, {})["loss"]
    hand = []
    for b in range(16):
        for t in range(3):
            for j, token in enumerate(masks["folds"][b, t].tolist()):
                p, q = pred[b, token], targets[b, t, j]
                hand.append(1 - (p @ q / (p.norm() * q.norm())).item())
    assert abs(loss.item() - sum(hand) / len(hand)) < 1e-5


def test_sdae_full_image_teacher_gives_targets_at_the_fold_positions(tiny_mae):
    trainer = Trainer(load_config(SDAE, tiny_mae + ["method.teacher_input=full"]))
    views = _views(trainer)
    masks = trainer.method.masks(views, None, _gen())
    seen = []
    trainer.backend.teacher_module.backbone.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape)))
    targets = trainer.method.targets(trainer.backend.teacher, views, masks, _sched(trainer))["features"]
    assert seen == [(16, 17, 32)] and targets.shape == (16, 3, 4, 32)         # the whole image once


def test_sdae_teacher_is_an_ema_of_the_encoder_once_per_epoch(tiny_mae):
    cfg = load_config(SDAE, tiny_mae + ["optim.epochs=2", "run.max_steps=0"])
    trainer = Trainer(cfg)
    ipe = trainer.iters_per_epoch
    t_names = set(trainer.backend.teacher_module.state_dict())
    assert t_names and all(k.startswith("backbone.") for k in t_names)        # no decoder, no mask token
    assert not any(k.startswith("decoder.") for k in t_names)
    assert trainer.ema_at.tolist() == [(i + 1) % ipe == 0 for i in range(2 * ipe)]
    per_epoch = [trainer.schedules["momentum"][0], trainer.schedules["momentum"][ipe]]
    assert per_epoch == pytest.approx([0.96, 0.99 + 0.5 * (0.96 - 0.99) * (1 + np.cos(np.pi / 2))])
    teacher = trainer.backend.teacher_module
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    views = _views(trainer)
    trainer.train_step(views)
    trainer.step += 1
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # step 0: no EMA yet
    trainer.step = ipe - 1                                                    # the epoch's last step
    student = {k: v.clone() for k, v in trainer.backend.module.state_dict().items()}
    teacher_now = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train_step(views)
    new_student = trainer.backend.module.state_dict()
    m = trainer.schedules["momentum"][ipe - 1]
    for k, v in teacher.state_dict().items():
        if teacher_now[k].dtype.is_floating_point and k != "backbone.pos_embed":
            expected = m * teacher_now[k] + (1 - m) * new_student[k]
            torch.testing.assert_close(v, expected, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(student[k], new_student[k]) for k in student)


def test_sdae_ema_every_step_follows_the_per_iteration_cosine(tiny_mae):
    trainer = Trainer(load_config(SDAE, tiny_mae + ["method.ema_every=step", "optim.epochs=2"]))
    total = 2 * trainer.iters_per_epoch
    assert trainer.ema_at.all()
    m = trainer.schedules["momentum"]
    assert m[0] == pytest.approx(0.96) and m[-1] == pytest.approx(0.99 - 0.015 * (1 + np.cos(np.pi * (total - 1) / total)))


def test_sdae_per_epoch_ema_happens_once_across_a_resume_at_the_epoch_boundary(tiny_mae, tmp_path):
    base = tiny_mae + ["optim.epochs=2", "data.batch_size=300"]                # 4 steps per epoch
    straight = Trainer(load_config(SDAE, base + [f"run.dir={tmp_path / 'a'}"]))
    assert straight.iters_per_epoch == 4
    straight.fit()
    Trainer(load_config(SDAE, base + [f"run.dir={tmp_path / 'b'}", "run.max_steps=4"])).fit()
    resumed = Trainer(load_config(SDAE, base + [f"run.dir={tmp_path / 'b'}"]))
    assert resumed.step == 4
    resumed.fit()
    a, b = straight.backend.teacher_module.state_dict(), resumed.backend.teacher_module.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    la = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r}
    lb = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r}
    assert all(abs(la[s] - lb[s]) <= 1e-5 * abs(la[s]) for s in range(5, 9)), (la, lb)


# ------------------------------------------------------------------ k-NN features and config

def test_knn_reads_the_students_cls_or_avgpool(tiny_mae, embedded_dir):
    for feature in ("cls", "avgpool"):
        cfg = load_config(MAE, tiny_mae + [f"data.val={embedded_dir / 'val'}", f"eval.feature={feature}",
                                           "eval.knn_engine=reference"])
        trainer = Trainer(cfg)
        module = trainer.backend.module
        assert module.training
        top1 = trainer.knn()
        assert 0.0 <= top1 <= 100.0 and module.training                    # eval mode only for the k-NN
    images = torch.randn(2, 3, 32, 32)
    module.eval()
    from model.vit import forward_full

    tokens = forward_full(module.backbone, images)
    torch.testing.assert_close(module.features(images, "cls"), tokens[:, 0])
    torch.testing.assert_close(module.features(images, "avgpool"), tokens[:, 1:].mean(1))


@pytest.mark.parametrize("override, key", [
    (["method.mask_ratio=[0.0,0.0]"], "method.mask_ratio"),
    (["method.mask_ratio=[1.0,1.0]"], "method.mask_ratio"),
    (["method.mask_ratio=[0.5,0.75]"], "method.mask_ratio"),
    (["model.decoder_dim=30", "model.decoder_heads=4"], "model.decoder_dim"),
    (["method.name=mae", "method.n_masks=5"], "method.n_masks"),
    (["method.folds=13"], "method.folds"),
    (["method.teacher_input=half"], "method.teacher_input"),
    (["method.norm_pix=maybe"], "method.norm_pix"),
    (["method.ema_every=hourly"], "method.ema_every"),
])
def test_bad_autoencoder_config_is_one_line_naming_the_key(tiny_mae, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(SDAE, tiny_mae + override)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("recipe", [MAE, SDAE], ids=["mae", "sdae"])
def test_cuda_graphs_give_the_eager_losses(tiny_mae, tmp_path, recipe):
    overrides = tiny_mae + ["run.max_steps=4", "distributed.precision=fp32", "method.ema_every=step",
                            "data.train=synthetic"]  # no DALI needed
    Trainer(load_config(recipe, overrides + [f"run.dir={tmp_path / 'eager'}"])).fit()
    Trainer(load_config(recipe, overrides + [f"run.dir={tmp_path / 'graphed'}", "train.cuda_graphs=true"])).fit()
    a = [r["loss"] for r in read_metrics(tmp_path / "eager") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "graphed") if "loss" in r]
    assert len(a) == len(b) == 4 and b == pytest.approx(a, rel=1e-4)
