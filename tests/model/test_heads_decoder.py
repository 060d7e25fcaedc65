"""model/heads.py, model/decoder.py, model/class_attention.py: structure and analytic invariants."""
import timm
import torch
import torch.nn as nn

from model.class_attention import ExtremaEncoder
from model.decoder import MAEDecoder, normalize_patches, patchify, unpatchify
from model.heads import DINOHead, byol_predictor, byol_projector, lcmae_head, sync_batchnorm
from model.vit import create_vit, forward_visible
from timm.layers import build_sincos2d_pos_embed


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
    head = lcmae_head(64)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None and head(torch.randn(4, 64)).shape == (4, 256)
    assert sync_batchnorm(head) is head  # not distributed: unchanged


def test_patchify_round_trips_and_lays_out_patches_row_major():
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 768)
    torch.testing.assert_close(p[:, 4], x[:, :, 16:32, 16:32].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(unpatchify(p, 16, (2, 3)), x)
    n = normalize_patches(p)
    torch.testing.assert_close(n.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.var(-1, unbiased=False), torch.ones(2, 6), atol=1e-4, rtol=0)


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
    torch.testing.assert_close(trunk.pos_embed[0], build_sincos2d_pos_embed([4, 4], dim=64).reshape(16, 64))
    assert all(isinstance(b.ls1, nn.Identity) for b in trunk.blocks)       # no layer scale in the trunk
    assert len(enc.pool.blocks) == 2
    assert all(torch.all(b.gamma_1 == 0.1) and torch.all(b.gamma_2 == 0.1) for b in enc.pool.blocks)
    images = torch.randn(3, 3, 64, 64)
    keep = torch.stack([torch.arange(4), torch.arange(4, 8)]).expand(3, 2, 4)
    assert enc(images).shape == (3, 64) and enc(images, keep).shape == (6, 64)
    plain = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, class_token=False,
                              global_pool="avg", img_size=64, depth=2, embed_dim=64, num_heads=4)
    plain.load_state_dict(trunk.state_dict(), strict=True)
