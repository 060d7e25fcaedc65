"""Mask generators, batched torch on the tensors' device, seeded by a ``torch.Generator``.

Conventions: a boolean mask is ``[B, N]`` with True = masked (hidden from the student);
an index form lists patch positions, ascending within each set. Nothing loops over images
except the BEiT block generator, whose procedure is sequential by definition.

- ``random_mask``          exactly k masked tokens per image (one k, or one per image)
- ``per_crop_random_mask`` iBOT's random masking: a ratio per crop, or nothing
- ``block_mask``           BEiT / iBOT block-wise masking (per-image ratio, may be 0)
- ``attmask``              AttMask high / low / hint from a [CLS] attention map
- ``disjoint_keep_sets``   ExtreMA: K disjoint keep-sets of n_keep from one permutation
- ``folds``                SdAE: a visible set + the masked set split into t equal folds
- ``keep_count``           int(N (1 - r)), the tokens a dropping student keeps
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


def random_mask(batch: int, n: int, k, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """bool [B, N] with exactly k random True per row; k is one int or a count per row [B]."""
    if isinstance(k, int) and not 0 <= k <= n:  # a tensor of counts is the caller's, in range
        raise ValueError(f"cannot mask {k} of {n} tokens")
    counts = torch.as_tensor(k, device=device).reshape(-1).expand(batch)
    order = torch.argsort(_rand((batch, n), generator, device), dim=1)   # order[b, j]: the j-th token drawn
    chosen = torch.arange(n, device=order.device) < counts[:, None].to(order.device)
    return torch.zeros(batch, n, dtype=torch.bool, device=order.device).scatter_(1, order, chosen)


def attmask(attention: torch.Tensor, mode: str = "high", ratio: tuple[float, float] = (0.1, 0.5),
            prob: float = 0.5, s_max: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """AttMask from the teacher's [CLS] attention ``[B, N]`` -> bool mask ``[B, N]``.

    1. one ratio r ~ U(ratio) for the whole batch; k = int(N * r)
    2. high: the k most attended tokens; low: the k least attended
    3. hint: the high mask, then int(s_max * r' * N) tokens drawn uniformly without replacement
       from the int(s_max * N) most attended are revealed again, where r' ~ U(ratio) is a
       second draw, independent of r (the authors' loop calls its ratio sampler twice)
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
        r_hint = ratio[0] + (ratio[1] - ratio[0]) * float(_rand((), generator, device))
        n_hint, pool = int(s_max * r_hint * n), int(s_max * n)
        pick = torch.argsort(_rand((b, pool), generator, device), dim=1)[:, :n_hint]
        mask.scatter_(1, order[:, :pool].gather(1, pick), False)
    keep = _rand((b, 1), generator, device) < prob
    return mask & keep


def per_crop_random_mask(batch: int, n: int, ratio: tuple[float, float] = (0.1, 0.5), prob: float = 0.5,
                         generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """iBOT's random masking -> bool ``[B, N]``: every crop draws its own r ~ U(ratio) and masks
    int(N * r) random tokens, or (probability 1 - prob) nothing. The count varies per crop; the
    mask-token path keeps N + 1 tokens whatever it is, so shapes stay static."""
    r = ratio[0] + (ratio[1] - ratio[0]) * _rand((batch,), generator, device).double()
    masked = _rand((batch,), generator, device) < prob
    counts = torch.where(masked, (n * r).long(), torch.zeros_like(r, dtype=torch.long))
    return random_mask(batch, n, counts, generator, device)


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


def keep_count(n: int, mask_ratio: float) -> int:
    """Tokens a student keeps of n at a mask ratio: int(N (1 - r)) as MAE's len_keep, at least 1."""
    return max(1, int(n * (1.0 - mask_ratio)))


def folds(batch: int, n: int, n_keep: int, t: int, generator: torch.Generator | None = None,
          device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SdAE multi-fold masking -> (keep ``[B, n_keep]``, folds ``[B, t, (N - n_keep) // t]``).

    One random permutation per image: its first n_keep tokens are the visible set, the rest
    (the masked set, in random order) is cut into t disjoint folds of (N - n_keep) // t; a
    remainder of fewer than t tokens is in no fold (no target). Sorted within each set."""
    masked = n - n_keep
    if not 0 < n_keep < n or t < 1 or masked // t < 1:
        raise ValueError(f"{masked} masked tokens (N={n}, n_keep={n_keep}) leave no target in {t} folds")
    size = masked // t
    perm = torch.argsort(_rand((batch, n), generator, device), dim=1)      # ascend: first n_keep are kept
    keep = _sorted(perm[:, :n_keep])
    return keep, _sorted(perm[:, n_keep:n_keep + t * size].reshape(batch, t, size))


def block_mask(batch: int, grid: tuple[int, int], ratio: tuple[float, float] = (0.1, 0.5),
               prob_zero: float = 0.5, min_patches: float | None = None, min_aspect: float = 0.3,
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """BEiT / iBOT block-wise masks -> bool ``[B, h*w]`` (CPU; move it where it is needed).

    Per image: with probability ``prob_zero`` nothing is masked, else the target is the float
    U(ratio) * N (not rounded, as in iBOT), laid out by ``block_layout``. ``min_patches``
    defaults to iBOT's (min(h, w) // 3) ** 2: 16 on a 14 x 14 grid.
    """
    rng = rng if rng is not None else np.random.default_rng()
    h, w = grid
    low = (min(h, w) // 3) ** 2 if min_patches is None else min_patches
    out = np.zeros((batch, h, w), dtype=bool)
    for i in range(batch):
        if rng.random() < prob_zero:
            continue
        for top, left, bh, bw in block_layout(grid, rng.uniform(*ratio) * h * w, low, min_aspect, rng):
            out[i, top:top + bh, left:left + bw] = True
    return torch.from_numpy(out.reshape(batch, h * w))


def block_layout(grid: tuple[int, int], target: float, min_patches: float = 16, min_aspect: float = 0.3,
                 rng: np.random.Generator | None = None) -> list[tuple[int, int, int, int]]:
    """Blocks (top, left, height, width) masking at most ``target`` patches of a grid.

    BEiT's procedure, as iBOT runs it: while fewer than ``target`` patches are masked, up to 10
    attempts each draw an area ~ U(min_patches, remaining) (between the two when remaining is
    the smaller) and an aspect ratio log-uniform in (min_aspect, 1 / min_aspect), round them to
    h x w; the first attempt whose block fits inside the grid (h < H, w < W) and adds between
    1 and ``remaining`` new patches is laid; a round that lays nothing ends the mask. There is
    no lower bound on a block's own size beyond what the area draw gives.
    """
    rng = rng if rng is not None else np.random.default_rng()
    h, w = grid
    mask = np.zeros(grid, dtype=bool)
    blocks, count = [], 0
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    while count < target:
        remaining, added = target - count, 0
        for _ in range(10):
            area = rng.uniform(min(min_patches, remaining), max(min_patches, remaining))
            aspect = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if not (bh < h and bw < w):
                continue
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            window = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(window.sum())
            if 0 < new <= remaining:
                window[...] = True
                blocks.append((top, left, bh, bw))
                added = new
                break
        if added == 0:
            break
        count += added
    return blocks
