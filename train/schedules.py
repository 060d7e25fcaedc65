"""Per-iteration schedules, precomputed once and indexed by the global step (DINO's habit):
learning rate, weight decay, teacher momentum, teacher temperature.

    warmup_cosine(base, final, total, warmup, warmup_start)  linear warm-up, then a half cosine
    linear_warmup(start, end, warmup, total)                   linear to `end`, then constant
"""
from __future__ import annotations

import math

import numpy as np


def warmup_cosine(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """[total] values: warm-up from `warmup_start` to `base` over `warmup` steps (exclusive of
    base), then a cosine from `base` (at the first post-warm-up step) towards `final`."""
    if total < 1 or not 0 <= warmup <= total:
        raise ValueError(f"a schedule needs 0 <= warmup ({warmup}) <= total ({total}) and total >= 1")
    ramp = warmup_start + (base - warmup_start) * np.arange(warmup) / max(warmup, 1)
    steps = total - warmup
    t = np.arange(steps) / max(steps, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([ramp, cosine])


def linear_warmup(start: float, end: float, warmup: int, total: int) -> np.ndarray:
    """[total] values: linear from `start` to `end` over `warmup` steps, then `end`
    (iBOT / DINO teacher temperature: 0.04 -> 0.07 over the first 30 epochs)."""
    if total < 1 or warmup < 0:
        raise ValueError(f"a schedule needs total >= 1 and warmup >= 0, not {total}, {warmup}")
    ramp = np.linspace(start, end, warmup) if warmup else np.zeros(0)
    return np.concatenate([ramp, np.full(max(total - warmup, 0), end)])[:total]
