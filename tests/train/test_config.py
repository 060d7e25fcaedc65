import pytest
from omegaconf import OmegaConf

from train.config import CONFIGS, ConfigError, load_config, save_config


def test_demo_is_the_default_and_recipes_load(embedded_dir):
    demo = load_config(None, [])
    assert demo.data.train == "embedded:train" and demo.run.dir == "runs/demo"
    paths = [f"data.train={embedded_dir / 'train'}", f"data.val={embedded_dir / 'val'}"]
    ibot = load_config(CONFIGS / "ibot_attmask_vits16.yaml", paths)
    assert (ibot.method.name, ibot.method.masking, ibot.model.out_dim, ibot.data.n_local) == ("ibot", "attmask_high", 8192, 10)
    dino = load_config(CONFIGS / "dino_attmask_vits16.yaml", paths)
    assert (dino.method.name, dino.method.patch_weight, dino.model.out_dim, dino.data.n_local) == ("dino", 0.0, 65536, 8)
    assert list(dino.data.global_scale) == [0.4, 1.0]


def test_overrides_merge_and_the_config_is_saved(tiny, tmp_path):
    cfg = load_config(None, tiny + ["optim.epochs=7", "method.masking=attmask_low"])
    assert cfg.optim.epochs == 7 and cfg.method.masking == "attmask_low"
    saved = OmegaConf.load(save_config(cfg, tmp_path))
    assert saved == cfg


@pytest.mark.parametrize("override, key, words", [
    ("foo.bar=1", "foo", "unknown key"),
    ("data.global_size=36", "data.global_size", "not a multiple of the patch size 8"),
    ("data.local_size=20", "data.local_size", "not a multiple"),
    ("method.mask_ratio=[0.1,1.5]", "method.mask_ratio", "<= 1.0"),
    ("method.mask_prob=2", "method.mask_prob", "<= 1.0"),
    ("method.masking=blocky", "method.masking", "attmask_high"),
    ("optim.epochs=zero", "optim.epochs", "integer"),
    ("optim.warmup_epochs=500", "optim.warmup_epochs", "optim.epochs"),
    ("model.arch=not_a_vit", "model.arch", "not a timm model"),
    ("method.name=dino", "method.patch_weight", "must be 0 for dino"),
    ("distributed.zero_stage=4", "distributed.zero_stage", "1, 2, 3"),
])
def test_impossible_values_are_one_line_errors_naming_the_key(tiny, override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, tiny + [override])
    message = str(err.value)
    assert "\n" not in message and key in message.split(":")[0]
    assert words in message


def test_missing_data_path_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train: .*no manifest.json.*tools/convert.py"):
        load_config(None, [f"data.train={tmp_path / 'nothing'}"])
    with pytest.raises(ConfigError, match="data.train: missing"):
        load_config(CONFIGS / "default.yaml", [])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml", [])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["epochs"])
