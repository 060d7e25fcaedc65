"""Mask generators, batched torch on the tensors' device, seeded by a ``torch.Generator``.

Conventions: a boolean mask is ``[B, N]`` with True = masked (hidden from the student);
an index form lists patch positions, ascending within each set. Nothing loops over images
except the BEiT block generator, whose procedure is sequential by definition.

- ``random_mask``          exactly k masked tokens per image
- ``block_mask``           BEiT / iBOT block-wise masking (per-image ratio, may be 0)
- ``attmask``              AttMask high / low / hint from a [CLS] attention map
- ``disjoint_keep_sets``   ExtreMA: K disjoint keep-sets of n_keep from one permutation
- ``folds``                SdAE: a visible set + the masked set split into t equal folds
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _sorted(idx: torch.Tensor) -> torch.Tensor:
    return idx.sort(dim=-1).values


def indices_to_mask(idx: torch.Tensor, n: int) -> torch.Tensor:
    """idx [B, k] or [B, K, k] -> bool [B, n] with True at every listed position."""
    b = idx.shape[0]
    mask = torch.zeros(b, n, dtype=torch.bool, device=idx.device)
    return mask.scatter_(1, idx.reshape(b, -1), True)


def mask_to_indices(mask: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """bool [B, N] with the same count k of True per row -> ascending positions [B, k]."""
    counts = mask.sum(dim=1)
    k = int(counts[0]) if k is None else k
    if not bool((counts == k).all()):
        raise ValueError(f"every row needs exactly {k} True entries for an index form; got {counts.tolist()}")
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # True positions first, in order
    return order[:, :k]


def random_mask(batch: int, n: int, k: int, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """bool [B, N] with exactly k random True per row."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot mask {k} of {n} tokens")
    order = torch.argsort(_rand((batch, n), generator, device), dim=1)
    return indices_to_mask(order[:, :k], n)


def attmask(attention: torch.Tensor, mode: str = "high", ratio: tuple[float, float] = (0.1, 0.5),
            prob: float = 0.5, s_max: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """AttMask from the teacher's [CLS] attention ``[B, N]`` -> bool mask ``[B, N]``.

    1. one ratio r ~ U(ratio) for the whole batch; k = int(N * r)
    2. high: the k most attended tokens; low: the k least attended
    3. hint: the high mask, then int(s_max * r * N) tokens drawn uniformly without replacement
       from the int(s_max * N) most attended are revealed again
    4. each image keeps its mask with probability ``prob``, else it is left unmasked
    """
    if mode not in ("high", "low", "hint"):
        raise ValueError(f"attmask mode must be high, low or hint, not {mode!r}")
    b, n = attention.shape
    device = attention.device
    r = ratio[0] + (ratio[1] - ratio[0]) * float(_rand((), generator, device))
    k = int(n * r)
    order = torch.argsort(attention, dim=1, descending=mode != "low")  # [B, N], first = chosen first
    mask = indices_to_mask(order[:, :k], n)
    if mode == "hint":
        n_hint, pool = int(s_max * r * n), int(s_max * n)
        pick = torch.argsort(_rand((b, pool), generator, device), dim=1)[:, :n_hint]
        mask.scatter_(1, order[:, :pool].gather(1, pick), False)
    keep = _rand((b, 1), generator, device) < prob
    return mask & keep


def disjoint_keep_sets(batch: int, n: int, k_sets: int, n_keep: int, disjoint: bool = True,
                       generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """ExtreMA: keep indices ``[B, K, n_keep]``. Disjoint: set i = perm[i*n_keep:(i+1)*n_keep]
    of one random permutation per image (needs K * n_keep <= N); otherwise K independent sets."""
    if disjoint and k_sets * n_keep > n:
        raise ValueError(f"{k_sets} disjoint sets of {n_keep} need {k_sets * n_keep} > {n} tokens")
    if n_keep > n or n_keep < 1:
        raise ValueError(f"cannot keep {n_keep} of {n} tokens")
    if disjoint:
        perm = torch.argsort(_rand((batch, n), generator, device), dim=1)
        sets = perm[:, :k_sets * n_keep].reshape(batch, k_sets, n_keep)
    else:
        perm = torch.argsort(_rand((batch, k_sets, n), generator, device), dim=2)
        sets = perm[:, :, :n_keep]
    return _sorted(sets)


def folds(batch: int, n: int, n_keep: int, t: int, generator: torch.Generator | None = None,
          device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SdAE multi-fold masking -> (keep ``[B, n_keep]``, folds ``[B, t, (N - n_keep) / t]``).
    The masked set (every token not kept) is split into t disjoint folds in random order."""
    masked = n - n_keep
    if not 0 < n_keep < n or masked % t:
        raise ValueError(f"{n - n_keep} masked tokens do not split into {t} equal folds (N={n}, n_keep={n_keep})")
    perm = torch.argsort(_rand((batch, n), generator, device), dim=1)
    keep = _sorted(perm[:, :n_keep])
    return keep, _sorted(perm[:, n_keep:].reshape(batch, t, masked // t))


def block_mask(batch: int, grid: tuple[int, int], ratio: tuple[float, float] = (0.1, 0.5),
               prob_zero: float = 0.5, min_patches: int = 16, min_aspect: float = 0.3,
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """BEiT / iBOT block-wise masks -> bool ``[B, h*w]`` (CPU; move it where it is needed).

    Per image: with probability ``prob_zero`` nothing is masked, else the target count is
    int(U(ratio) * N), laid out by ``block_layout``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    h, w = grid
    out = np.zeros((batch, h, w), dtype=bool)
    for i in range(batch):
        if rng.random() < prob_zero:
            continue
        for top, left, bh, bw in block_layout(grid, int(rng.uniform(*ratio) * h * w), min_patches,
                                              min_aspect, rng):
            out[i, top:top + bh, left:left + bw] = True
    return torch.from_numpy(out.reshape(batch, h * w))


def block_layout(grid: tuple[int, int], target: int, min_patches: int = 16, min_aspect: float = 0.3,
                 rng: np.random.Generator | None = None) -> list[tuple[int, int, int, int]]:
    """Blocks (top, left, height, width) masking at most ``target`` patches of a grid.

    Blocks are added until the target is reached or a round of 10 attempts adds nothing.
    An attempt draws an area ~ U(min_patches, remaining) and an aspect ratio log-uniform in
    (min_aspect, 1 / min_aspect), rounds it to h x w, and is kept if the block fits, has at
    least min(min_patches, remaining) patches, and adds new patches without passing the target.
    """
    rng = rng if rng is not None else np.random.default_rng()
    h, w = grid
    mask = np.zeros(grid, dtype=bool)
    blocks, count = [], 0
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    while count < target:
        allowed, added = target - count, 0
        for _ in range(10):
            area = rng.uniform(min(min_patches, allowed), max(min_patches, allowed))
            aspect = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if not (bh < h and bw < w and bh * bw >= min(min_patches, allowed)):
                continue
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            window = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(window.sum())
            if 0 < new <= allowed:
                window[...] = True
                blocks.append((top, left, bh, bw))
                added = new
                break
        if added == 0:
            break
        count += added
    return blocks
