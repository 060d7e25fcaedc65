"""model/vit.py: forward modes against timm and against slow explicit references (fp32)."""
import timm
import torch
import pytest

from model.vit import create_vit, embed_patches, forward_full, forward_masked, forward_visible, pos_embed_for

TINY = dict(img_size=64, depth=3, embed_dim=64, num_heads=4)  # ViT-S/16 layout, tiny sizes
ATOL = 1e-5


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_vit("vit_small_patch16_224", **TINY).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _one_sequence(vit, tokens_with_pos, prefix_pos):
    """Reference: one sequence through [CLS] + timm blocks + norm, batch of one."""
    cls = vit.cls_token[0] + prefix_pos[0]
    return vit.norm(vit.blocks(torch.cat([cls, tokens_with_pos])[None]))[0]


def test_backbone_exports_into_timm_strict_with_identical_outputs(vit, images):
    plain = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **TINY).eval()
    plain.load_state_dict(vit.state_dict(), strict=True)
    assert torch.equal(forward_full(vit, images), plain.forward_features(images))


def test_default_vit_s16_state_dict_is_timms(vit):
    ours = create_vit("vit_small_patch16_224")
    timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).load_state_dict(
        ours.state_dict(), strict=True)


def test_cls_attention_equals_the_explicit_softmax(vit, images):
    tokens, attn = forward_full(vit, images, return_cls_attention=True)
    assert attn.shape == (3, 16)
    # explicit: run to the last block, form the full softmax(Q K^T / sqrt(d)), take the [CLS] row
    x, grid = embed_patches(vit, images)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    x = torch.cat([vit.cls_token.expand(3, -1, -1) + prefix_pos, x + patch_pos], dim=1)
    for blk in vit.blocks[:-1]:
        x = blk(x)
    last = vit.blocks[-1].attn
    y = vit.blocks[-1].norm1(x)
    q, k, _ = last.qkv(y).reshape(3, 17, 3, last.num_heads, last.head_dim).permute(2, 0, 3, 1, 4)
    full = torch.softmax(q @ k.transpose(-2, -1) / last.head_dim ** 0.5, dim=-1)  # [B, H, T, T]
    expected = full[:, :, 0, 1:].mean(dim=1)
    torch.testing.assert_close(attn, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens, forward_full(vit, images), atol=0, rtol=0)  # same forward, same tokens


def test_cls_attention_is_fp32_under_bf16_autocast(vit, images):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, attn = forward_full(vit, images, return_cls_attention=True)
    assert attn.dtype == torch.float32 and torch.all(attn >= 0)


def test_forward_masked_against_a_per_image_reference(vit, images):
    torch.manual_seed(2)
    mask = torch.rand(3, 16) < 0.4
    token = torch.randn(64)
    out = forward_masked(vit, images, mask, token)
    x, grid = embed_patches(vit, images)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    for b in range(3):
        xb = x[b].clone()
        xb[mask[b]] = token
        torch.testing.assert_close(out[b], _one_sequence(vit, xb + patch_pos[0], prefix_pos), atol=ATOL, rtol=0)
    no_mask = forward_masked(vit, images, torch.zeros(3, 16, dtype=torch.bool), token)
    torch.testing.assert_close(no_mask, forward_full(vit, images), atol=ATOL, rtol=0)


def test_forward_visible_batches_k_masks_as_b_times_k_sequences(vit, images):
    keep = torch.stack([torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(10 * b + k))[:5].sort().values
                                     for k in range(2)]) for b in range(3)])  # [B=3, K=2, 5]
    out = forward_visible(vit, images, keep)
    assert out.shape == (6, 6, 64)
    x, grid = embed_patches(vit, images)
    prefix_pos, patch_pos = pos_embed_for(vit, grid)
    for b in range(3):
        for k in range(2):
            ref = _one_sequence(vit, (x[b] + patch_pos[0])[keep[b, k]], prefix_pos)
            torch.testing.assert_close(out[b * 2 + k], ref, atol=ATOL, rtol=0)
    all_kept = forward_visible(vit, images, torch.arange(16).expand(3, 16))
    torch.testing.assert_close(all_kept, forward_full(vit, images), atol=ATOL, rtol=0)


def test_local_crops_use_bicubically_resampled_positions(vit):
    local = torch.randn(2, 3, 96, 96)
    tokens, attn = forward_full(vit, local, return_cls_attention=True)
    assert tokens.shape == (2, 1 + 36, 64) and attn.shape == (2, 36)
    torch.testing.assert_close(tokens, vit.forward_features(local), atol=0, rtol=0)  # timm's own resampling
    small = torch.randn(2, 3, 32, 32)
    assert forward_masked(vit, small, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(64)).shape == (2, 5, 64)


def test_mask_of_the_wrong_shape_or_size_off_the_patch_grid_is_refused(vit, images):
    with pytest.raises(ValueError, match="does not match"):
        forward_masked(vit, images, torch.zeros(3, 15, dtype=torch.bool), torch.zeros(64))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        forward_full(vit, torch.randn(1, 3, 72, 100))


def test_gradients_reach_the_mask_token_and_the_backbone(images):
    vit = create_vit("vit_small_patch16_224", **TINY).train()
    token = torch.zeros(64, requires_grad=True)
    forward_masked(vit, images, torch.ones(3, 16, dtype=torch.bool), token).sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    assert torch.count_nonzero(vit.patch_embed.proj.weight.grad) == 0  # all masked: pixels leak nothing
    assert vit.cls_token.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fused SDPA kernels in bf16)")
def test_cls_attention_on_cuda_bf16_matches_fp32(vit, images):
    gpu = create_vit("vit_small_patch16_224", **TINY).cuda().eval()
    gpu.load_state_dict(vit.state_dict())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        tokens, attn = forward_full(gpu, images.cuda(), return_cls_attention=True)
    _, expected = forward_full(vit, images, return_cls_attention=True)
    assert attn.dtype == torch.float32
    torch.testing.assert_close(attn.cpu(), expected, atol=2e-3, rtol=5e-2)  # bf16 activations upstream
    torch.testing.assert_close(tokens.float().cpu(), forward_full(vit, images), atol=0.1, rtol=0.1)
