"""Model benchmarks, each against its baseline in the same run (medians of interleaved runs):

- cls_attention: forward_full with the [CLS]-row attention vs without (goal: <= 3 % more)
- batched_masks: one forward_visible over B*K sequences vs a Python loop of K forwards
"""
from __future__ import annotations

import statistics
import time

import torch

from model.masking import disjoint_keep_sets
from model.vit import create_vit, forward_full, forward_visible

GOALS = {"cls_attention_overhead_pct": 3.0}


def _timer(device: torch.device):
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return timed


def _interleaved(fns: dict, repeats: int, warmup: int, timed) -> dict:
    """Median seconds per function; runs alternate so drifts hit all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def benchmark_model(name: str = "vit_small_patch16_224", batch: int = 16, masks: int = 5,
                    mask_ratio: float = 0.8, repeats: int = 10, warmup: int = 2,
                    device: str = "cpu") -> dict:
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    vit = create_vit(name).to(dev).eval()
    grid = vit.patch_embed.grid_size
    n = grid[0] * grid[1]
    images = torch.randn(batch, 3, grid[0] * 16, grid[1] * 16, device=dev)
    n_keep = int(n * (1 - mask_ratio))
    keep = disjoint_keep_sets(batch, n, masks, n_keep, generator=torch.Generator(device=dev).manual_seed(0),
                              device=dev)
    timed = _timer(dev)

    def autocast(fn):
        def run():
            with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
                fn()
        return run

    attn = _interleaved({
        "plain": autocast(lambda: forward_full(vit, images)),
        "with_cls_attention": autocast(lambda: forward_full(vit, images, return_cls_attention=True)),
    }, repeats, warmup, timed)
    visible = _interleaved({
        "batched": autocast(lambda: forward_visible(vit, images, keep)),
        "loop": autocast(lambda: [forward_visible(vit, images, keep[:, k]) for k in range(masks)]),
    }, repeats, warmup, timed)
    overhead = 100.0 * (attn["with_cls_attention"] / attn["plain"] - 1.0)
    return {
        "benchmark": "model", "model": name, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "batch": batch, "repeats": repeats,
        "cls_attention": {"plain_ms": round(attn["plain"] * 1e3, 3),
                          "with_cls_attention_ms": round(attn["with_cls_attention"] * 1e3, 3),
                          "overhead_pct": round(overhead, 2)},
        "batched_masks": {"masks": masks, "n_keep": n_keep, "sequences": batch * masks,
                          "batched_ms": round(visible["batched"] * 1e3, 3),
                          "loop_ms": round(visible["loop"] * 1e3, 3),
                          "speedup": round(visible["loop"] / visible["batched"], 2)},
        "goals": GOALS,
        "goals_met": {"cls_attention_overhead_pct": overhead <= GOALS["cls_attention_overhead_pct"]},
    }
