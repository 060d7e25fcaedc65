"""View recipes as data: which crops and colour augmentations a method's views get.

Every engine (DALI, FFCV, the torchvision reference) builds its pipeline from a ``Recipe``,
so the recipes here are the single statement of the papers' augmentation defaults
(../shared/RECIPES.md). A recipe is a tuple of ``ViewSpec``; a view either draws its own
crop or shares the crop of an earlier view (ExtreMA's two colourings of one crop).

    multicrop               iBOT / DINO / AttMask: 2 global 224-px + M local 96-px crops
    shared_crop_two_colors  ExtreMA: one RandomResizedCrop, two independent colourings
    src_pair                LC-MAE: simple resized crop; view 2 adds colour + 3-augment
    single_rrc              MAE / SdAE: one RandomResizedCrop + flip
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RecipeError(ValueError):
    """A recipe value is impossible; the message names the field."""


@dataclass(frozen=True)
class Crop:
    kind: str = "rrc"                          # "rrc": RandomResizedCrop; "src": resize + random crop;
                                               # "center": evaluation (resize shorter side to size/0.875, centre crop)
    size: int = 224                            # output px (square)
    scale: tuple[float, float] = (0.08, 1.0)   # rrc: area fraction of the source
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # rrc: aspect ratio range
    padding: int = 4                           # src: reflect padding before the random crop, px
    flip_p: float = 0.5                        # horizontal flip probability


@dataclass(frozen=True)
class Color:
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # px, sigma ~ U(range)
    solarize_p: float = 0.0
    solarize_threshold: int = 128
    three_augment: bool = False  # DeiT III: one of grayscale / solarize / blur, uniformly (LC-MAE)


@dataclass(frozen=True)
class ViewSpec:
    name: str                       # "global_0", "local_3", "online", ...
    group: str                      # views of a group are stacked into one tensor: "global" | "local"
    crop: Crop | None               # None: reuse the crop of `shares_crop_of`
    color: Color | None = None      # None: no colour augmentation
    shares_crop_of: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    views: tuple[ViewSpec, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict = field(default_factory=dict, compare=False)

    def group(self, name: str) -> tuple[ViewSpec, ...]:
        return tuple(v for v in self.views if v.group == name)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.group for v in self.views))

    def validate(self) -> "Recipe":
        names = set()
        for v in self.views:
            if v.name in names:
                raise RecipeError(f"{self.name}: two views are named {v.name}")
            if v.crop is None and v.shares_crop_of not in names:
                raise RecipeError(f"{self.name}.{v.name}: shares the crop of {v.shares_crop_of!r}, "
                                  f"which is not an earlier view")
            names.add(v.name)
            if v.crop is not None:
                _check_crop(f"{self.name}.{v.name}.crop", v.crop)
            if v.color is not None:
                _check_color(f"{self.name}.{v.name}.color", v.color)
        for g in self.groups:
            sizes = {self.crop_of(v).size for v in self.group(g)}
            if len(sizes) != 1:
                raise RecipeError(f"{self.name}: views of group {g} must share one size, got {sorted(sizes)}")
        return self

    def size_of(self, group: str) -> int:
        return self.crop_of(self.group(group)[0]).size

    def crop_of(self, view: ViewSpec) -> Crop:
        while view.crop is None:
            view = next(v for v in self.views if v.name == view.shares_crop_of)
        return view.crop


CROP_KINDS = ("rrc", "src", "center")
EVAL_RESIZE = 256 / 224  # k-NN / linear-probe transform: Resize(256) + CenterCrop(224), scaled with the size


def _check_crop(where: str, c: Crop) -> None:
    _require(c.kind in CROP_KINDS, f"{where}.kind must be one of {', '.join(CROP_KINDS)}, not {c.kind!r}")
    # a multiple of the model's patch size: checked by the trainer's config, which knows the model
    _require(isinstance(c.size, int) and c.size > 0, f"{where}.size must be a positive number of px, not {c.size}")
    _require(0 < c.scale[0] <= c.scale[1] <= 1, f"{where}.scale must satisfy 0 < min <= max <= 1, not {c.scale}")
    _require(0 < c.ratio[0] <= c.ratio[1], f"{where}.ratio must satisfy 0 < min <= max, not {c.ratio}")
    _require(c.padding >= 0, f"{where}.padding must be >= 0")
    _require(0 <= c.flip_p <= 1, f"{where}.flip_p must be in [0, 1]")


def _check_color(where: str, c: Color) -> None:
    for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        _require(0 <= getattr(c, name) <= 1, f"{where}.{name} must be in [0, 1], not {getattr(c, name)}")
    _require(all(j >= 0 for j in c.jitter) and c.jitter[3] <= 0.5, f"{where}.jitter must be >= 0 with hue <= 0.5")
    _require(0 < c.blur_sigma[0] <= c.blur_sigma[1], f"{where}.blur_sigma must satisfy 0 < min <= max")
    _require(0 <= c.solarize_threshold <= 255, f"{where}.solarize_threshold must be in [0, 255]")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RecipeError(message)


def multicrop(global_size: int = 224, local_size: int = 96, n_local: int = 10,
              global_scale: tuple[float, float] = (0.25, 1.0),
              local_scale: tuple[float, float] = (0.05, 0.25),
              jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
              grayscale_p: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 2.0)) -> Recipe:
    """iBOT / AttMask defaults (s = 0.25, M = 10); DINO: global_scale (0.4, 1), n_local 8.
    jitter (brightness, contrast, saturation, hue), grayscale_p and blur_sigma (px): the
    DINO/iBOT values, chosen for 224-px crops."""
    base = Color(jitter=tuple(jitter), grayscale_p=grayscale_p, blur_sigma=tuple(blur_sigma))
    g = Crop("rrc", global_size, global_scale)
    views = (ViewSpec("global_0", "global", g, replace(base, blur_p=1.0)),
             ViewSpec("global_1", "global", g, replace(base, blur_p=0.1, solarize_p=0.2)))
    local = Crop("rrc", local_size, local_scale)
    views += tuple(ViewSpec(f"local_{i}", "local", local, replace(base, blur_p=0.5)) for i in range(n_local))
    return Recipe("multicrop", views).validate()


def shared_crop_two_colors(size: int = 224, scale: tuple[float, float] = (0.2, 1.0)) -> Recipe:
    """ExtreMA: one crop + flip, then two independent colourings (jitter 0.8, gray 0.2)."""
    color = Color()
    return Recipe("shared_crop_two_colors", (
        ViewSpec("student", "global", Crop("rrc", size, scale), color),
        ViewSpec("teacher", "global", None, color, shares_crop_of="student"))).validate()


def src_pair(size: int = 224, padding: int = 4) -> Recipe:
    """LC-MAE: simple resized crop for both; the target view adds jitter (0.8) + 3-augment."""
    crop = Crop("src", size, padding=padding)
    return Recipe("src_pair", (
        ViewSpec("online", "global", crop, None),
        ViewSpec("target", "global", crop, Color(grayscale_p=0.0, three_augment=True)))).validate()


def single_rrc(size: int = 224, scale: tuple[float, float] = (0.2, 1.0)) -> Recipe:
    """MAE / SdAE: RandomResizedCrop(224, (0.2, 1), bicubic) + flip."""
    return Recipe("single_rrc", (ViewSpec("image", "global", Crop("rrc", size, scale), None),)).validate()


def center_crop(size: int = 224) -> Recipe:
    """Evaluation (k-NN, linear probe): shorter side -> round(size * 256/224), bicubic, then the
    centre size x size crop; no flip, no colour."""
    return Recipe("center_crop", (ViewSpec("image", "global", Crop("center", size, flip_p=0.0), None),)).validate()


RECIPES = {"multicrop": multicrop, "center_crop": center_crop, "shared_crop_two_colors": shared_crop_two_colors,
           "src_pair": src_pair, "single_rrc": single_rrc}


def build_recipe(name: str, **overrides) -> Recipe:
    """A recipe by name with its builder's keyword overrides (e.g. n_local=8 for DINO)."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    try:
        return RECIPES[name](**overrides)
    except TypeError as err:
        raise RecipeError(f"recipe {name}: {err}") from None
