"""Weighted k-NN evaluation of frozen features (DINO's protocol; RECIPES.md, shared blocks).

    features(encode, loader)    -> L2-normalised features [n, D], labels [n], every
                                   sample once (gathered over ranks, padding repeats dropped)
    knn_top1(train_f, train_l, test_f, test_l, k, T, num_classes) -> top-1 accuracy in %

Each of the k nearest training features (cosine similarity) votes exp(sim / T) for its class.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


@torch.no_grad()
def features(encode, loader, autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's feature ``encode(images) -> [B, D]`` (a net's last-layer [CLS]), L2-normalised,
    ordered by sample id, on every rank."""
    feats, labels, ids = [], [], []
    for views in loader:
        images = views.global_views[0]
        device = images.device
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            cls = encode(images)
        feats.append(F.normalize(cls.float(), dim=-1))
        labels.append(views.labels.to(device))
        ids.append(views.ids.to(device))
    f, y, i = torch.cat(feats), torch.cat(labels), torch.cat(ids)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        f, y, i = (_all_gather(t) for t in (f, y, i))  # equal sizes: every rank has as many batches
    i, first = _unique_first(i)
    return f[first], y[first]


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _unique_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ids and the position of each one's first occurrence."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return uniq, first


@torch.no_grad()
def knn_top1(train_f: torch.Tensor, train_l: torch.Tensor, test_f: torch.Tensor, test_l: torch.Tensor,
             k: int = 20, temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> float:
    """Top-1 (%) of the temperature-weighted k-NN vote; features L2-normalised, [n, D]."""
    num_classes = num_classes or int(max(train_l.max(), test_l.max())) + 1
    k = min(k, len(train_f))
    correct = 0
    for s in range(0, len(test_f), chunk):
        sim = test_f[s:s + chunk] @ train_f.T                                # [c, n_train]
        top, idx = sim.topk(k, dim=1)                                         # [c, k]
        votes = torch.zeros(len(top), num_classes, device=sim.device)
        votes.scatter_add_(1, train_l[idx], (top / temperature).exp())
        correct += (votes.argmax(1) == test_l[s:s + chunk]).sum().item()
    return 100.0 * correct / len(test_f)
