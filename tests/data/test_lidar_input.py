"""The downstream benchmark's LiDAR input, read back from voxels: it agrees with the synthetic city's own mask
(computed from exact heights), depends on each frame alone, and refuses a clip of another grid."""

from __future__ import annotations

import numpy as np
import pytest

from dcgen.data.grid import GRIDS
from dcgen.data.lidar_input import column_heights, lidar_hits
from dcgen.data.synth_city import generate_clip

G = GRIDS["debug"]


def test_hits_agree_with_the_city_mask_computed_from_exact_heights():
    for i in range(4):
        clip = generate_clip(G, 0, i)
        occ, mask = clip["occupancy"], clip["mask"]
        hits = lidar_hits(occ, G)
        assert hits.dtype == np.bool_ and hits.shape == occ.shape
        assert not (hits & (occ == 0)).any()  # a hit is an occupied voxel
        seen = mask & (occ > 0)
        assert (hits & seen).sum() >= 0.8 * seen.sum()  # the mask's observed occupied voxels are mostly hits
        assert (hits & seen).sum() >= 0.9 * hits.sum()  # and hits are mostly observed there
        assert 0.05 < hits.mean() < occ.astype(bool).mean()  # a sweep sees part of what is there


def test_heights_of_hand_made_columns():
    occ = np.zeros((1, *G.size), dtype=np.uint8)
    occ[0, 0, 0, 0] = 6  # road alone: the ground itself
    occ[0, 1, 0, :3] = 1  # a building three layers tall
    occ[0, 2, 0, 0], occ[0, 2, 0, 2] = 7, 9  # ground under a tree crown
    top, canopy = column_heights(occ, G)
    vz = G.voxel_size[2]
    assert top[0, 0, 0] == 0 and np.isinf(canopy[0, 0, 0])
    assert top[0, 1, 0] == pytest.approx(G.z_min + 3 * vz) and np.isinf(canopy[0, 1, 0])
    assert top[0, 2, 0] == 0 and canopy[0, 2, 0] == pytest.approx(G.z_min + 2 * vz)
    assert top[0, 3, 0] == 0 and np.isinf(canopy[0, 3, 0])  # an empty column


def test_each_frame_stands_alone_and_other_grids_are_refused():
    occ = generate_clip(G, 0, 1)["occupancy"]
    hits = lidar_hits(occ, G)
    assert np.array_equal(lidar_hits(occ[2:3], G)[0], hits[2])
    with pytest.raises(ValueError, match=r"occupancy of shape \[4, 32, 32, 8\], expected \[T, 32, 32, 4\]"):
        lidar_hits(np.zeros((4, 32, 32, 8), np.uint8), G)
