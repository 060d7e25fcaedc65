"""model/heads.py, model/decoder.py, model/class_attention.py: structure and analytic invariants."""
import math

import pytest
import timm
import torch
import torch.nn as nn

from model.class_attention import ExtremaEncoder
from model.decoder import MAEDecoder, normalize_patches, patchify, unpatchify
from model.heads import DINOHead, byol_predictor, byol_projector, lcmae_head, sync_batchnorm
from model.vit import create_vit, forward_visible, sincos_pos_table


def test_dino_head_is_shared_over_tokens_and_bounded_by_its_weight_norm():
    head = DINOHead(64, 512, hidden_dim=128, bottleneck_dim=32)
    tokens = torch.randn(2, 17, 64) * 10
    out = head(tokens)
    assert out.shape == (2, 17, 512)
    torch.testing.assert_close(out[:, 0], head(tokens[:, 0]))           # [CLS] alone = within the batch
    assert head.last_layer.bias is None
    assert out.abs().max() <= 1.0 + 1e-5  # unit features times rows of norm g = 1
    frozen = DINOHead(64, 512, norm_last_layer=True)
    assert not frozen.last_layer.parametrizations.weight.original0.requires_grad
    assert head.last_layer.parametrizations.weight.original0.requires_grad


def test_byol_and_lcmae_heads_have_the_recipe_layers():
    proj, pred = byol_projector(64), byol_predictor()
    assert [type(m) for m in proj] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert (proj[0].in_features, proj[3].out_features, proj[6].out_features) == (64, 4096, 256)
    assert [type(m) for m in pred] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    head = lcmae_head(64, 64)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (64, 4096, 64)
    assert head[0].bias is None and head[3].bias is None  # the authors' code: no Linear has a bias
    assert head(torch.randn(4, 64)).shape == (4, 64)
    assert sync_batchnorm(head) is head and type(head[1]) is nn.BatchNorm1d  # not distributed: unchanged


def test_patchify_round_trips_and_lays_out_patches_row_major():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 768)
    torch.testing.assert_close(p[:, 4], x[:, :, 16:32, 16:32].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(unpatchify(p, 16, (2, 3)), x)
    n = normalize_patches(p)
    torch.testing.assert_close(n.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.var(-1), torch.ones(2, 6), atol=1e-4, rtol=0)  # unbiased, as MAE


def test_decoder_places_each_visible_token_at_its_own_position():
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch16_224", img_size=64, depth=1, embed_dim=64, num_heads=4)
    dec = MAEDecoder(64, 768, (4, 4), decoder_dim=32, depth=2, num_heads=4).eval()
    images = torch.randn(2, 3, 64, 64)
    keep = torch.tensor([[1, 5, 7, 12], [0, 2, 3, 15]])
    tokens = forward_visible(vit, images, keep)
    out = dec(tokens, keep)
    assert out.shape == (2, 16, 768)
    perm = torch.tensor([2, 0, 3, 1])  # the same tokens listed in another order
    shuffled = torch.cat([tokens[:, :1], tokens[:, 1:][:, perm]], dim=1)
    torch.testing.assert_close(dec(shuffled, keep[:, perm]), out, atol=1e-5, rtol=0)
    feature_dec = MAEDecoder(64, 64, (4, 4), decoder_dim=32, depth=1, num_heads=4)
    assert feature_dec(tokens, keep).shape == (2, 16, 64)  # SdAE: a feature per position


def test_extrema_encoder_trunk_pool_and_export():
    enc = ExtremaEncoder("vit_small_patch16_224", img_size=64, depth=2, embed_dim=64, num_heads=4)
    trunk = enc.trunk
    assert trunk.cls_token is None and not trunk.pos_embed.requires_grad
    torch.testing.assert_close(trunk.pos_embed[0], _mae_table(4, 4, 64))
    assert all(isinstance(b.ls1, nn.Identity) for b in trunk.blocks)       # no layer scale in the trunk
    assert len(enc.pool.blocks) == 2
    assert all(torch.all(b.gamma_1 == 0.1) and torch.all(b.gamma_2 == 0.1) for b in enc.pool.blocks)
    images = torch.randn(3, 3, 64, 64)
    keep = torch.stack([torch.arange(4), torch.arange(4, 8)]).expand(3, 2, 4)
    assert enc(images).shape == (3, 64) and enc(images, keep).shape == (6, 64)
    plain = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, class_token=False,
                              global_pool="avg", img_size=64, depth=2, embed_dim=64, num_heads=4)
    plain.load_state_dict(trunk.state_dict(), strict=True)


def _mae_table(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE's sin-cos table written out entry by entry: token t = row * w + col; column c < dim/4
    is sin(col * f_c), then cos(col * f), sin(row * f), cos(row * f), f_c = 10000^(-c / (dim/4))."""
    q = dim // 4
    table = torch.zeros(h * w, dim, dtype=torch.float64)
    for row in range(h):
        for col in range(w):
            for c in range(q):
                f = 10000.0 ** (-c / q)
                table[row * w + col, [c, q + c, 2 * q + c, 3 * q + c]] = torch.tensor(
                    [math.sin(col * f), math.cos(col * f), math.sin(row * f), math.cos(row * f)], dtype=torch.float64)
    return table.float()


def test_sincos_positions_are_maes_table_in_every_fixed_position_module():
    torch.testing.assert_close(sincos_pos_table((3, 5), 32), _mae_table(3, 5, 32), atol=1e-6, rtol=0)
    # the table distinguishes rows from columns: swapping them changes it (timm's layout differs)
    swapped = _mae_table(4, 4, 64).reshape(4, 4, 64).transpose(0, 1).reshape(16, 64)
    assert (sincos_pos_table((4, 4), 64) - swapped).abs().max() > 0.5
    dec = MAEDecoder(64, 768, (4, 4), decoder_dim=32, depth=1, num_heads=4)
    torch.testing.assert_close(dec.pos_embed[0], _mae_table(4, 4, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_table((4, 4), 30)


def test_extrema_norms_all_use_eps_1e6():
    enc = ExtremaEncoder("vit_small_patch16_224", img_size=64, depth=2, embed_dim=64, num_heads=4)
    norms = [m for m in enc.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 + 2 * 2 + 1  # trunk blocks + trunk norm, pool blocks + pool norm
    assert all(m.eps == 1e-6 for m in norms), sorted({m.eps for m in norms})
