"""tools/profile.py model: runs end to end and reports JSON (timings are not asserted)."""
import json

import pytest
import torch


def test_model_benchmark_reports_overhead_and_batched_speedup(run_cli):
    proc = run_cli("profile.py", "model", "--model", "vit_tiny_patch16_224", "--batch", "2", "--masks", "2",
                   "--repeats", "1", "--device", "cpu", check=True)
    result = json.loads(proc.stdout)
    attn, masks = result["cls_attention"], result["batched_masks"]
    assert attn["plain_ms"] > 0 and attn["with_cls_attention_ms"] > 0
    assert attn["overhead_pct"] == pytest.approx(100 * (attn["with_cls_attention_ms"] / attn["plain_ms"] - 1), abs=0.05)
    assert (masks["masks"], masks["n_keep"], masks["sequences"]) == (2, 39, 4)
    assert result["goals_met"]["cls_attention_overhead_pct"] == (attn["overhead_pct"] <= 3.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(run_cli):
    proc = run_cli("profile.py", "model", "--device", "cuda")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_masks_that_cannot_be_disjoint_are_refused(run_cli):
    proc = run_cli("profile.py", "model", "--masks", "6", "--mask-ratio", "0.75", "--device", "cpu")
    assert proc.returncode == 2 and "do not fit" in proc.stderr
