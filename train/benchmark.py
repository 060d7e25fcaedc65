"""Training-step benchmark: images/s, the per-phase time split, FLOPs / MFU, and AttMask's
cost against another masking in the same run.

    benchmark_train(config, overrides, steps, compare="block")

1. A Trainer is built from the config; `steps + warmup` batches are drawn from its loader
   (the data wait per batch is measured there, on the real loader).
2. The step is timed per phase by timing the engine's own calls (teacher forward, masks,
   student forward + loss, backward, optimizer step, EMA), synchronising CUDA around each.
3. With `compare`, a second Trainer that differs only in `method.masking` runs on the same
   batches; steps alternate between the two so that drifts hit both alike; the figure is
   the ratio of median step times (AttMask / other).
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

# bf16 dense peak FLOP/s per device name fragment (vendor datasheets), for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class PhaseTimer:
    """Wraps callables so that each call adds its (synchronised) duration to a phase."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.enabled = device, {}, True

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            if self.enabled:
                self.times.setdefault(name, []).append(time.perf_counter() - t0)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed


def _instrument(trainer, timer: PhaseTimer) -> None:
    """Time the engine's own calls; the arithmetic is untouched."""
    b, m = trainer.backend, trainer.method
    b.teacher = timer.wrap("teacher", b.teacher)
    b.backward = timer.wrap("backward", b.backward)
    b.step = timer.wrap("optimizer", b.step)
    b.ema = timer.wrap("ema", b.ema)
    m.masks = timer.wrap("masks", m.masks)


def _step(trainer, views, timer: PhaseTimer) -> None:
    with timer.phase("step"):
        trainer.train_step(views)
    trainer.step = (trainer.step + 1) % trainer.total_steps


def _flops(trainer, views) -> float:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(views)
    return float(counter.get_total_flops())


def benchmark_train(config: str | None, overrides: list[str], steps: int = 10, warmup: int = 2,
                    compare: str | None = None) -> dict:
    from train.config import load_config
    from train.engine import Trainer

    base = list(overrides) + ["run.resume=never", "eval.knn_at_start=false", "run.progress=false"]
    cfg = load_config(config, base)
    trainer = Trainer(cfg)
    device = trainer.device

    # 1. batches from the real loader, with the wait per batch
    waits, batches, it = [], [], iter(trainer.loader)
    while len(batches) < steps + warmup:
        t0 = time.perf_counter()
        try:
            batches.append(next(it))
        except StopIteration:  # a small dataset: go on into the next epoch
            it = iter(trainer.loader)
            continue
        waits.append(time.perf_counter() - t0)
    del it

    runs = {cfg.method.masking: trainer}
    if compare and compare != cfg.method.masking:
        runs[compare] = Trainer(load_config(config, base + [f"method.masking={compare}",
                                                            f"run.dir={cfg.run.dir}-{compare}"]))
    timers = {k: PhaseTimer(device) for k in runs}
    for k, t in runs.items():
        _instrument(t, timers[k])

    # 2. interleaved timed steps on the same batches
    for i in range(warmup):
        for k, t in runs.items():
            timers[k].enabled = False
            _step(t, batches[i], timers[k])
            timers[k].enabled = True
    for i in range(warmup, warmup + steps):
        for k, t in runs.items():
            _step(t, batches[i], timers[k])

    flops = _flops(trainer, batches[0])
    b = cfg.data.batch_size
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "model": cfg.model.arch, "batch_per_process": b, "processes": trainer.world,
              "views": f"2x{cfg.data.global_size} + {cfg.data.n_local}x{cfg.data.local_size}",
              "precision": "bf16" if trainer.autocast_dtype is not None else "fp32",
              "engine": cfg.data.engine, "steps": steps}
    for k, timer in timers.items():
        med = {name: statistics.median(v) for name, v in timer.times.items()}
        step = med.pop("step")
        split = {name: round(v * 1e3, 3) for name, v in med.items()}
        split["student_and_loss"] = round((step - sum(med.values())) * 1e3, 3)
        result[k] = {"step_ms": round(step * 1e3, 3), "images_per_s": round(b / step, 2), "phase_ms": split}
    main = result[cfg.method.masking]
    wait = statistics.median(waits[warmup:])
    main["data_wait_ms_per_batch"] = round(wait * 1e3, 3)
    main["images_per_s_with_data"] = round(b / (main["step_ms"] / 1e3 + wait), 2)
    main["flops_per_step"] = flops
    main["achieved_tflops"] = round(flops / (main["step_ms"] / 1e3) / 1e12, 4)
    peak = _peak(device)
    main["mfu"] = round(flops / (main["step_ms"] / 1e3) / peak, 4) if peak else None
    if len(runs) == 2:
        result["ratio"] = {f"step_time_{cfg.method.masking}_over_{compare}":
                           round(main["step_ms"] / result[compare]["step_ms"], 4), "goal": 1.05}
    return result
