"""Padded rollout: exact pack/unpack, the SPEC §3 block layout, validity and token masks, XY mask broadcast."""

from __future__ import annotations

import pytest
import torch

from dcgen.data.grid import GRIDS, PLANE_NAMES, LatentDims
from dcgen.models.rollout import RolloutLayout


def _dims(preset: str, channels: int = 16) -> LatentDims:
    g = GRIDS[preset]
    return LatentDims.from_grid(g.num_frames, g.size, channels)


def _planes(dims: LatentDims, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(batch, *dims.plane_shape(n), generator=gen) for n in PLANE_NAMES}


@pytest.mark.parametrize("preset", ["debug", "small", "carlasc"])
def test_round_trip_is_exact(preset):
    layout = RolloutLayout(_dims(preset))
    planes = _planes(layout.dims)
    rollout = layout.pack(planes)
    back = layout.unpack(rollout)
    for name in PLANE_NAMES:
        assert torch.equal(back[name], planes[name]), name
    valid = layout.valid_mask()
    assert torch.equal(layout.pack(layout.unpack(rollout)), rollout)
    assert bool((rollout[:, :, ~valid] == 0).all())
    assert int(valid.sum()) * layout.dims.channels == layout.dims.num_floats


def test_carlasc_sizes_and_padding_tokens():
    layout = RolloutLayout(_dims("carlasc"))
    assert layout.size == 76
    assert layout.num_tokens == 1444
    assert int((~layout.token_mask()).sum()) == 28
    occ3d = RolloutLayout(_dims("occ3d"))
    assert occ3d.size == 116


def test_block_layout_follows_the_spec_table():
    d = LatentDims(t=4, x=6, y=6, z=2, channels=1)
    layout = RolloutLayout(d)
    planes = _planes(d, batch=1)
    r = layout.pack(planes)[0, 0]
    x0, t0, z0 = 0, d.x, d.x + d.t  # row offsets
    y0, zc, tc = 0, d.y, d.y + d.z  # column offsets
    assert torch.equal(r[x0:x0 + d.x, y0:y0 + d.y], planes["xy"][0, 0])
    assert torch.equal(r[x0:x0 + d.x, zc:zc + d.z], planes["xz"][0, 0])
    assert torch.equal(r[x0:x0 + d.x, tc:tc + d.t], planes["tx"][0, 0].T)
    assert torch.equal(r[t0:t0 + d.t, y0:y0 + d.y], planes["ty"][0, 0])
    assert torch.equal(r[t0:t0 + d.t, zc:zc + d.z], planes["tz"][0, 0])
    assert torch.equal(r[z0:z0 + d.z, y0:y0 + d.y], planes["yz"][0, 0].T)
    assert bool((r[t0:, tc:] == 0).all()) and bool((r[z0:, zc:] == 0).all())


def test_non_square_grid_pads_the_short_side_and_round_trips():
    d = LatentDims(t=2, x=8, y=4, z=2, channels=3)
    layout = RolloutLayout(d)
    assert layout.size == 8 + 2 + 2
    planes = _planes(d)
    back = layout.unpack(layout.pack(planes))
    assert all(torch.equal(back[n], planes[n]) for n in PLANE_NAMES)
    assert layout.token_mask().shape == (6, 6)


def test_odd_axis_is_rejected():
    with pytest.raises(ValueError, match="Z'=3 must be a positive multiple of the patch size 2"):
        RolloutLayout(LatentDims(t=2, x=8, y=8, z=3, channels=4))


def test_pack_rejects_missing_and_misshapen_planes():
    d = _dims("debug")
    layout = RolloutLayout(d)
    planes = _planes(d)
    del planes["tz"]
    with pytest.raises(ValueError, match="missing planes \\['tz'\\]"):
        layout.pack(planes)
    planes = _planes(d)
    planes["tx"] = planes["tx"].transpose(2, 3)
    with pytest.raises(ValueError, match="plane 'tx' has shape"):
        layout.pack(planes)
    with pytest.raises(ValueError, match="rollout must have shape"):
        layout.unpack(torch.zeros(1, 16, 19, 19))


def test_xy_mask_broadcast_to_planes():
    d = LatentDims(t=2, x=4, y=4, z=2, channels=5)
    layout = RolloutLayout(d)
    mask = torch.zeros(1, 4, 4)
    mask[0, 3, 1] = 1
    m = layout.unpack(layout.xy_to_rollout(mask).expand(1, 5, -1, -1).contiguous())
    assert torch.equal(m["xy"][0, 0], mask[0])
    assert torch.equal(m["xz"][0, 0, :, 0], torch.tensor([0.0, 0, 0, 1]))
    assert torch.equal(m["tx"][0, 0, 0], torch.tensor([0.0, 0, 0, 1]))
    assert torch.equal(m["yz"][0, 0, :, 1], torch.tensor([0.0, 1, 0, 0]))
    assert torch.equal(m["ty"][0, 0, 1], torch.tensor([0.0, 1, 0, 0]))
    assert bool((m["tz"] == 1).all())
    assert float(layout.xy_to_rollout(mask)[0, 0][~layout.valid_mask()].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="XY mask must have shape \\[B, 4, 4\\]"):
        layout.xy_to_rollout(torch.zeros(1, 4, 3))
