"""One OmegaConf tree: train/configs/default.yaml, then a recipe YAML, then CLI dot-overrides.

    cfg = load_config("train/configs/ibot_attmask_vits16.yaml", ["optim.epochs=300"])

Merged once and validated before any work starts: an unknown key, a missing or impossible
value is a ``ConfigError`` whose one-line message names the key and says what is allowed.
Helpers never receive the tree; the engine hands them plain values.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

CONFIGS = Path(__file__).parent / "configs"
DEFAULTS = CONFIGS / "default.yaml"
DEMO = CONFIGS / "demo.yaml"
EMBEDDED = ("embedded:train", "embedded:val")
MASKINGS = ("attmask_high", "attmask_low", "attmask_hint", "block", "random", "none")
METHODS = ("ibot", "dino", "extrema", "mae", "sdae", "lcmae")
VIEWS = {"extrema": "shared_crop_two_colors", "mae": "single_rrc", "sdae": "single_rrc",
         "lcmae": "src_pair"}  # others: multicrop


class ConfigError(ValueError):
    """A bad configuration, in one line that names the key."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """defaults <- recipe YAML (demo.yaml when ``path`` is None) <- ``key=value`` overrides; validated."""
    recipe = Path(path) if path else DEMO
    if not recipe.is_file():
        raise ConfigError(f"--config {recipe}: no such file; the recipes are in {CONFIGS}")
    defaults = OmegaConf.load(DEFAULTS)
    OmegaConf.set_struct(defaults, True)
    OmegaConf.set_struct(defaults.model.kwargs, False)  # free-form timm.create_model arguments
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.epochs=300)")
    try:
        layers = [OmegaConf.load(recipe), OmegaConf.from_dotlist(list(overrides))]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{recipe}: {_first_line(err)}") from None
    try:
        cfg = OmegaConf.merge(defaults, *layers)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or _first_line(err)
        raise ConfigError(f"unknown key {key}; every key is listed in {DEFAULTS}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', '') or recipe}: {_first_line(err)}") from None
    if cfg.data.val is None:  # `data.val=` on the command line: no k-NN
        cfg.data.val = ""
    validate(cfg)
    return cfg


def save_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
    return path


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _number(cfg, key: str, lo: float | None = None, hi: float | None = None, integer: bool = False,
            lo_open: bool = False) -> float:
    value = OmegaConf.select(cfg, key)
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    _require(ok_type and not isinstance(value, bool), key, f"must be {kind}, not {value!r}")
    if lo is not None:
        _require(value > lo if lo_open else value >= lo, key, f"must be {'>' if lo_open else '>='} {lo}, not {value}")
    if hi is not None:
        _require(value <= hi, key, f"must be <= {hi}, not {value}")
    return value


def _pair(cfg, key: str, lo: float, hi: float) -> tuple[float, float]:
    value = OmegaConf.select(cfg, key)
    _require(isinstance(value, (list, ListConfig)) and len(value) == 2
             and all(isinstance(v, (int, float)) for v in value), key, f"must be [min, max], not {value!r}")
    a, b = value
    _require(lo <= a <= b <= hi, key, f"must satisfy {lo} <= min <= max <= {hi}, not {list(value)}")
    return float(a), float(b)


def _choice(cfg, key: str, allowed) -> str:
    value = OmegaConf.select(cfg, key)
    _require(value in allowed, key, f"must be one of {', '.join(map(str, allowed))}, not {value!r}")
    return value


def _data_path(cfg, key: str, required: bool) -> None:
    parent, leaf = key.rsplit(".", 1)
    if OmegaConf.is_missing(OmegaConf.select(cfg, parent), leaf):
        raise ConfigError(f"{key}: missing; set it to a shards folder made by tools/convert.py, to embedded:train "
                          f"or (throughput only) to synthetic")
    value = OmegaConf.select(cfg, key)
    _require(isinstance(value, str), key, f"must be a path, not {value!r}")
    if value == "" and not required:
        return
    if value in EMBEDDED or (required and value == "synthetic"):  # synthetic: noise batches (data/synthetic.py)
        return
    _require((Path(value) / "manifest.json").is_file(), key,
             f"{value} holds no converted shards (no manifest.json); make them with "
             f"`python tools/convert.py SRC {value}` or use {EMBEDDED[0] if required else EMBEDDED[1]}")


def patch_size_of(arch: str, kwargs: dict) -> int:
    """The backbone's patch size (model.vit.patch_size_of), its failures as one-line config errors."""
    import timm

    from model.vit import patch_size_of as from_model

    if not timm.is_model(arch):
        raise ConfigError(f"model.arch: {arch!r} is not a timm model (e.g. vit_small_patch16_224)")
    try:
        return from_model(arch, kwargs)
    except Exception as err:  # timm's message names the bad argument
        raise ConfigError(f"model.kwargs: timm.create_model({arch!r}) failed: {_first_line(err)}") from None


def multicrop_recipe(d: DictConfig):
    """The multi-crop view recipe that the ``data`` keys describe."""
    from data.views import build_recipe

    return build_recipe("multicrop", global_size=d.global_size, local_size=d.local_size, n_local=d.n_local,
                        global_scale=tuple(d.global_scale), local_scale=tuple(d.local_scale),
                        jitter=tuple(d.jitter), grayscale_p=d.grayscale_p, blur_sigma=tuple(d.blur_sigma))


def view_recipe(cfg: DictConfig):
    """The views the method trains on: multi-crop (iBOT, DINO), one crop with two colourings
    (ExtreMA: view 1 for the student, view 2 for the teacher), one RandomResizedCrop (MAE, SdAE),
    two simple resized crops, the second coloured (LC-MAE)."""
    name = VIEWS.get(cfg.method.name, "multicrop")
    if name == "multicrop":
        return multicrop_recipe(cfg.data)
    from data.views import build_recipe

    if name == "src_pair":  # no scale: the shorter side goes to the crop size
        return build_recipe(name, size=cfg.data.global_size)
    return build_recipe(name, size=cfg.data.global_size, scale=tuple(cfg.data.global_scale))


def _check_views(cfg: DictConfig) -> None:
    """The recipe built once here, so that its own checks come out as one line."""
    from data.views import RecipeError

    try:
        view_recipe(cfg)
    except RecipeError as err:
        raise ConfigError(f"data: {err}") from None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first impossible value (before any data or model work)."""
    for key in ("run.dir", "run.resume"):
        _require(isinstance(OmegaConf.select(cfg, key), str) and OmegaConf.select(cfg, key), key, "must be a non-empty string")
    _number(cfg, "run.seed", 0, integer=True)
    for key in ("run.log_every", "run.checkpoint_every", "run.keep_checkpoints", "run.max_nonfinite"):
        _number(cfg, key, 1, integer=True)
    _number(cfg, "run.max_steps", 0, integer=True)
    _data_path(cfg, "data.train", required=True)
    _data_path(cfg, "data.val", required=False)
    _require(not (cfg.data.train == "synthetic" and cfg.data.val), "data.val",
             "data.train=synthetic has no images to make a k-NN gallery of; set data.val= (empty)")
    _choice(cfg, "data.engine", ("dali", "ffcv", "reference"))
    _number(cfg, "data.workers", 1, integer=True)
    _number(cfg, "data.batch_size", 1, integer=True)
    _number(cfg, "data.n_local", 0, integer=True)
    _pair(cfg, "data.global_scale", 1e-6, 1.0)
    _pair(cfg, "data.local_scale", 1e-6, 1.0)
    jitter = OmegaConf.select(cfg, "data.jitter")
    _require(isinstance(jitter, (list, ListConfig)) and len(jitter) == 4 and all(isinstance(v, (int, float)) and v >= 0 for v in jitter)
             and jitter[3] <= 0.5, "data.jitter", f"must be [brightness, contrast, saturation, hue] >= 0 with hue <= 0.5, not {jitter!r}")
    _number(cfg, "data.grayscale_p", 0.0, 1.0)
    _pair(cfg, "data.blur_sigma", 1e-3, 100.0)
    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
    _require(isinstance(model_kwargs, dict), "model.kwargs", "must be a mapping of timm.create_model arguments")
    patch = patch_size_of(cfg.model.arch, model_kwargs)
    for key in ("data.global_size", "data.local_size", "eval.knn_size"):
        size = _number(cfg, key, 1, integer=True)
        _require(size % patch == 0, key, f"{size} px is not a multiple of the patch size {patch} of {cfg.model.arch}")
    _check_views(cfg)
    _number(cfg, "model.drop_path", 0.0, 1.0)
    for key in ("model.out_dim", "model.head_hidden", "model.head_bottleneck"):
        _number(cfg, key, 1, integer=True)
    method = _choice(cfg, "method.name", METHODS)
    _choice(cfg, "method.masking", MASKINGS)
    _pair(cfg, "method.mask_ratio", 0.0, 1.0)
    _number(cfg, "method.mask_prob", 0.0, 1.0)
    _number(cfg, "method.hint_max", 0.0, 1.0)
    weight = _number(cfg, "method.patch_weight", 0.0)
    _require(method != "dino" or weight == 0, "method.patch_weight",
             "must be 0 for dino (DINO has no masked-patch term); use method.name=ibot for it")
    if method == "extrema":
        _check_extrema(cfg, patch)
    if method in ("mae", "sdae", "lcmae"):
        _check_autoencoder(cfg, patch)
    for key in ("method.student_temp", "method.teacher_temp", "method.warmup_teacher_temp",
                "method.teacher_patch_temp", "method.warmup_teacher_patch_temp"):
        _number(cfg, key, 0.0, lo_open=True)
    _number(cfg, "method.warmup_teacher_temp_epochs", 0, integer=True)
    _number(cfg, "method.center_momentum", 0.0, 1.0)
    epochs = _number(cfg, "optim.epochs", 1, integer=True)
    _require(_number(cfg, "optim.warmup_epochs", 0) <= epochs, "optim.warmup_epochs", f"must be <= optim.epochs ({epochs})")
    for key in ("optim.base_lr", "optim.min_lr", "optim.weight_decay", "optim.weight_decay_end", "optim.clip_grad"):
        _number(cfg, key, 0.0)
    _pair(cfg, "optim.betas", 0.0, 0.999999)
    _number(cfg, "optim.freeze_last_layer_epochs", 0, integer=True)
    _number(cfg, "optim.momentum_teacher", 0.0, 1.0)
    _number(cfg, "optim.momentum_teacher_end", 0.0, 1.0)
    _choice(cfg, "distributed.backend", ("ddp", "deepspeed"))
    _choice(cfg, "distributed.zero_stage", (1, 2, 3))
    _choice(cfg, "distributed.precision", ("auto", "bf16", "fp32"))
    _number(cfg, "eval.knn_every", 0, integer=True)
    _number(cfg, "eval.knn_k", 1, integer=True)
    _number(cfg, "eval.knn_temperature", 0.0, lo_open=True)
    _choice(cfg, "eval.feature", ("cls", "avgpool"))
    _choice(cfg, "optim.lr_scaling", ("linear", "sqrt"))
    _choice(cfg, "method.ema_every", ("auto", "step", "epoch"))
    _choice(cfg, "eval.knn_engine", ("dali", "reference"))
    _choice(cfg, "train.student_passes", ("batched", "loop"))
    for key in ("run.progress", "data.exact_resume", "model.norm_last_layer", "eval.knn_at_start",
                "method.disjoint", "train.cuda_graphs", "method.norm_pix"):
        _require(isinstance(OmegaConf.select(cfg, key), bool), key, "must be true or false")


def _check_extrema(cfg: DictConfig, patch: int) -> None:
    """ExtreMA: one mask ratio (static shapes), K keep-sets that fit the token grid."""
    from model.masking import keep_count
    from train.methods.extrema import LOSSES

    lo, hi = _pair(cfg, "method.mask_ratio", 0.0, 1.0)
    _require(lo == hi, "method.mask_ratio", f"extrema keeps one ratio for every step (static shapes): "
                                            f"use [r, r], e.g. [0.8, 0.8], not {[lo, hi]}")
    _require(lo < 1.0, "method.mask_ratio", "extrema needs r < 1 (the student must keep a token)")
    k = _number(cfg, "method.n_masks", 1, integer=True)
    _choice(cfg, "method.loss", LOSSES)
    _number(cfg, "method.infonce_temp", 0.0, lo_open=True)
    for key in ("model.pool_depth", "model.proj_hidden", "model.proj_dim", "model.pred_hidden"):
        _number(cfg, key, 1, integer=True)
    n = (cfg.data.global_size // patch) ** 2
    n_keep = keep_count(n, lo)
    if OmegaConf.select(cfg, "method.disjoint") is True:
        _require(k * n_keep <= n, "method.n_masks",
                 f"{k} disjoint masks keeping {n_keep} of {n} tokens each need {k * n_keep} tokens; "
                 f"lower method.n_masks, raise method.mask_ratio or set method.disjoint=false")


def _check_autoencoder(cfg: DictConfig, patch: int) -> None:
    """MAE / SdAE: one ratio strictly inside (0, 1), a decoder its heads divide, K disjoint
    keep-sets that fit (MAE), folds that leave a target (SdAE)."""
    from model.masking import keep_count

    lo, hi = _pair(cfg, "method.mask_ratio", 0.0, 1.0)
    _require(lo == hi, "method.mask_ratio", f"{cfg.method.name} keeps one ratio for every step (static shapes): "
                                            f"use [r, r], e.g. [0.75, 0.75], not {[lo, hi]}")
    _require(0.0 < lo < 1.0, "method.mask_ratio", f"must lie strictly between 0 and 1, not {lo}")
    width = _number(cfg, "model.decoder_dim", 1, integer=True)
    heads = _number(cfg, "model.decoder_heads", 1, integer=True)
    _number(cfg, "model.decoder_depth", 1, integer=True)
    _require(width % heads == 0, "model.decoder_dim",
             f"{width} does not split into model.decoder_heads={heads} heads; use a multiple of {heads}")
    n = (cfg.data.global_size // patch) ** 2
    n_keep = keep_count(n, lo)
    _require(n_keep < n, "method.mask_ratio", f"keeps all {n} tokens at r = {lo}: nothing is masked; raise it")
    if cfg.method.name == "lcmae":
        _check_lcmae(cfg, n, n_keep)
    if cfg.method.name in ("mae", "lcmae"):
        k = _number(cfg, "method.n_masks", 1, integer=True)
        if OmegaConf.select(cfg, "method.disjoint") is True:
            _require(k * n_keep <= n, "method.n_masks",
                     f"{k} disjoint masks keeping {n_keep} of {n} tokens each need {k * n_keep} tokens; "
                     f"lower method.n_masks, raise method.mask_ratio or set method.disjoint=false")
        return
    t = _number(cfg, "method.folds", 1, integer=True)
    _require((n - n_keep) // t >= 1, "method.folds",
             f"{n - n_keep} masked tokens cannot fill {t} folds (no target); use at most {n - n_keep}")
    _choice(cfg, "method.teacher_input", ("folds", "full"))


def _check_lcmae(cfg: DictConfig, n: int, n_keep: int) -> None:
    """LC-MAE: its heads, the guidance weight, BatchNorm's need for two rows, the two-view form."""
    from train.methods.lcmae import VIEWS as LCMAE_VIEWS

    for key in ("model.guide_hidden", "model.guide_head_depth", "model.guide_pred_depth"):
        _number(cfg, key, 1, integer=True)
    _number(cfg, "method.guidance_weight", 0.0)
    _require(cfg.data.batch_size >= 2, "data.batch_size",
             "lcmae's heads have BatchNorm, which needs at least 2 images per process; use 2 or more")
    views = _choice(cfg, "method.views", LCMAE_VIEWS)
    if views == "two":
        r = cfg.method.mask_ratio[0]
        _require(r >= 0.5, "method.mask_ratio", f"method.views=two gives the two views disjoint visible sets, "
                                                f"which needs r >= 0.5, not {r}; raise it or use method.views=one")
        _require(cfg.method.n_masks == 1, "method.n_masks",
                 f"method.views=two takes one mask per view, not {cfg.method.n_masks}; use method.n_masks=1 "
                 f"or method.views=one")
        _require(2 * n_keep <= n, "method.mask_ratio", f"two disjoint sets of {n_keep} of {n} tokens do not fit")
