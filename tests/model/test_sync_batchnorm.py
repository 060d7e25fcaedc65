"""SyncBatchNorm on CPU processes (gloo): 2 ranks on half batches compute what one process
computes on the whole batch -- outputs, DDP-averaged gradients, running statistics."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from model.heads import CPUSyncBatchNorm, lcmae_head, sync_batchnorm


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 8, generator=g) * 3 + 1, torch.randn(12, 8, generator=g)


def _head():
    torch.manual_seed(0)
    return lcmae_head(8, 8, hidden_dim=16)


def _step(head, x, target):
    out = head(x)
    loss = ((out - target) ** 2).mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in head.named_parameters()}


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, target = _data()
        part = slice(rank * 6, (rank + 1) * 6)
        synced = sync_batchnorm(_head())
        out, grads = _step(synced, x[part], target[part])
        for g in grads.values():  # what DDP does with the gradients
            dist.all_reduce(g)
            g /= 2
        plain = _head()  # the control: unsynchronised BatchNorm on the half batch
        _step(plain, x[part], target[part])
        results[rank] = {"types": [type(m).__name__ for m in synced], "out": out, "grads": grads,
                         "state": {k: v.clone() for k, v in synced.state_dict().items()},
                         "plain_mean": plain[1].running_mean.clone()}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_on_half_batches_equal_one_process_on_the_whole_batch():
    x, target = _data()
    whole = _head()
    out, grads = _step(whole, x, target)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        r = results[rank]
        assert r["types"][1] == "CPUSyncBatchNorm"
        torch.testing.assert_close(r["out"], out[rank * 6:(rank + 1) * 6], atol=1e-5, rtol=1e-5)
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4)
        for k, v in whole.state_dict().items():  # running mean and (unbiased) variance of all 12 rows
            torch.testing.assert_close(r["state"][k].to(v.dtype), v, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(r["plain_mean"], whole[1].running_mean, atol=1e-3)  # without sync: differs


def test_sync_batchnorm_outside_training_is_batchnorm():
    bn = nn.BatchNorm1d(4)
    bn.running_mean.fill_(0.5)
    sync = CPUSyncBatchNorm(4)
    sync.load_state_dict(bn.state_dict())
    x = torch.randn(5, 4)
    torch.testing.assert_close(sync.eval()(x), bn.eval()(x))
    torch.testing.assert_close(sync.train()(x), bn.train()(x))  # one process: torch's own path
