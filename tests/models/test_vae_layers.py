"""Unit tests of the VAE's building blocks against direct (slow, obvious) computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcgen.data.grid import PLANE_NAMES, LatentDims
from dcgen.models.ess_decoder import ESSDecoder, hexplane_product
from dcgen.models.layers import StackedPlaneConvBlock, fourier_features, masked_instance_norm
from dcgen.models.projection import AttentionPool, AxisProjection
from dcgen.models.query_decoder import sample_hexplane

DIMS = LatentDims(t=2, x=6, y=5, z=3, channels=4)


def random_planes(dims: LatentDims, batch: int = 2, full_t: bool = False, channels: int | None = None):
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in PLANE_NAMES:
        c, a, b = dims.plane_shape(name)
        if full_t and name[0] == "t":
            a *= 2
        out[name] = torch.randn(batch, channels or c, a, b, generator=g)
    return out


def test_fourier_features_values_and_layout():
    feats = fourier_features((2, 3, 4, 5), 3)
    assert feats.shape == (24, 2, 3, 4, 5)
    coord = (1, 2, 3, 4)
    expected = [fn(c * 2.0**f) for c in coord for f in range(3) for fn in (math.sin, math.cos)]
    assert torch.allclose(feats[:, 1, 2, 3, 4], torch.tensor(expected), atol=1e-6)
    with pytest.raises(ValueError, match="num_freqs=0"):
        fourier_features((2, 2), 0)


def test_stacked_plane_conv_equals_six_separate_blocks():
    torch.manual_seed(0)
    block = StackedPlaneConvBlock(4, 3)
    torch.nn.init.normal_(block.conv2.weight)  # the zero init would hide the second conv
    torch.nn.init.normal_(block.norm_bias)
    planes = random_planes(DIMS)
    out = block(planes)
    for i, name in enumerate(PLANE_NAMES):
        cout = slice(3 * i, 3 * i + 3)
        h = F.conv2d(planes[name], block.conv1.weight[cout], block.conv1.bias[cout], padding=1)
        h = F.instance_norm(h, weight=block.norm_weight[cout], bias=block.norm_bias[cout], eps=1e-6)
        h = F.silu(h)
        ref = F.conv2d(h, block.conv2.weight[cout], block.conv2.bias[cout], padding=1)
        ref = ref + F.conv2d(planes[name], block.shortcut.weight[cout], block.shortcut.bias[cout])
        assert out[name].shape == ref.shape
        assert torch.allclose(out[name], ref, atol=1e-5), name


def test_masked_instance_norm_ignores_masked_pixels():
    x = torch.randn(2, 3, 4, 5)
    mask = torch.zeros(1, 3, 4, 5)
    mask[..., :2, :3] = 1
    y = masked_instance_norm(x, mask, torch.ones(3), torch.zeros(3))
    ref = F.instance_norm(x[..., :2, :3], eps=1e-6)
    assert torch.allclose(y[..., :2, :3], ref, atol=1e-5)


def test_hexplane_product_is_the_broadcast_product():
    planes = random_planes(DIMS, full_t=True)
    vol = hexplane_product(planes)
    t, x, y, z = 2 * DIMS.t, DIMS.x, DIMS.y, DIMS.z
    assert vol.shape == (2, t, 4, x, y, z)
    bi, ti, ci, xi, yi, zi = 1, 3, 2, 4, 1, 2
    expected = (planes["xy"][bi, ci, xi, yi] * planes["xz"][bi, ci, xi, zi] * planes["yz"][bi, ci, yi, zi]
                * planes["tx"][bi, ci, ti, xi] * planes["ty"][bi, ci, ti, yi] * planes["tz"][bi, ci, ti, zi])
    assert torch.allclose(vol[bi, ti, ci, xi, yi, zi], expected, atol=1e-6)


def test_query_sampling_at_voxel_centres_is_bilinear_upsampling():
    """Sampling at every voxel centre of a 2× grid equals bilinear ``interpolate`` of each plane."""
    planes = random_planes(DIMS, batch=1)
    ones = {n: torch.ones_like(p) for n, p in planes.items()}
    shape = (2 * DIMS.t, 2 * DIMS.x, 2 * DIMS.y, 2 * DIMS.z)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 4)
    axis = {"t": 0, "x": 1, "y": 2, "z": 3}
    for name in ("xz", "ty"):
        fused = sample_hexplane({**ones, name: planes[name]}, coords, shape).view(1, 4, *shape)
        up = F.interpolate(planes[name], size=(shape[axis[name[0]]], shape[axis[name[1]]]), mode="bilinear",
                           align_corners=False)
        index = [0, slice(None)] + [slice(None) if a in name else 0 for a in "txyz"]
        assert torch.allclose(fused[tuple(index)], up[0], atol=1e-5), name


def test_attention_pool_last_layer_shortcut_matches_full_layers():
    torch.manual_seed(0)
    pool = AttentionPool(8, num_tokens=5)
    tokens = torch.randn(3, 5, 8)
    out = pool(tokens)
    x = torch.cat([tokens, pool.query.expand(3, 1, 8)], 1) + pool.pos_embed
    for block in pool.blocks:
        x = block(x, last_token_only=False)
    assert torch.allclose(out, pool.norm(x[:, -1]), atol=1e-5)
    assert not torch.allclose(out, pool.norm(x[:, 0]), atol=1e-3)  # the learnable token, not token 0


def test_axis_projection_folds_kept_axes():
    """With average pooling the projection is the mean over the collapsed axes, then the readout."""
    torch.manual_seed(0)
    proj = AxisProjection(4, "txyz", (2, 3, 5, 6), "xz", pooling="avgpool")
    feat = torch.randn(2, 4, 2, 3, 5, 6)
    out = proj(feat)
    assert out.shape == (2, 4, 2, 5)
    expected = proj.readout(feat.mean(dim=(3, 5)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    attn = AxisProjection(4, "txyz", (2, 3, 5, 6), "xz")
    assert attn.pool.pos_embed.shape == (1, 3 * 6 + 1, 4)
    assert attn(feat).shape == (2, 4, 2, 5)


def test_projection_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        AxisProjection(4, "xyz", (2, 2, 2), "z", pooling="max")
    with pytest.raises(ValueError, match="cannot collapse 'xyz'"):
        AxisProjection(4, "xyz", (2, 2, 2), "xyz")
    with pytest.raises(ValueError, match="not divisible"):
        AttentionPool(6, 4, num_heads=4)
    proj = AxisProjection(4, "xyz", (2, 3, 4), "z")
    with pytest.raises(ValueError, match=r"expects sizes \(2, 3, 4\), got \(2, 3, 5\)"):
        proj(torch.randn(1, 4, 2, 3, 5))


def test_ess_per_axis_fourier_terms_equal_the_conv_on_concatenated_channels():
    torch.manual_seed(0)
    dec = ESSDecoder(num_classes=5, dims=DIMS, num_frames=4)
    total = sum(dec.fourier_logits("cpu", torch.float32))  # broadcasts to [T, K, X, Y, Z]
    grid = fourier_features((4, 12, 10, 6), 3)  # [24, T, X, Y, Z]
    ref = F.conv3d(grid.transpose(0, 1), dec.head_fourier.weight)  # frames as batch: [T, K, X, Y, Z]
    assert total.shape == ref.shape == (4, 5, 12, 10, 6)
    assert torch.allclose(total, ref, atol=1e-5)


def test_temporal_stem_frame_pattern_equals_the_conv_on_one_hot_channels():
    from dcgen.models.vae_encoder import FrameCNN

    torch.manual_seed(0)
    cnn = FrameCNN(in_channels=3, channels=5, num_frames=4)
    x = torch.randn(2 * 4, 3, 6, 5, 3)
    onehot = torch.eye(4).view(1, 4, 4, 1, 1, 1).expand(2, 4, 4, 6, 5, 3).flatten(0, 1)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fast = cnn._stem(a)
    grads_fast = torch.autograd.grad((fast * fast).sum(), [a, cnn.stem.weight, cnn.stem.bias])
    ref = cnn.stem(torch.cat([b, onehot], dim=1))  # the stem on embedding ⊕ one-hot frame index
    grads_ref = torch.autograd.grad((ref * ref).sum(), [b, cnn.stem.weight, cnn.stem.bias])
    assert torch.allclose(fast, ref, atol=1e-5)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-4)


def test_frame_cnn_rejects_partial_clips_and_wrong_widths():
    from dcgen.models.vae_encoder import FrameCNN

    cnn = FrameCNN(in_channels=3, channels=4, num_frames=4)
    with pytest.raises(ValueError, match="got 6 frames, expected whole clips of 4"):
        cnn(torch.randn(6, 3, 4, 4, 2))
    with pytest.raises(ValueError, match="expects 3 input channels, got 7"):
        cnn(torch.randn(4, 7, 4, 4, 2))


def test_encoder_rejects_clips_of_another_length():
    from dcgen.models.vae_encoder import HexPlaneEncoder

    enc = HexPlaneEncoder(num_classes=3, dims=LatentDims(t=2, x=2, y=2, z=1, channels=4), num_frames=4,
                          embed_dim=4, channels=4)
    with pytest.raises(ValueError, match="encoder built for 4 frames, got 8"):
        enc(torch.zeros(1, 8, 4, 4, 2, dtype=torch.long))  # 8 frames: whole clips of 4 to the frame CNN, yet wrong


def test_ess_recomputed_full_resolution_stretch_gives_the_same_gradients():
    torch.manual_seed(0)
    dec = ESSDecoder(num_classes=5, dims=DIMS, num_frames=4, width=8, hidden=8, out_channels=4)
    planes = random_planes(DIMS, channels=4)
    logits = dec(planes)  # grad enabled: the upsample and head are recomputed in backward
    grads = torch.autograd.grad(logits.square().sum(), list(dec.parameters()))
    with torch.no_grad():
        assert torch.equal(dec(planes), logits.detach())

    dec.recompute_full_resolution = False  # the stretch's activations kept for backward like every other layer's
    ref = dec(planes)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(dec.parameters()))
    assert torch.allclose(logits, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)
