"""data/loader.py: both engines on real shards; ranks, order, resume, corrupt samples,
memory, and distribution parity between DALI (CPU mode) and the torchvision reference."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.loader import LoaderError, build_loader
from data.loader_benchmark import _rss_mb
from data.shards.convert import convert
from data.shards.plan import ConvertOptions
from data.sources import open_source
from data.views import Crop, Recipe, ViewSpec, build_recipe

SMALL = build_recipe("multicrop", global_size=64, local_size=32, n_local=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    for fmt in ("webdataset", "ffcv"):
        convert(open_source("embedded:val"), root / fmt, ConvertOptions(format=fmt, shard_size=70), progress=False)
    return root  # 300 samples in shards of 70, 70, 70, 70, 20


@pytest.mark.parametrize("engine", ["dali", "ffcv", "reference"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_get_equal_disjoint_batches_over_uneven_shards(shards, engine, world):
    folder = shards / ("ffcv" if engine == "ffcv" else "webdataset")
    loaders = [build_loader(folder, engine, SMALL, batch_size=16, rank=r, world=world, workers=1)
               for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1 and len(loaders[0]) == (300 // world) // 16
    if world in (1, 3):  # iterate a couple of splits fully; lengths are checked for all
        ids = [torch.cat([b.ids for b in ld]) for ld in loaders]
        assert all(len(i) == len(loaders[0]) * 16 for i in ids)
        merged = torch.cat(ids)
        assert len(torch.unique(merged)) == len(merged)


def test_both_engines_yield_the_same_samples_in_the_same_order(shards):
    batches = {e: list(build_loader(shards / "webdataset", e, SMALL, batch_size=16, seed=4, workers=1))
               for e in ("dali", "reference")}
    for d, r in zip(batches["dali"], batches["reference"]):
        assert torch.equal(d.ids, r.ids) and torch.equal(d.labels, r.labels)
        for group, size in (("global", 64), ("local", 32)):
            for a, b in zip(d.views[group], r.views[group]):
                assert a.shape == b.shape == (16, 3, size, size) and a.dtype == b.dtype == torch.float32


@pytest.mark.parametrize("engine", ["dali", "ffcv", "reference"])
def test_resume_from_state_continues_the_epoch_exactly(shards, engine):
    folder = shards / ("ffcv" if engine == "ffcv" else "webdataset")
    full = build_loader(folder, engine, SMALL, batch_size=16, seed=2, workers=1)
    batches = list(full)
    ids, labels = [b.ids for b in batches], [b.labels for b in batches]
    part = build_loader(folder, engine, SMALL, batch_size=16, seed=2, workers=1)
    it = iter(part)
    for _ in range(5):
        next(it)
    state = part.state()
    assert state == {"epoch": 0, "batches": 5}
    resumed = build_loader(folder, engine, SMALL, batch_size=16, seed=2, workers=1)
    resumed.load_state(state)
    rest = list(resumed)
    assert len(rest) == len(ids) - 5
    assert all(torch.equal(a.ids, b) and torch.equal(a.labels, c) for a, b, c in zip(rest, ids[5:], labels[5:]))
    assert resumed.state() == {"epoch": 1, "batches": 0}


@pytest.mark.parametrize("name", ["multicrop", "shared_crop_two_colors", "src_pair", "single_rrc"])
def test_ffcv_engine_views_and_order(shards, name):
    recipe = build_recipe(name) if name != "multicrop" else SMALL
    ffcv = list(build_loader(shards / "ffcv", "ffcv", recipe, batch_size=32, workers=1))
    dali = list(build_loader(shards / "ffcv", "dali", recipe, batch_size=32, workers=1))
    assert len(ffcv) == len(dali) == 300 // 32
    for a, b in zip(ffcv, dali):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)   # the sampler's order
        assert [v.shape for g in a.views.values() for v in g] == [v.shape for g in b.views.values() for v in g]
        assert all(v.dtype == torch.float32 for g in a.views.values() for v in g)


def test_ffcv_engine_refuses_webdataset_shards(shards):
    with pytest.raises(LoaderError, match="--format ffcv"):
        build_loader(shards / "webdataset", "ffcv", SMALL, batch_size=8)


def test_ffcv_betons_feed_the_same_dali_pipeline(shards):
    from data.shards.samples import open_samples

    beton = open_samples(shards / "ffcv")  # one 300-sample file: its own (equally valid) order
    batches = list(build_loader(shards / "ffcv", "dali", SMALL, batch_size=32, workers=1))
    assert len(batches) == 300 // 32
    for b in batches:
        assert b.labels.tolist() == [beton.read(int(i))[1] for i in b.ids]
        assert b.global_views[0].shape == (32, 3, 64, 64)


def test_reference_engine_skips_counts_and_names_corrupt_samples(shards, corrupt_copy):
    victim = int(build_loader(shards / "webdataset", "reference", SMALL, batch_size=16, workers=0).order(0)[1])
    folder, key, name = corrupt_copy(shards / "webdataset", victim)
    loader = build_loader(folder, "reference", SMALL, batch_size=16, workers=0)
    batches = list(loader)
    assert all(b.labels.shape == (16,) for b in batches)
    assert [c["key"] for c in loader.stats.corrupt] == [key]
    strict = build_loader(folder, "reference", SMALL, batch_size=16, workers=0, strict=True)
    with pytest.raises(RuntimeError, match=f"{key} in {name}"):
        list(strict)


def test_ffcv_engine_follows_each_epochs_order_with_one_ffcv_loader(shards):
    from data.shards.samples import open_samples

    beton = open_samples(shards / "ffcv")
    loader = build_loader(shards / "ffcv", "ffcv", SMALL, batch_size=32, workers=1)
    for epoch in range(3):  # ids are the sampler's; labels come out of FFCV: they must belong to those ids
        batches = list(loader)
        assert len(batches) == 300 // 32
        for b in batches:
            assert b.labels.tolist() == [beton.read(int(i))[1] for i in b.ids]
    assert loader.state() == {"epoch": 3, "batches": 0}


@pytest.mark.parametrize("engine, fmt", [("dali", "webdataset"), ("ffcv", "ffcv")])
def test_memory_stays_flat_over_epochs(shards, engine, fmt):
    loader = build_loader(shards / fmt, engine, SMALL, batch_size=8, workers=1)
    rss = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
        rss.append(_rss_mb())
    assert loader.stats.batches == 4 * 37
    assert rss[-1] - rss[1] < 16, rss  # MB, after the first epoch's allocations


def test_loader_options_are_checked(shards):
    with pytest.raises(LoaderError, match="engine must be one of"):
        build_loader(shards / "webdataset", "turbo", SMALL, batch_size=8)
    with pytest.raises(ValueError, match="no full batch"):
        build_loader(shards / "webdataset", "dali", SMALL, batch_size=200, world=2)


@pytest.fixture(scope="module")
def ramp_shards(tmp_path_factory):
    """64 copies of a horizontal ramp: flips, crop widths and brightness are readable off views."""
    root = tmp_path_factory.mktemp("ramp")
    ramp = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (192, 1))
    image = Image.fromarray(np.stack([ramp, ramp // 2 + 64, 255 - ramp], axis=-1), "RGB")
    (root / "src" / "n0").mkdir(parents=True)
    for i in range(96):
        image.save(root / "src" / "n0" / f"{i}.png")
    for fmt in ("webdataset", "ffcv"):
        convert(open_source(str(root / "src")), root / fmt, ConvertOptions(format=fmt, shard_size=32, quality=100),
                progress=False)
    return root


def _view_stats(folder, engine, recipe):
    stats = []
    for epoch in range(3):
        loader = build_loader(folder, engine, recipe, batch_size=32, workers=1, seed=epoch)
        for b in loader:
            v = b.global_views[0][:, 0]                      # red channel: the ramp, [B, S, S]
            left, right = v[:, :, :4].mean((1, 2)), v[:, :, -4:].mean((1, 2))
            stats.append(torch.stack([(left > right).float(), (right - left).abs(), v.mean((1, 2))], 1))
    return torch.cat(stats)  # [N, 3]: flipped, span, mean


@pytest.mark.parametrize("engine, fmt", [("dali", "webdataset"), ("ffcv", "ffcv")])
def test_engine_and_reference_distributions_agree(ramp_shards, engine, fmt):
    crop = Crop("rrc", 32, (0.2, 1.0))
    plain = Recipe("parity", (ViewSpec("v", "global", crop, None),)).validate()
    d, r = _view_stats(ramp_shards / fmt, engine, plain), _view_stats(ramp_shards / "webdataset", "reference", plain)
    assert abs(d[:, 0].mean() - r[:, 0].mean()) < 0.15                         # flip rate (both ~0.5)
    assert abs(d[:, 0].mean() - 0.5) < 0.12 and abs(r[:, 0].mean() - 0.5) < 0.12
    assert d[:, 1].median() == pytest.approx(r[:, 1].median().item(), rel=0.1)  # crop width via ramp span
    colored = Recipe("parity", (ViewSpec("v", "global", crop, build_recipe("shared_crop_two_colors").views[0].color),)).validate()
    dc = _view_stats(ramp_shards / fmt, engine, colored)
    rc = _view_stats(ramp_shards / "webdataset", "reference", colored)
    assert dc[:, 2].std() == pytest.approx(rc[:, 2].std().item(), rel=0.35)   # jitter spreads brightness alike
    assert dc[:, 2].mean() == pytest.approx(rc[:, 2].mean().item(), abs=0.15)


@pytest.mark.gpu
@pytest.mark.dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DALI mixed decoding, GPU operators)")
@pytest.mark.parametrize("engine", ["dali", "ffcv"])
def test_gpu_views_match_cpu_views_in_shape_range_and_order(shards, engine):
    folder = shards / ("ffcv" if engine == "ffcv" else "webdataset")
    gpu = next(iter(build_loader(folder, engine, SMALL, batch_size=16, device="cuda", workers=2)))
    cpu = next(iter(build_loader(folder, engine, SMALL, batch_size=16, device="cpu", workers=2)))
    assert torch.equal(gpu.ids, cpu.ids) and torch.equal(gpu.labels.cpu(), cpu.labels)
    for g, c in zip(gpu.global_views + gpu.local_views, cpu.global_views + cpu.local_views):
        assert g.is_cuda and g.shape == c.shape and g.dtype == c.dtype
        assert abs(g.mean().item() - c.mean().item()) < 0.3 and g.min() >= -2.2 and g.max() <= 2.7


def test_ffcv_engine_skips_counts_and_names_corrupt_samples(shards, corrupt_copy):
    victim = int(build_loader(shards / "ffcv", "ffcv", SMALL, batch_size=16, workers=1).order(0)[3])
    folder, key, name = corrupt_copy(shards / "ffcv", victim)
    batches = list(build_loader(folder, "ffcv", SMALL, batch_size=16, workers=1))
    counting = build_loader(folder, "ffcv", SMALL, batch_size=16, workers=1)
    first = next(iter(counting))
    assert [c["key"] for c in counting.stats.corrupt] == [key] == [str(victim)]
    assert first.labels[3] == first.labels[0]  # the corrupt slot reuses the batch's first good sample
    assert all(b.labels.shape == (16,) for b in batches)
    with pytest.raises(Exception, match=f"sample {key} in {name}"):
        next(iter(build_loader(folder, "ffcv", SMALL, batch_size=16, workers=1, strict=True)))
