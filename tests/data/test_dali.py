"""data/dali.py in DALI's CPU mode on real shards: shapes, ranges, shared crops, order,
exact resume and corrupt samples."""
from dataclasses import replace

import numpy as np
import pytest

from data.dali import SampleFeed, views_pipeline
from data.shards.convert import convert
from data.shards.plan import ConvertOptions
from data.shards.samples import open_samples
from data.sources import open_source
from data.views import IMAGENET_MEAN, IMAGENET_STD, Recipe, build_recipe

LOW = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("dali") / "val"
    convert(open_source("embedded:val"), out, ConvertOptions(shard_size=64), progress=False)
    return out


def run(recipe, feed, batches=1, seed=1):
    pipe = views_pipeline(recipe, feed, batch_size=feed.batch_size, num_threads=1, device_id=None, seed=seed,
                          prefetch_queue_depth=1)
    pipe.build()
    return [[np.array(o.as_tensor()) for o in pipe.run()] for _ in range(batches)]


@pytest.mark.parametrize("name, shapes", [
    ("multicrop", [(224,)] * 2 + [(96,)] * 10),
    ("shared_crop_two_colors", [(224,)] * 2),
    ("src_pair", [(224,)] * 2),
    ("single_rrc", [(224,)]),
])
def test_every_recipe_gives_normalized_chw_views(shards, name, shapes):
    (out,) = run(build_recipe(name), SampleFeed(open_samples(shards), 4, seed=0, rank=0, world=1))
    views, labels = out[:-1], out[-1]
    assert [(v.shape[-1],) for v in views] == shapes
    for v in views:
        assert v.dtype == np.float32 and v.shape[:2] == (4, 3) and v.shape[2] == v.shape[3]
        assert v.min() >= LOW - 1e-3 and v.max() <= HIGH + 1e-3
    assert labels.dtype == np.int64 and labels.shape == (4,)


def test_shared_crop_views_share_crop_and_flip(shards):
    recipe = build_recipe("shared_crop_two_colors")
    plain = Recipe(recipe.name, tuple(replace(v, color=None) for v in recipe.views)).validate()
    for (a, b, _) in run(plain, SampleFeed(open_samples(shards), 8, seed=0, rank=0, world=1), batches=3):
        assert np.array_equal(a, b)
    a, b, _ = run(recipe, SampleFeed(open_samples(shards), 8, seed=0, rank=0, world=1))[0]
    assert not np.array_equal(a, b)


def test_order_is_the_samplers_and_resume_is_exact(shards):
    samples = open_samples(shards)
    recipe = build_recipe("single_rrc")
    full = run(recipe, SampleFeed(samples, 8, seed=3, rank=1, world=2), batches=5)
    feed = SampleFeed(samples, 8, seed=3, rank=1, world=2)
    expected = [[samples.read(i)[1] for i in feed.order(0)[b * 8:(b + 1) * 8]] for b in range(5)]
    assert [out[-1].tolist() for out in full] == expected
    resumed = run(recipe, SampleFeed(samples, 8, seed=3, rank=1, world=2, start_batch=3), batches=2)
    assert [out[-1].tolist() for out in resumed] == expected[3:]
    other = SampleFeed(samples, 8, seed=3, rank=0, world=2)
    assert not set(other.order(0).tolist()) & set(feed.order(0).tolist())


def test_a_corrupt_sample_is_skipped_counted_and_named_in_strict_mode(shards, corrupt_copy):
    victim = int(SampleFeed(open_samples(shards), 8, seed=0, rank=0, world=1).order(0)[2])  # 3rd of batch 1
    folder, key, name = corrupt_copy(shards, victim)
    outs = run(build_recipe("single_rrc"), SampleFeed(open_samples(folder), 8, seed=0, rank=0, world=1), batches=3)
    assert all(o[0].shape == (8, 3, 224, 224) for o in outs)  # the pipeline keeps going, full batches
    counted = SampleFeed(open_samples(folder), 8, seed=0, rank=0, world=1)
    run(build_recipe("single_rrc"), counted, batches=1)
    assert [c["key"] for c in counted.corrupt][:1] == [key]
    with pytest.raises(Exception, match=f"{key} in {name}"):
        run(build_recipe("single_rrc"), SampleFeed(open_samples(folder), 8, seed=0, rank=0, world=1, strict=True))
