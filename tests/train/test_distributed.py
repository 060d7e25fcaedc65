"""Two CPU processes (gloo) against one, on the same global batch: same losses, same teacher.
Real torchrun / accelerate launch processes, real DDP and DeepSpeed ZeRO-3."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
# deterministic masking: one fixed ratio, every crop masked; no drop-path; no frozen layer
EXACT = ["method.mask_ratio=[0.3,0.3]", "method.mask_prob=1.0", "model.drop_path=0.0",
         "optim.freeze_last_layer_epochs=0", "optim.warmup_epochs=0"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(nproc: int, out: Path, overrides: list[str], steps: int = 3) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(steps), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _errors(proc.stderr)
    return torch.load(out, weights_only=False)


def _errors(stderr: str) -> str:
    """The ranks' own error lines (torchrun's summary alone says only 'failed')."""
    lines = [line for line in stderr.splitlines() if "rank0]" in line or "Error" in line]
    return "\n".join(lines[-40:]) + "\n--- last lines ---\n" + "\n".join(stderr.splitlines()[-60:])


def _same(a: dict, b: dict, atol: float) -> None:
    assert torch.allclose(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-5, atol=1e-6), \
        (a["losses"], b["losses"])
    for k in a["teacher"]:
        assert torch.allclose(a["teacher"][k], b["teacher"][k], atol=atol), k
    for k in a["method"]:  # iBOT's centers
        assert torch.allclose(a["method"][k], b["method"][k], atol=1e-6), k


def test_two_processes_give_the_losses_and_teacher_of_one(tiny, tmp_path):
    base = tiny + EXACT
    one = _torchrun(1, tmp_path / "one.pt", base + ["data.batch_size=16", f"run.dir={tmp_path / 'r1'}"])
    two = _torchrun(2, tmp_path / "two.pt", base + ["data.batch_size=8", f"run.dir={tmp_path / 'r2'}"])
    _same(one, two, atol=1e-5)
    assert one["losses"][0] != one["losses"][-1]  # it trained


def test_zero3_teacher_ema_on_local_partitions_equals_one_process(tiny, tmp_path):
    base = tiny + EXACT + ["optim.clip_grad=0"]  # DeepSpeed clips the global norm, DDP per tensor: off here
    one = _torchrun(1, tmp_path / "one.pt", base + ["data.batch_size=16", f"run.dir={tmp_path / 'r1'}"])
    zero3 = _torchrun(2, tmp_path / "z3.pt", base + ["data.batch_size=8", f"run.dir={tmp_path / 'r3'}",
                                                    "distributed.backend=deepspeed", "distributed.zero_stage=3"])
    _same(one, zero3, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_1_and_2_match_one_process(tiny, tmp_path, stage):
    base = tiny + EXACT + ["optim.clip_grad=0"]
    one = _torchrun(1, tmp_path / "one.pt", base + ["data.batch_size=16", f"run.dir={tmp_path / 'r1'}"])
    zero = _torchrun(2, tmp_path / "z.pt", base + ["data.batch_size=8", f"run.dir={tmp_path / 'rz'}",
                                                  "distributed.backend=deepspeed", f"distributed.zero_stage={stage}"])
    _same(one, zero, atol=1e-5)


def test_accelerate_launch_two_processes_trains_and_logs(tiny, tmp_path):
    config = ROOT / "train" / "configs" / "accelerate" / "cpu_2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "train.py",
           *tiny, "run.max_steps=2", "data.batch_size=8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _errors(proc.stderr)
    assert "done: " in proc.stdout and "steps=2" in proc.stdout
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]


def _zero3_stop_and_resume(tmp_path, overrides: list[str], stop: int, end: int) -> None:
    """2 ZeRO-3 processes: a straight run to ``end``, and one stopped at ``stop`` then resumed;
    the steps after the resume have the straight run's losses."""
    def launch(run_dir, steps):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               *overrides, f"run.dir={run_dir}", f"run.max_steps={steps}",
               "distributed.backend=deepspeed", "distributed.zero_stage=3"]
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, _errors(proc.stderr)
        return proc.stdout

    launch(tmp_path / "straight", end)
    launch(tmp_path / "split", stop)
    resumed = launch(tmp_path / "split", end)
    assert "resumed_from=" in resumed and f"step_{stop:09d}" in resumed

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}

    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(straight) == sorted(split) == list(range(1, end + 1))
    for step in range(stop + 1, end + 1):
        assert abs(straight[step] - split[step]) <= 1e-5 * abs(straight[step]), (step, straight, split)


def test_zero3_checkpoint_resumes_to_the_losses_of_a_straight_run(tiny, tmp_path):
    """Student/optimizer through DeepSpeed's own files, teacher through each rank's partitions."""
    _zero3_stop_and_resume(tmp_path, tiny + EXACT + ["data.batch_size=8"], stop=2, end=4)


# MAE / SdAE: masks are drawn for the world's batch and sliced, so 1 and 2 processes see the
# same masks image by image; the teacher EMA every step so that it moves within 3 steps
AUTOENCODER = ["model.drop_path=0.0", "optim.warmup_epochs=0", "method.ema_every=step"]


@pytest.mark.parametrize("method", ["mae", "sdae"])
def test_mae_and_sdae_two_processes_give_the_losses_of_one(tiny_mae, tmp_path, method):
    base = tiny_mae + AUTOENCODER + [f"method.name={method}"]
    one = _torchrun(1, tmp_path / "one.pt", base + ["data.batch_size=16", f"run.dir={tmp_path / 'r1'}"])
    two = _torchrun(2, tmp_path / "two.pt", base + ["data.batch_size=8", f"run.dir={tmp_path / 'r2'}"])
    assert ("teacher" in one) == (method == "sdae")
    assert torch.allclose(torch.tensor(one["losses"]), torch.tensor(two["losses"]), rtol=1e-5, atol=1e-6)
    for part in ("student", "teacher") if method == "sdae" else ("student",):
        for k in one[part]:
            assert torch.allclose(one[part][k], two[part][k], atol=1e-5), (part, k)
    assert one["losses"][0] != one["losses"][-1]


def test_zero3_sdae_stopped_and_resumed_gives_the_losses_of_a_straight_run(tiny_mae, tmp_path):
    """The encoder-only teacher partitioned like the student's encoder; its per-epoch EMA (every
    4 steps here, momentum 0.5 so that it matters) on the local partitions, across a resume at
    the epoch boundary: steps 5-8 read the teacher of epoch 1's EMA."""
    _zero3_stop_and_resume(tmp_path, tiny_mae + ["model.drop_path=0.0", "method.name=sdae", "optim.momentum_teacher=0.5",
                                                 "data.batch_size=150", "optim.epochs=2", "optim.clip_grad=0"],
                           stop=4, end=8)


def _without_key_bias(name: str, value: torch.Tensor) -> torch.Tensor:
    """The attention's key bias has an exactly zero gradient (softmax ignores a constant added to
    every score), so AdamW turns its float noise, which depends on the summation order that
    synchronised BatchNorm changes, into steps of about lr: left out of the comparison."""
    if name.endswith("attn.qkv.bias"):
        d = value.shape[0] // 3
        return torch.cat([value[:d], value[2 * d:]])
    return value


LCMAE = ["method.name=lcmae", "model.guide_hidden=48", "method.guidance_weight=1.0", "method.n_masks=2"]


@pytest.mark.parametrize("backend", ["ddp", "zero1", "zero2", "zero3"])
def test_lcmae_two_processes_with_synced_batchnorm_give_the_losses_of_one(tiny_mae, tmp_path, backend):
    """The heads' BatchNorm synchronised over the ranks (B*K rows of the world's batch): the
    losses, the student (its BN running statistics included) and the target network of 2
    processes on half batches equal 1 process on the whole batch, under DDP and ZeRO-1/2/3
    (the target network partitioned like the student's encoder and head)."""
    base = tiny_mae + AUTOENCODER + LCMAE + ["optim.clip_grad=0"]
    ds = [] if backend == "ddp" else ["distributed.backend=deepspeed", f"distributed.zero_stage={backend[-1]}"]
    one = _torchrun(1, tmp_path / "one.pt", base + ["data.batch_size=16", f"run.dir={tmp_path / 'r1'}"])
    two = _torchrun(2, tmp_path / "two.pt", base + ds + ["data.batch_size=8", f"run.dir={tmp_path / 'r2'}"])
    assert torch.allclose(torch.tensor(one["losses"]), torch.tensor(two["losses"]), rtol=1e-5, atol=1e-6), \
        (one["losses"], two["losses"])
    for part in ("student", "teacher"):
        for k in one[part]:
            a, b = _without_key_bias(k, one[part][k].float()), _without_key_bias(k, two[part][k].float())
            assert torch.allclose(a, b, atol=1e-5), (part, k, float((a - b).abs().max()))
    assert any("running_var" in k for k in one["teacher"])
    assert one["losses"][0] != one["losses"][-1]


def test_zero3_lcmae_stopped_and_resumed_gives_the_losses_of_a_straight_run(tiny_mae, tmp_path):
    """Target network partitions, BN running statistics (student's in DeepSpeed's files, the
    target network's in the rank-0 state) and the optimizer across a resume."""
    _zero3_stop_and_resume(tmp_path, tiny_mae + LCMAE + ["model.drop_path=0.0", "data.batch_size=8",
                                                         "optim.clip_grad=0", "optim.warmup_epochs=0"],
                           stop=2, end=4)
