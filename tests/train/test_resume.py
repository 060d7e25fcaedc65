"""kill -9 in the middle of a run, restart with resume=auto: the steps after the restart
have the losses of an uninterrupted run (CPU; DALI's CPU pipeline is deterministic)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.checkpoint import complete_checkpoints
from train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def _cmd(tiny, run_dir):
    return [sys.executable, "train.py", *tiny, f"run.dir={run_dir}", f"run.max_steps={STEPS}",
            "run.checkpoint_every=5", "model.drop_path=0.1"]


# iBOT + AttMask (demo.yaml), and SdAE: masks drawn before a teacher of the folds, its EMA every
# 8 steps (batch 150: an epoch), so that the restart falls between two of them; LC-MAE: the
# heads' BatchNorm running statistics (student and target network) and its guidance term
METHODS = {"ibot": ("tiny", []),
           "sdae": ("tiny_mae", ["method.name=sdae", "data.batch_size=150", "optim.epochs=5"]),
           "lcmae": ("tiny_mae", ["method.name=lcmae", "model.guide_hidden=48", "method.n_masks=2"])}


def _losses(run_dir) -> dict[int, tuple]:
    out = {}
    for row in read_metrics(run_dir):  # a step logged twice (before the kill and after) keeps the last
        if "loss" in row:
            out[row["step"]] = (row["loss"], row.get("mim", 0.0), row.get("guidance", 0.0), row["mask_ratio"])
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_kill_9_then_resume_gives_the_losses_of_an_uninterrupted_run(request, tmp_path, method):
    fixture, extra = METHODS[method]
    tiny = request.getfixturevalue(fixture) + extra
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = subprocess.run(_cmd(tiny, tmp_path / "a"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "b"
    proc = subprocess.Popen(_cmd(tiny, killed_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not complete_checkpoints(killed_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _losses(killed_dir)
    assert max(before) < STEPS  # it really stopped in the middle
    resumed_from = complete_checkpoints(killed_dir)[-1]

    again = subprocess.run(_cmd(tiny, killed_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed_from={resumed_from}" in again.stdout
    a, b = _losses(tmp_path / "a"), _losses(killed_dir)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    start = int(resumed_from.name.split("_")[1])
    for step in range(start + 1, STEPS + 1):
        for x, y in zip(a[step], b[step]):
            assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (step, a[step], b[step])
