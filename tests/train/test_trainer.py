"""A few real steps of the recipes on a tiny ViT and the embedded shards (DALI, CPU mode)."""
import math

import pytest
import torch

from train.checkpoint import complete_checkpoints
from train.config import load_config
from train.engine import Trainer, TrainingError
from train.metrics import read_metrics


def _params(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


@pytest.mark.parametrize("method", [
    ["method.name=ibot", "method.masking=attmask_high"],
    ["method.name=dino", "method.patch_weight=0", "method.masking=attmask_high"],
    ["method.name=ibot", "method.masking=block"],
])
def test_a_few_steps_train_student_and_teacher(tiny, method):
    cfg = load_config(None, tiny + method + ["run.max_steps=3", "optim.freeze_last_layer_epochs=0"])
    trainer = Trainer(cfg)
    b = trainer.backend
    student0, teacher0 = _params(b.module), _params(b.teacher_module)
    assert torch.equal(student0, teacher0)  # the teacher starts as an exact copy

    teacher_calls = []
    b.teacher_module.backbone.patch_embed.register_forward_hook(lambda *a: teacher_calls.append(1))
    summary = trainer.fit()

    assert summary["steps"] == 3 and math.isfinite(summary["loss"])
    assert len(teacher_calls) == 3  # one teacher forward per step (targets and attention)
    student, teacher = _params(b.module), _params(b.teacher_module)
    assert not torch.equal(student, student0) and not torch.equal(teacher, teacher0)
    # EMA: the teacher moved towards the student, by less than the student moved
    assert (teacher - teacher0).norm() < (student - student0).norm()
    rows = [r for r in read_metrics(cfg.run.dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(("mim" in r) == (cfg.method.name == "ibot") for r in rows)
    assert all(k in rows[0] for k in ("lr", "weight_decay", "momentum", "teacher_temp", "images_per_s",
                                      "data_wait_fraction", "skipped_samples", "nonfinite_steps",
                                      "cls_target_entropy", "cls_kl"))
    assert rows[0]["mask_ratio"] > 0 or cfg.method.masking == "block"
    assert [p.name for p in complete_checkpoints(cfg.run.dir)] == ["step_000000003"]
    assert (trainer.run_dir / "config.yaml").is_file() and any((trainer.run_dir / "tb").iterdir())


def test_a_collapsed_cls_head_is_reported_once(tiny, tmp_path, capsys):
    # hot temperatures flatten teacher and student alike: uniform targets, KL ~ 0 from step 1
    hot = ["method.teacher_temp=1000", "method.warmup_teacher_temp=1000", "method.student_temp=1000"]
    Trainer(load_config(None, tiny + hot + ["run.max_steps=3"])).fit()
    printed = capsys.readouterr().out
    assert printed.count("warning (step 1): the [CLS] targets are uniform") == 1
    assert printed.count("head has collapsed") == 1  # once per run, not at every log line

    Trainer(load_config(None, tiny + ["run.max_steps=2", f"run.dir={tmp_path / 'recipe_temps'}"])).fit()
    assert "collapsed" not in capsys.readouterr().out  # the tiny recipe's own temperatures: no warning


def test_last_layer_is_frozen_in_the_first_epoch(tiny):
    trainer = Trainer(load_config(None, tiny + ["run.max_steps=2", "optim.freeze_last_layer_epochs=1"]))
    last = [p.detach().clone() for p in trainer.backend.module.last_layer_parameters()]
    rest = trainer.backend.module.backbone.blocks[0].attn.qkv.weight.detach().clone()
    trainer.fit()
    assert all(torch.equal(a, p) for a, p in zip(last, trainer.backend.module.last_layer_parameters()))
    assert not torch.equal(rest, trainer.backend.module.backbone.blocks[0].attn.qkv.weight)


def test_non_finite_losses_are_skipped_then_stop_the_run_with_a_checkpoint(tiny):
    trainer = Trainer(load_config(None, tiny + ["run.max_steps=10", "run.max_nonfinite=3"]))
    teacher0 = _params(trainer.backend.teacher_module)
    with torch.no_grad():
        trainer.backend.module.head.mlp[0].weight.fill_(float("nan"))  # every loss is NaN from here on
    with pytest.raises(TrainingError, match=r"3 non-finite losses in a row .*optim.base_lr"):
        trainer.fit()
    assert trainer.nonfinite_total == 3 and trainer.step == 3
    assert torch.equal(_params(trainer.backend.teacher_module), teacher0)  # nothing was updated
    assert [p.name for p in complete_checkpoints(trainer.run_dir)] == ["step_000000003"]
    rows = [r for r in read_metrics(trainer.run_dir) if "nonfinite_steps" in r]
    assert rows[-1]["nonfinite_steps"] == 3


def test_knn_is_logged_at_start_and_end(tiny, embedded_dir):
    cfg = load_config(None, tiny + [f"data.val={embedded_dir / 'val'}", "eval.knn_at_start=true", "run.max_steps=1"])
    summary = Trainer(cfg).fit()
    assert 0 <= summary["knn_start"] <= 100 and 0 <= summary["knn_end"] <= 100
    assert [r["step"] for r in read_metrics(cfg.run.dir) if "knn_top1" in r] == [0, 1]


def test_resuming_a_checkpoint_of_another_model_is_a_clear_error(tiny):
    from train.checkpoint import CheckpointError

    Trainer(load_config(None, tiny + ["run.max_steps=1"])).fit()
    with pytest.raises(CheckpointError, match=r"another model \(model.out_dim 64 -> 32\).*run.resume=never"):
        Trainer(load_config(None, tiny + ["run.max_steps=2", "model.out_dim=32"]))
    resumed = Trainer(load_config(None, tiny + ["run.max_steps=2"]))  # same model: resumes
    assert resumed.step == 1


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DALI mixed decoding, bf16 autocast)")
def test_a_few_bf16_steps_on_cuda(tiny):
    trainer = Trainer(load_config(None, tiny + ["run.max_steps=3"]))
    assert trainer.device.type == "cuda" and trainer.autocast_dtype == torch.bfloat16
    summary = trainer.fit()
    assert summary["steps"] == 3 and math.isfinite(summary["loss"])
    assert any("gpu_memory_gb" in r for r in read_metrics(trainer.run_dir))


def test_a_corrupt_sample_is_skipped_counted_and_listed(tiny, embedded_dir, corrupt_copy):
    import json

    from data.sampler import rank_order

    cfg = load_config(None, tiny + ["run.max_steps=2"])
    first = rank_order([300] * 4, cfg.run.seed, 0, 0, 1, cfg.data.batch_size)[:cfg.data.batch_size]
    folder, key, shard = corrupt_copy(embedded_dir / "train", int(first[3]))  # in the first batch
    trainer = Trainer(load_config(None, tiny + ["run.max_steps=2", f"data.train={folder}"]))
    summary = trainer.fit()
    assert summary["skipped_samples"] == 1 and summary["steps"] == 2
    assert [r["skipped_samples"] for r in read_metrics(trainer.run_dir) if "loss" in r] == [1, 1]
    listed = [json.loads(line) for line in (trainer.run_dir / "skipped_samples.rank0.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["key"]) for r in listed] == [(shard, key)]
