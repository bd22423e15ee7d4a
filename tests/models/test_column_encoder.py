"""The column encoder (the small preset's encoder): each plane pixel sees exactly the voxels it collapses, its
linear map is a learned per-position pooling (with uniform weights it is the mean class embedding of the
column), and a clip of the wrong shape is refused."""

from __future__ import annotations

import pytest
import torch

from dcgen.data.grid import PLANE_NAMES
from dcgen.models.column_encoder import ColumnEncoder
from dcgen.models.vae import HexPlaneVAE
from dcgen.presets import get_preset

DEBUG = get_preset("debug").vae.replace(projection="column", column_width=8)


def encoder() -> ColumnEncoder:
    torch.manual_seed(0)
    return ColumnEncoder(DEBUG.num_classes, DEBUG.dims, DEBUG.num_frames, DEBUG.column_width).eval()


def random_clip(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, DEBUG.num_classes, (1, *DEBUG.shape), generator=g)


def test_one_voxel_changes_only_the_pixels_whose_column_holds_it():
    enc, occ = encoder(), random_clip()
    with torch.no_grad():
        before = enc(occ)
        t, x, y, z = 3, 17, 6, 2
        occ2 = occ.clone()
        occ2[0, t, x, y, z] = (occ[0, t, x, y, z] + 1) % DEBUG.num_classes
        after = enc(occ2)
    pixel = {"t": t // 2, "x": x // 2, "y": y // 2, "z": z // 2}
    for name in PLANE_NAMES:
        changed = (before[name] != after[name]).any(dim=1)[0]  # [H, W]
        expected = torch.zeros_like(changed)
        expected[pixel[name[0]], pixel[name[1]]] = True
        assert torch.equal(changed, expected), name


def test_uniform_weights_give_the_mean_class_embedding_of_each_column():
    enc, occ = encoder(), random_clip(1)
    width, k = DEBUG.column_width, DEBUG.num_classes
    emb_KC = torch.randn(k, width)
    pre = {}
    for name in PLANE_NAMES:
        lin = enc.proj[name]
        voxels = lin.in_features // k
        with torch.no_grad():
            lin.weight.copy_((emb_KC.T / voxels).repeat(1, voxels))  # fan-in is (position, class), class fastest
            lin.bias.zero_()
        lin.register_forward_hook(lambda mod, inp, out, name=name: pre.__setitem__(name, out))
    with torch.no_grad():
        enc(occ)
    emb_TXYZC = emb_KC[occ[0]]
    t, x, y, z = DEBUG.shape
    emb = emb_TXYZC.view(t // 2, 2, x // 2, 2, y // 2, 2, z // 2, 2, width)
    axes = {"t": (0, 1), "x": (2, 3), "y": (4, 5), "z": (6, 7)}
    for name in PLANE_NAMES:
        kept = [axes[a][0] for a in name]
        collapsed = tuple(d for d in range(8) if d not in kept)
        mean_HWC = emb.mean(dim=collapsed)
        assert torch.allclose(pre[name][0], mean_HWC, atol=1e-5), name


def test_vae_with_the_column_encoder_has_the_spec_latent():
    model = HexPlaneVAE(DEBUG).eval()
    mu, logvar = model.encode(random_clip())
    for name in PLANE_NAMES:
        assert mu[name].shape == logvar[name].shape == (1, *DEBUG.dims.plane_shape(name))
    # the CPU presets encode with it (measured in presets.py); the GPU presets keep SPEC's CNN + attention pooling
    assert [get_preset(p).vae.projection for p in ("debug", "small", "carlasc")] == ["column", "column", "projection"]


def test_a_clip_of_the_wrong_shape_is_refused():
    enc = encoder()
    with pytest.raises(ValueError, match=r"built for clips of shape \(4, 32, 32, 4\), got \(4, 32, 32, 8\)"):
        enc(torch.zeros(1, 4, 32, 32, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="3 frames do not halve"):
        ColumnEncoder(DEBUG.num_classes, DEBUG.dims, 3, 8)
