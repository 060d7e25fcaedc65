"""data/color.py: batched per-sample colour ops, checked against analytic expectations."""
import torch

from data.color import _gray, _hue, apply_color
from data.views import IMAGENET_MEAN, IMAGENET_STD, Color

M = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
S = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
OFF = Color(jitter_p=0.0, grayscale_p=0.0)


def images(n=16, size=24, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def raw(y):  # back to [0, 1]
    return y * S + M


def test_nothing_drawn_is_plain_normalization_and_flip_is_exact():
    x, g = images(), torch.Generator().manual_seed(1)
    torch.testing.assert_close(raw(apply_color(x, OFF, 0.0, IMAGENET_MEAN, IMAGENET_STD, g)), x.float() / 255)
    flip = torch.tensor([True, False] * 8)
    out = raw(apply_color(x, None, 0.0, IMAGENET_MEAN, IMAGENET_STD, g, flip=flip))
    torch.testing.assert_close(out[flip], x[flip].flip(-1).float() / 255)
    torch.testing.assert_close(out[~flip], x[~flip].float() / 255)


def test_grayscale_and_solarize_are_exact():
    x, g = images(), torch.Generator().manual_seed(2)
    gray = raw(apply_color(x, Color(jitter_p=0.0, grayscale_p=1.0), 0.0, IMAGENET_MEAN, IMAGENET_STD, g))
    torch.testing.assert_close(gray, _gray(x.float() / 255).expand_as(gray))
    sol = raw(apply_color(x, Color(jitter_p=0.0, grayscale_p=0.0, solarize_p=1.0), 0.0, IMAGENET_MEAN, IMAGENET_STD, g))
    f = x.float() / 255
    torch.testing.assert_close(sol, torch.where(f >= 128 / 255, 1 - f, f))


def test_hue_rotation_keeps_luma_and_zero_is_identity():
    f = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.25  # no clamping
    torch.testing.assert_close(_hue(f, torch.zeros(8)), f, atol=1e-5, rtol=0)
    rotated = _hue(f, torch.linspace(-0.1, 0.1, 8))
    torch.testing.assert_close(_gray(rotated), _gray(f), atol=2e-3, rtol=0)  # YIQ coefficients have 3 decimals
    assert not torch.allclose(rotated[0], f[0], atol=1e-3)


def test_blur_smooths_selected_samples_only_and_keeps_the_mean():
    x, g = images(seed=4), torch.Generator().manual_seed(5)
    out = raw(apply_color(x, Color(jitter_p=0.0, grayscale_p=0.0, blur_p=0.5), 0.0, IMAGENET_MEAN, IMAGENET_STD, g))
    f = x.float() / 255
    changed = (out - f).abs().flatten(1).amax(1) > 1e-4
    assert 3 <= changed.sum() <= 13                                   # about half of 16
    assert torch.all(out[changed].std((2, 3)) < f[changed].std((2, 3)))  # noise is smoothed
    torch.testing.assert_close(out[changed].mean((1, 2, 3)), f[changed].mean((1, 2, 3)), atol=0.02, rtol=0)


def test_jitter_changes_about_p_of_the_samples():
    x = torch.full((2000, 3, 4, 4), 128, dtype=torch.uint8)
    x[:, 0] = 200  # some colour, so saturation and hue act too
    out = raw(apply_color(x, Color(grayscale_p=0.0), 0.0, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(6)))
    changed = ((out - x.float() / 255).abs().flatten(1).amax(1) > 1e-4).float().mean().item()
    assert 0.76 < changed < 0.84                                      # jitter p = 0.8
