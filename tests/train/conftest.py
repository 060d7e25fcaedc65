"""Trainer fixtures: the embedded dataset converted once per session, tiny configs."""
from __future__ import annotations

import pytest

# A ViT with 4 x 4 patches of 8 px on 32-px global crops, two 16-px local crops: every
# code path of the recipe, at a size the CPU runs in a fraction of a second per step.
TINY = [
    "model.arch=vit_tiny_patch16_224", "model.kwargs.patch_size=8", "model.kwargs.img_size=32",
    "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "model.kwargs.depth=2",
    "model.out_dim=64", "model.head_hidden=32", "model.head_bottleneck=16", "model.drop_path=0.0",
    "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.batch_size=16", "data.workers=1",
    "eval.knn_size=32", "eval.knn_at_start=false", "run.progress=false", "run.log_every=1",
]


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory):
    """embedded:train and embedded:val converted once (WebDataset shards)."""
    from data.shards.convert import convert
    from data.shards.plan import ConvertOptions
    from data.sources import open_source

    root = tmp_path_factory.mktemp("embedded")
    for split in ("train", "val"):
        convert(open_source(f"embedded:{split}"), root / split, ConvertOptions(shard_size=300, workers=1),
                progress=False)
    return root


@pytest.fixture
def tiny(embedded_dir, tmp_path):
    """Overrides for a tiny run in tmp_path on the embedded shards."""
    return TINY + [f"run.dir={tmp_path / 'run'}", f"data.train={embedded_dir / 'train'}", "data.val=",
                   f"data.embedded_dir={embedded_dir}"]


# 4 x 4 tokens of 8 px on 32-px crops; r = 0.75 keeps 4 tokens, 4 disjoint masks use all 16
TINY_EXTREMA = ["model.kwargs.patch_size=8", "model.kwargs.img_size=32", "model.kwargs.embed_dim=32",
                "model.kwargs.num_heads=2", "model.kwargs.depth=2", "model.proj_hidden=48", "model.pred_hidden=48",
                "model.proj_dim=16", "model.drop_path=0.0", "data.global_size=32", "data.batch_size=16",
                "data.workers=1", "method.mask_ratio=[0.75,0.75]", "method.n_masks=4", "optim.warmup_epochs=0",
                "optim.base_lr=1e-3", "eval.knn_at_start=false", "run.progress=false", "run.log_every=1"]


@pytest.fixture
def tiny_extrema(embedded_dir, tmp_path):
    return TINY_EXTREMA + [f"run.dir={tmp_path / 'run'}", f"data.train={embedded_dir / 'train'}", "data.val=",
                           f"data.embedded_dir={embedded_dir}"]


# MAE / SdAE: 4 x 4 tokens of 8 px on 32-px crops; r = 0.75 keeps 4, SdAE's 12 masked tokens
# make 3 folds of 4; a 1-block 32-wide decoder
TINY_MAE = ["model.kwargs.patch_size=8", "model.kwargs.img_size=32", "model.kwargs.embed_dim=32",
            "model.kwargs.num_heads=2", "model.kwargs.depth=2", "model.drop_path=0.0", "model.decoder_dim=32",
            "model.decoder_depth=1", "model.decoder_heads=2", "data.global_size=32", "data.batch_size=16",
            "data.workers=1", "method.mask_ratio=[0.75,0.75]", "optim.warmup_epochs=0", "optim.base_lr=1e-3",
            "optim.freeze_last_layer_epochs=0", "eval.knn_at_start=false", "eval.knn_size=32",
            "run.progress=false", "run.log_every=1"]


@pytest.fixture
def tiny_mae(embedded_dir, tmp_path):
    return TINY_MAE + [f"run.dir={tmp_path / 'run'}", f"data.train={embedded_dir / 'train'}", "data.val=",
                       f"data.embedded_dir={embedded_dir}"]
