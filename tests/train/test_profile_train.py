import json

import pytest
import torch


def _tiny_overrides(tiny):
    return [o for o in tiny if not o.startswith(("run.dir=", "data.train=", "data.val=", "data.embedded_dir="))]


def test_train_profile_reports_phases_flops_and_the_attmask_ratio(run_cli, tiny, embedded_dir):
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--data", embedded_dir / "train", "--steps", "2",
                   "--warmup", "1", "--compare", "block", *_tiny_overrides(tiny), check=True)
    out = json.loads(proc.stdout)
    main, other = out["attmask_high"], out["block"]
    assert set(main["phase_ms"]) >= {"teacher", "masks", "backward", "optimizer", "ema", "student_and_loss"}
    assert all(v >= 0 for v in main["phase_ms"].values()) and main["step_ms"] > 0 and other["step_ms"] > 0
    assert main["flops_per_step"] > 0 and main["mfu"] is None  # no peak figure for a CPU
    ratio = out["ratio"]["step_time_attmask_high_over_block"]
    assert abs(ratio - main["step_ms"] / other["step_ms"]) < 1e-3 and out["ratio"]["goal"] == 1.05


def test_train_profile_bad_arguments_are_one_line_errors(run_cli, tiny, tmp_path):
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--data", tmp_path, *_tiny_overrides(tiny))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--compare", "sideways")
    assert proc.returncode == 2 and "--compare for the demo recipe must be one of attmask_high" in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "extrema", "--compare", "block")
    assert proc.returncode == 2 and "--compare for the extrema recipe must be one of naive" in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--masks", "3")
    assert proc.returncode == 2 and "--masks K (>= 1) applies to the extrema, extrema_vitb16, mae, lcmae, lcmae_vits16 recipes only" in proc.stderr


def test_train_profile_extrema_shared_against_naive(run_cli, tiny_extrema, embedded_dir):
    overrides = [o for o in _tiny_overrides(tiny_extrema) if not o.startswith("method.n_masks=")]
    proc = run_cli("profile.py", "train", "--recipe", "extrema", "--masks", "4", "--compare", "naive",
                   "--data", embedded_dir / "train", "--steps", "2", "--warmup", "1", *overrides, check=True)
    out = json.loads(proc.stdout)
    shared, naive = out["shared"], out["naive"]
    assert out["method"] == "extrema" and "4 masks x 4 of 16 tokens" in out["views"]
    # the naive step runs the teacher once per mask, the shared step once (counted, not timed)
    assert naive["phase_calls_per_step"]["teacher"] == 4 and shared["phase_calls_per_step"]["teacher"] == 1
    ratio = out["ratio"]["step_time_shared_over_naive"]
    assert abs(ratio - shared["step_ms"] / naive["step_ms"]) < 1e-3 and out["ratio"]["goal"] == 0.55


def _readme_train_profiles():
    """The `tools/profile.py train` lines of the README, as argument lists."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = re.findall(r"^python tools/profile\.py (train [^#\n]*)", text, flags=re.M)
    return [shlex.split(line) for line in lines]


TINY_VIT = ["model.kwargs.patch_size=8", "model.kwargs.img_size=32", "model.kwargs.embed_dim=32",
            "model.kwargs.num_heads=2", "model.kwargs.depth=2", "data.global_size=32", "data.local_size=16",
            "data.n_local=2", "model.out_dim=64", "model.head_hidden=32", "model.head_bottleneck=16",
            "model.proj_hidden=48", "model.pred_hidden=48", "model.proj_dim=16", "data.workers=1",
            "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.guide_hidden=48"]


def test_the_readmes_train_profiles_run_with_their_documented_defaults(run_cli, embedded_dir, tmp_path):
    """Each README command as typed (its --data replaced by the embedded shards where it names
    ImageNet, a tiny ViT where the recipe's is ViT-S): the defaults (steps, warm-up, the CPU
    batch) are the ones documented, and the memory check passes them."""
    commands = _readme_train_profiles()
    assert len(commands) >= 3 and any("--masks" in c for c in commands)
    for args in commands:
        if "--data" in args and args[args.index("--data") + 1] != "synthetic":
            args[args.index("--data") + 1] = str(embedded_dir / "train")
        if "--trace" in args:
            args[args.index("--trace") + 1] = str(tmp_path / f"trace{commands.index(args)}")
        tiny = [] if "demo" in args else TINY_VIT  # the demo recipe is CPU-sized already
        proc = run_cli("profile.py", *args, *tiny, check=True)
        out = json.loads(proc.stdout)
        asked = [int(a.split("=")[1]) for a in args if a.startswith("data.batch_size=")]
        steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 10
        assert out["batch_per_process"] == (asked[0] if asked else 16) and out["steps"] == steps, args
        assert 0 < out["memory"]["estimated_gb"] < 0.9 * out["memory"]["available_gb"]
        assert len(out["ratio"]) == 2 if ("--compare" in args or "--masks" in args) else "ratio" not in out
        assert ("trace" in out) == ("--trace" in args)


def test_a_step_that_cannot_fit_is_refused_with_the_estimate(tiny):
    from train.benchmark import StepTooLarge, check_memory
    from train.config import load_config
    from train.engine import Trainer
    from train.memory import estimate_step_memory, slice_views

    trainer = Trainer(load_config(None, tiny + ["run.resume=never"]))   # iBOT: centers in buffers
    views = next(iter(trainer.loader))
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    est = estimate_step_memory(trainer, views)
    assert all(torch.equal(v, trainer.method.state_dict()[k]) for k, v in before.items())  # probe undone
    assert est.static > 0 and est.activations > 0 and est.batch_size == 16
    half = estimate_step_memory(trainer, slice_views(views, 8))
    assert abs(half.activations * 2 - est.activations) <= 2            # activations scale with the batch
    fits = check_memory(trainer, views, runs=2, batches=12, free=10 * 2**30)
    assert fits["available_gb"] == 10.0 and fits["estimated_gb"] < 9.0
    with pytest.raises(StepTooLarge, match=r"needs about .* GB at data.batch_size=16 .* use data.batch_size=\d+ or less"):
        check_memory(trainer, views, runs=2, batches=12, free=est.total)
    trainer.close()


def _tiny_mae_overrides(tiny_mae):
    return [o for o in tiny_mae if not o.startswith(("run.dir=", "data.train=", "data.val=", "data.embedded_dir="))]


def test_train_profile_sdae_against_mae_and_the_full_image_teacher(run_cli, tiny_mae, embedded_dir):
    for compare, main, goal in (("mae", "sdae", 1.25), ("full_teacher", "folds", 0.85)):
        proc = run_cli("profile.py", "train", "--recipe", "sdae", "--compare", compare, "--data",
                       embedded_dir / "train", "--steps", "2", "--warmup", "1", *_tiny_mae_overrides(tiny_mae),
                       check=True)
        out = json.loads(proc.stdout)
        assert out["method"] == "sdae" and "teacher: 3 folds of 4" in out["views"]
        assert out[main]["phase_calls_per_step"]["teacher"] == 1
        if compare == "mae":
            assert "teacher" not in out["mae"]["phase_calls_per_step"]    # MAE has no teacher
        else:
            assert out["full_teacher"]["phase_calls_per_step"]["teacher"] == 1
        ratio = out["ratio"][f"step_time_{main}_over_{compare}"]
        assert abs(ratio - out[main]["step_ms"] / out[compare]["step_ms"]) < 1e-3 and out["ratio"]["goal"] == goal


def test_train_profile_mae_k_masks_per_decoded_image_against_one(run_cli, tiny_mae, embedded_dir):
    proc = run_cli("profile.py", "train", "--recipe", "mae", "--masks", "4", "--data", embedded_dir / "train",
                   "--steps", "2", "--warmup", "1", *_tiny_mae_overrides(tiny_mae), check=True)
    out = json.loads(proc.stdout)
    k4, k1 = out["masks_4"], out["one_mask"]
    assert k4["masks_per_image"] == 4 and k1["masks_per_image"] == 1
    assert abs(k4["data_wait_ms_per_sequence"] * 4 - k1["data_wait_ms_per_sequence"]) < 1e-3  # one loader
    assert abs(k4["sequences_per_s"] - 16 * 4 / (k4["step_ms"] / 1e3)) < 0.01
    assert "step_time_masks_4_over_one_mask" in out["ratio"]


def test_train_profile_lcmae_against_mae_and_against_a_target_forward_per_mask(run_cli, tiny_mae, embedded_dir):
    tiny = _tiny_mae_overrides(tiny_mae) + ["model.guide_hidden=48"]
    proc = run_cli("profile.py", "train", "--recipe", "lcmae", "--compare", "mae", "--data", embedded_dir / "train",
                   "--steps", "2", "--warmup", "1", *tiny, check=True)
    out = json.loads(proc.stdout)
    assert out["method"] == "lcmae" and "target: view 2, all tokens" in out["views"]
    assert out["lcmae"]["phase_calls_per_step"]["teacher"] == 1 and "teacher" not in out["mae"]["phase_calls_per_step"]
    assert out["ratio"]["goal"] == 1.45
    assert abs(out["ratio"]["step_time_lcmae_over_mae"] - out["lcmae"]["step_ms"] / out["mae"]["step_ms"]) < 1e-3
    proc = run_cli("profile.py", "train", "--recipe", "lcmae", "--masks", "4", "--compare", "naive", "--data",
                   embedded_dir / "train", "--steps", "2", "--warmup", "1", *tiny, check=True)
    out = json.loads(proc.stdout)
    assert "4 masks x 4 of 16 tokens of view 1" in out["views"] and out["ratio"]["goal"] == 0.8
    assert out["naive"]["phase_calls_per_step"]["teacher"] == 4 and out["shared"]["phase_calls_per_step"]["teacher"] == 1


def test_train_profile_on_synthetic_batches_with_a_trace_of_named_phases(run_cli, tmp_path):
    """--data synthetic needs no shards; --trace writes a Chrome/Perfetto trace (JSON, which
    TensorBoard's profiler plugin reads too) with every phase of the timed steps as a range."""
    trace = tmp_path / "trace"
    proc = run_cli("profile.py", "train", "--recipe", "lcmae", "--data", "synthetic", "--steps", "2", "--warmup", "1",
                   "--trace", trace, *TINY_VIT, check=True)
    out = json.loads(proc.stdout)
    assert out["engine"] == "synthetic" and out["lcmae"]["data_wait_ms_per_batch"] < 50
    assert len(out["trace"]) == 1
    events = json.loads(open(out["trace"][0]).read())["traceEvents"]
    names = {e.get("name") for e in events}
    for phase in ("teacher", "masks", "backward", "optimizer", "ema"):
        assert sum(e.get("name") == f"lcmae/{phase}" for e in events) == 2, phase  # once per timed step
    assert any(str(n).startswith("aten::") for n in names)  # the operators inside them
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    proc = run_cli("profile.py", "train", "--recipe", "lcmae", "--data", "synthetic", "--trace", tmp_path / "busy")
    assert proc.returncode == 2 and "holds something other than traces" in proc.stderr and "Traceback" not in proc.stderr
