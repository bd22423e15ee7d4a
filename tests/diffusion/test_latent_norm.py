"""Per-plane latent normalisation: each HexPlane plane standardised by its own statistics, exactly invertible,
recorded by encode, read through for stores finished before it was recorded, and the per-channel form of older
DiT runs still loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgen.data.grid import PLANE_NAMES, LatentDims
from dcgen.diffusion.latent_norm import (LatentNorm, PlaneLatentNorm, PlaneMoments, norm_from_dict, plane_moments,
                                        plane_statistics, store_plane_statistics)
from dcgen.models.rollout import RolloutLayout

DIMS = LatentDims(4, 8, 8, 2, 3)


def _latents(n: int = 20, seed: int = 0) -> torch.Tensor:
    """Rollouts whose planes have their own offsets and scales, the time planes nearly constant along t."""
    gen = torch.Generator().manual_seed(seed)
    rollout = RolloutLayout(DIMS)
    planes = {}
    for i, name in enumerate(PLANE_NAMES):
        shape = (n, *DIMS.plane_shape(name))
        scale = 0.05 if name.startswith("t") else 1.0 + i
        planes[name] = (3.0 * i - 4.0) + scale * torch.randn(shape, generator=gen)
    return rollout.pack(planes)


def test_each_plane_is_standardised_by_its_own_statistics_and_the_map_inverts():
    x = _latents()
    rollout = RolloutLayout(DIMS)
    valid = rollout.valid_mask().float()
    norm = PlaneLatentNorm.from_statistics(DIMS, plane_statistics([x[:7], x[7:]], DIMS))
    z = norm.normalize(x, valid)
    for name, plane in rollout.unpack(z).items():
        per_channel = plane.transpose(0, 1).reshape(DIMS.channels, -1)
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(DIMS.channels), atol=1e-4, rtol=0)
        torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(DIMS.channels), atol=1e-4, rtol=0)
    assert float(z[:, :, valid == 0].abs().max()) == 0.0  # padding stays zero
    torch.testing.assert_close(norm.denormalize(z, valid), x * valid, atol=1e-4, rtol=1e-5)
    # one per-channel standardisation over every plane leaves the time planes' motion a few hundredths wide
    flat = x[:, :, valid.bool()]
    old = LatentNorm.from_statistics(flat.mean((0, 2)).tolist(), flat.std((0, 2)).tolist())
    along_t_old = rollout.unpack(old.normalize(x, valid))["tx"].std(2).mean()
    along_t_new = rollout.unpack(z)["tx"].std(2).mean()
    assert along_t_old < 0.05 and along_t_new > 0.5


def test_moments_merged_from_chunks_give_the_per_plane_and_per_channel_statistics():
    x = _latents(n=13)
    merged = PlaneMoments(DIMS)
    for chunk in (x[:1], x[1:6], x[6:]):  # as encode's actors return them, batch by batch
        merged.add(plane_moments(chunk, DIMS))
    whole = plane_statistics([x], DIMS)
    for name, plane in RolloutLayout(DIMS).unpack(x).items():
        per_channel = plane.double().transpose(0, 1).reshape(DIMS.channels, -1)
        np.testing.assert_allclose(merged.planes()[name]["mean"], per_channel.mean(1).numpy(), rtol=1e-9)
        np.testing.assert_allclose(merged.planes()[name]["std"], per_channel.std(1, unbiased=False).numpy(),
                                   rtol=1e-6)
        np.testing.assert_allclose(whole[name]["max"], per_channel.amax(1).numpy(), rtol=1e-9)
    flat = x.double()[:, :, RolloutLayout(DIMS).valid_mask()].transpose(0, 1).reshape(DIMS.channels, -1)
    mean, std, low, high = merged.channels()  # over every plane's pixels, the padding left out
    np.testing.assert_allclose(mean, flat.mean(1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, flat.std(1, unbiased=False).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(low, flat.amin(1).numpy())
    np.testing.assert_array_equal(high, flat.amax(1).numpy())
    with pytest.raises(ValueError, match="no latents"):
        PlaneMoments(DIMS).channels()


def test_standardisation_maps_are_built_once_per_dtype_and_device():
    x = _latents()
    norm = PlaneLatentNorm.from_statistics(DIMS, plane_statistics([x], DIMS))
    valid = RolloutLayout(DIMS).valid_mask().float()
    first = norm.normalize(x, valid)
    built = dict(norm._maps)
    torch.testing.assert_close(norm.normalize(x, valid), first, rtol=0, atol=0)
    assert norm._maps == built  # the second batch reuses the maps
    norm.normalize(x.double(), valid.double())
    assert len(norm._maps) == 2 * len(built)  # float64 gets its own
    assert norm == PlaneLatentNorm.from_statistics(DIMS, plane_statistics([x], DIMS))  # the cache is not compared


def test_x0_range_holds_each_planes_bounds_and_zero_on_the_padding():
    x = _latents()
    norm = PlaneLatentNorm.from_statistics(DIMS, plane_statistics([x], DIMS), margin=0.0)
    lo, hi = norm.x0_range()
    rollout = RolloutLayout(DIMS)
    z = norm.normalize(x, rollout.valid_mask().float())
    valid = rollout.valid_mask()
    assert bool((z >= lo - 1e-5).all()) and bool((z <= hi + 1e-5).all())  # the training latents lie inside
    for name, plane in rollout.unpack(z).items():  # and each plane's bound is met by that plane
        assert float(rollout.unpack(lo.expand_as(z))[name].min()) == pytest.approx(float(plane.min()), abs=1e-5)
    assert float(lo[0, :, ~valid].abs().max()) == 0.0 and float(hi[0, :, ~valid].abs().max()) == 0.0


def test_dict_round_trip_and_older_per_channel_configs():
    x = _latents()
    norm = PlaneLatentNorm.from_statistics(DIMS, plane_statistics([x], DIMS))
    assert norm_from_dict(norm.to_dict()) == norm
    old = LatentNorm.from_statistics([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [-1.0] * 3, [5.0] * 3)
    assert norm_from_dict(old.to_dict()) == old and norm_from_dict(None) is None


def test_bad_per_plane_statistics_are_refused():
    stats = plane_statistics([_latents()], DIMS)
    with pytest.raises(ValueError, match=r"lack the planes \['tz'\]"):
        PlaneLatentNorm.from_statistics(DIMS, {k: v for k, v in stats.items() if k != "tz"})
    with pytest.raises(ValueError, match="other than the latents' 4 channels"):
        PlaneLatentNorm.from_statistics(LatentDims(4, 8, 8, 2, 4), stats)
    with pytest.raises(ValueError, match="no latents"):
        plane_statistics([], DIMS)


def test_encode_records_plane_statistics_and_older_stores_are_read_through(debug_latents, tmp_path):
    import shutil

    import zarr

    from dcgen.data.latent_store import LatentStore

    store = LatentStore.open(debug_latents)
    recorded = store.meta["latent_plane_stats"]
    assert sorted(recorded) == sorted(PLANE_NAMES)
    older = tmp_path / "older.zarr"  # the same store as written before the statistics were recorded
    shutil.copytree(debug_latents, older)
    group = zarr.open_group(str(older), mode="r+")
    meta = dict(group.attrs["dcgen"])
    del meta["latent_plane_stats"]
    group.attrs["dcgen"] = meta
    read_through = store_plane_statistics(LatentStore.open(str(older)))
    for name in PLANE_NAMES:
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(read_through[name][key], recorded[name][key], rtol=1e-5, atol=1e-6)
