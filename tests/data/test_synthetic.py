"""data.train=synthetic: batches of the recipe's exact shapes, the same for the same seed,
the loader interface the trainer uses (length, position, resume), a one-line config error."""
import pytest
import torch

from data.loader import build_loader
from data.views import build_recipe
from train.config import ConfigError, load_config


def test_synthetic_batches_have_the_recipes_shapes_and_follow_the_seed():
    recipe = build_recipe("multicrop", global_size=32, local_size=16, n_local=3)
    a = build_loader("synthetic", "dali", recipe, batch_size=4, seed=1)
    batch = next(iter(a))
    assert [tuple(v.shape) for v in batch.global_views] == [(4, 3, 32, 32)] * 2
    assert [tuple(v.shape) for v in batch.local_views] == [(4, 3, 16, 16)] * 3
    assert batch.labels.tolist() == [0] * 4 and abs(float(batch.global_views[0].std()) - 1) < 0.1
    b = build_loader("synthetic", "dali", recipe, batch_size=4, seed=1)
    c = build_loader("synthetic", "dali", recipe, batch_size=4, seed=2)
    assert torch.equal(next(iter(b)).global_views[0], batch.global_views[0])
    assert not torch.equal(next(iter(c)).global_views[0], batch.global_views[0])
    assert not torch.equal(batch.global_views[0], batch.global_views[1])  # every view its own noise


def test_synthetic_loader_keeps_its_position_like_the_shard_loaders():
    loader = build_loader("synthetic", "reference", build_recipe("single_rrc", size=32), batch_size=2)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    assert loader.state() == {"epoch": 0, "batches": 3} and len(loader) == 1000
    again = build_loader("synthetic", "reference", build_recipe("single_rrc", size=32), batch_size=2)
    again.load_state(loader.state())
    assert torch.equal(next(iter(again)).global_views[0], next(it).global_views[0])
    assert not torch.equal(first[0].global_views[0], first[1].global_views[0])


def test_a_synthetic_run_trains_and_has_no_knn_gallery(tmp_path):
    from train.engine import Trainer

    tiny = ["data.train=synthetic", "data.val=", f"run.dir={tmp_path}", "model.kwargs.patch_size=8",
            "model.kwargs.img_size=32", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
            "model.kwargs.depth=2", "model.out_dim=64", "model.head_hidden=32", "model.head_bottleneck=16",
            "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.batch_size=4",
            "run.max_steps=2", "run.progress=false"]
    summary = Trainer(load_config(None, tiny)).fit()
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0
    with pytest.raises(ConfigError) as err:
        load_config(None, tiny[:1] + ["data.val=embedded:val"] + tiny[2:])
    assert str(err.value).startswith("data.val: data.train=synthetic") and "\n" not in str(err.value)
