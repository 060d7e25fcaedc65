"""data/views.py recipes and data/reference.py (the torchvision oracle) on real images."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from data import embedded
from data.reference import ReferenceViews
from data.views import IMAGENET_MEAN, IMAGENET_STD, Color, Crop, Recipe, RecipeError, ViewSpec, build_recipe

LOW = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)
HIGH = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)


def test_recipe_defaults_follow_the_papers():
    mc = build_recipe("multicrop")
    assert [v.name for v in mc.group("global")] == ["global_0", "global_1"] and len(mc.group("local")) == 10
    g0, g1 = mc.group("global")
    assert (g0.crop.size, g0.crop.scale, mc.group("local")[0].crop.scale) == (224, (0.25, 1.0), (0.05, 0.25))
    assert (g0.color.blur_p, g1.color.blur_p, g1.color.solarize_p, g0.color.solarize_p) == (1.0, 0.1, 0.2, 0.0)
    assert mc.group("local")[0].color.blur_p == 0.5 and mc.size_of("local") == 96
    assert g0.color.jitter == (0.4, 0.4, 0.2, 0.1) and g0.color.jitter_p == 0.8 and g0.color.grayscale_p == 0.2
    dino = build_recipe("multicrop", global_scale=(0.4, 1.0), n_local=8)
    assert len(dino.group("local")) == 8 and dino.group("global")[0].crop.scale == (0.4, 1.0)
    ex = build_recipe("shared_crop_two_colors")
    assert ex.views[1].crop is None and ex.views[1].shares_crop_of == "student"
    assert ex.views[0].color.blur_p == 0 and ex.views[0].color.solarize_p == 0 and ex.views[0].crop.scale == (0.2, 1.0)
    src = build_recipe("src_pair")
    assert src.views[0].color is None and src.views[1].color.three_augment and src.views[0].crop.kind == "src"
    assert build_recipe("single_rrc").views[0].crop.scale == (0.2, 1.0)


@pytest.mark.parametrize("make, message", [
    (lambda: build_recipe("multicrop", local_size=0), "positive number of px"),
    (lambda: build_recipe("multicrop", global_scale=(0.5, 0.2)), "scale"),
    (lambda: build_recipe("nope"), "unknown recipe"),
    (lambda: build_recipe("single_rrc", sizes=3), "recipe single_rrc"),
    (lambda: Recipe("r", (ViewSpec("a", "global", None, shares_crop_of="b"),)).validate(), "not an earlier view"),
    (lambda: Recipe("r", (ViewSpec("a", "global", Crop(size=224)), ViewSpec("b", "global", Crop(size=96)))).validate(),
     "one size"),
    (lambda: Recipe("r", (ViewSpec("a", "g", Crop(), Color(jitter_p=1.5)),)).validate(), "jitter_p"),
])
def test_impossible_recipes_name_the_field(make, message):
    with pytest.raises(RecipeError, match=message):
        make()


@pytest.fixture(scope="module")
def image():
    return embedded.render("train", 3).resize((200, 150))


@pytest.mark.parametrize("name, groups", [
    ("multicrop", {"global": (2, 224), "local": (10, 96)}),
    ("shared_crop_two_colors", {"global": (2, 224)}),
    ("src_pair", {"global": (2, 224)}),
    ("single_rrc", {"global": (1, 224)}),
])
def test_reference_views_shapes_dtypes_and_ranges(image, name, groups):
    torch.manual_seed(0)
    views = ReferenceViews(build_recipe(name))(image)
    assert {g: (len(v), v[0].shape[-1]) for g, v in views.items()} == groups
    for group in views.values():
        for v in group:
            assert v.dtype == torch.float32 and v.shape[0] == 3 and v.shape[1] == v.shape[2]
            assert torch.all(v >= LOW - 1e-5) and torch.all(v <= HIGH + 1e-5)


def test_shared_crop_views_differ_only_by_colour(image):
    recipe = build_recipe("shared_crop_two_colors")
    plain = Recipe(recipe.name, tuple(replace(v, color=None) for v in recipe.views)).validate()
    for seed in range(5):
        torch.manual_seed(seed)
        a, b = ReferenceViews(plain)(image)["global"]
        assert torch.equal(a, b)                      # one crop for both
    torch.manual_seed(0)
    a, b = ReferenceViews(recipe)(image)["global"]
    assert not torch.equal(a, b)                      # two colourings


def test_reference_is_deterministic_under_a_seed(image):
    make = ReferenceViews(build_recipe("multicrop", n_local=2))
    torch.manual_seed(5)
    first = make(image)
    torch.manual_seed(5)
    again = make(image)
    assert all(torch.equal(x, y) for g in first for x, y in zip(first[g], again[g]))


def test_flip_rate_and_crop_scale_follow_the_recipe():
    """A left-right ramp shows the flip; a constant image's crop area is invisible, so use a grid."""
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1)), "L").convert("RGB")
    recipe = Recipe("t", (ViewSpec("v", "global", Crop("rrc", 32, (0.5, 0.5), (1.0, 1.0)), None),)).validate()
    make = ReferenceViews(recipe)
    torch.manual_seed(0)
    flips, spans = 0, []
    for _ in range(400):
        v = make(ramp)["global"][0][0]
        left, right = v[:, 0].mean().item(), v[:, -1].mean().item()
        flips += left > right
        spans.append(abs(right - left))
    assert 0.43 < flips / 400 < 0.57                  # flip p = 0.5
    # scale 0.5 of a square at ratio 1 spans sqrt(0.5) of the width: the ramp's range shrinks alike
    full = abs((255 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0] - (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    assert np.median(spans) == pytest.approx(full * (0.5 ** 0.5) * (31 / 32), rel=0.05)
