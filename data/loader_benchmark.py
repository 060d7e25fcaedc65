"""Loader throughput: images/s, views/s and the wait per batch of one engine, optionally
against the reference engine on the same shards in the same run (tools/profile.py loader).
Also the resident memory at the start and end of the timed batches, to see it stay flat."""
from __future__ import annotations

import resource
import time

import torch

from data.loader import build_loader
from data.views import build_recipe


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(folder, engine: str, recipe_name: str, batch_size: int, batches: int, workers: int,
            device: str, warmup: int = 2) -> dict:
    recipe = build_recipe(recipe_name)
    loader = build_loader(folder, engine, recipe, batch_size=batch_size, workers=workers, device=device)
    needed = warmup + batches
    if len(loader) < needed:
        raise ValueError(f"{folder} gives {len(loader)} batches of {batch_size} per epoch; "
                         f"{needed} are needed: lower --batches or --batch-size")
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    rss0, waits = _rss_mb(), []
    t0 = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        batch = next(it)
        if batch.labels.is_cuda or device.startswith("cuda"):
            torch.cuda.synchronize()
        waits.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    images = batches * batch_size
    return {"engine": engine, "recipe": recipe_name, "device": device, "batch_size": batch_size,
            "batches": batches, "views_per_image": len(recipe.views),
            "images_per_s": round(images / seconds, 1),
            "views_per_s": round(images * len(recipe.views) / seconds, 1),
            "data_wait_ms_per_batch": round(1e3 * sum(waits) / len(waits), 2),
            "rss_mb": {"start": round(rss0, 1), "end": round(_rss_mb(), 1)},
            "corrupt_skipped": len(loader.stats.corrupt)}


def benchmark_loader(folder, engine: str, recipe: str, batch_size: int, batches: int, workers: int,
                     device: str, compare: bool) -> dict:
    # the reference first: its DataLoader forks workers, which is unsafe once DALI's or
    # FFCV's threads exist in this process
    ref = measure(folder, "reference", recipe, batch_size, batches, workers, device) \
        if compare and engine != "reference" else None
    result = measure(folder, engine, recipe, batch_size, batches, workers, device)
    if ref is not None:
        result = {"engine": result, "reference": ref,
                  "ratio": round(result["images_per_s"] / ref["images_per_s"], 2), "goal_ratio": 2.0}
        result["goal_met"] = result["ratio"] >= result["goal_ratio"]
    return result
