"""Shapes: the voxel grid of a clip (SPEC §1) and of its HexPlane latent (SPEC §2), and the named grids.

``Grid`` is the shape and physical meaning of one clip ``occ[T, X, Y, Z]``; ``GRIDS`` holds one per preset name
(debug, small, carlasc, occ3d). ``carlasc`` is the CarlaSC Cartesian grid (±25.6 m, 8 layers over 3 m), ``occ3d``
the Occ3D grid (±40 m at 0.4 m), ``small`` the same extent as carlasc at half the resolution, ``debug`` a tiny grid
that trains in seconds. CarlaSC's published z range (−2.2 … 0.8 m) is relative to its roof LiDAR; dcgen measures
heights from the ego's ground contact, so the same 3 m slab starts 0.2 m below the road (ground in the bottom
layer, buildings and vehicles up to 2.8 m) instead of leaving five underground layers always empty.

A HexPlane latent is a plain ``dict[str, Tensor]`` keyed by ``PLANE_NAMES``, each plane ``[B, C, A, B']`` with the
axes in the order its name spells (``tx`` is ``[B, C, T', X']``); ``LatentDims`` fixes the downsampled sizes. Both
live here, below the models, because stores of clips and of latents describe themselves with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dcgen.data.classes import NUM_CLASSES_CARLASC, NUM_CLASSES_UNIFIED


@dataclass(frozen=True)
class Grid:
    """Shape and physical meaning of one clip ``occ[T, X, Y, Z]``."""

    num_frames: int
    size: tuple[int, int, int]  # X, Y, Z voxels; X forward, Y left, Z up; ego at the XY centre
    num_classes: int  # unified ids 0..num_classes-1, 0 = free
    voxel_size: tuple[float, float, float]  # metres per voxel along X, Y, Z
    z_min: float  # height of the bottom of the grid relative to the ego's ground contact, metres
    frame_rate: float  # Hz
    layout_downsample: int = 4  # d of layout[T, X/d, Y/d]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_frames, *self.size)

    @property
    def layout_size(self) -> tuple[int, int]:
        return (self.size[0] // self.layout_downsample, self.size[1] // self.layout_downsample)

    @property
    def extent(self) -> tuple[float, float, float]:
        return tuple(n * v for n, v in zip(self.size, self.voxel_size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        from dcgen import config

        return config.from_dict(cls, d)


GRIDS: dict[str, Grid] = {
    "debug": Grid(4, (32, 32, 4), NUM_CLASSES_CARLASC, (1.6, 1.6, 0.75), -0.2, 10.0),
    "small": Grid(16, (64, 64, 8), NUM_CLASSES_CARLASC, (0.8, 0.8, 0.375), -0.2, 10.0),
    "carlasc": Grid(16, (128, 128, 8), NUM_CLASSES_CARLASC, (0.4, 0.4, 0.375), -0.2, 10.0),
    "occ3d": Grid(16, (200, 200, 16), NUM_CLASSES_UNIFIED, (0.4, 0.4, 0.4), -1.0, 10.0),
}
PRESET_NAMES = tuple(GRIDS)


def grid(preset: str) -> Grid:
    """The grid of a named preset; a clear error for an unknown name."""
    if preset not in GRIDS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_NAMES)}")
    return GRIDS[preset]


PLANE_NAMES: tuple[str, ...] = ("xy", "xz", "yz", "tx", "ty", "tz")


@dataclass(frozen=True)
class LatentDims:
    """Downsampled axis sizes T', X', Y', Z' and the channel count C of every plane."""

    t: int
    x: int
    y: int
    z: int
    channels: int

    @classmethod
    def from_grid(cls, num_frames: int, size: tuple[int, int, int], channels: int,
                  down: tuple[int, int, int, int] = (2, 2, 2, 2)) -> "LatentDims":
        dims = (num_frames, *size)
        for n, d, axis in zip(dims, down, "TXYZ"):
            if n % d:
                raise ValueError(f"grid axis {axis}={n} is not divisible by its downsampling factor {d}")
        return cls(num_frames // down[0], size[0] // down[1], size[1] // down[2], size[2] // down[3], channels)

    def plane_shape(self, name: str) -> tuple[int, int, int]:
        """``(C, A, B)`` of plane ``name``."""
        sizes = {"t": self.t, "x": self.x, "y": self.y, "z": self.z}
        return (self.channels, sizes[name[0]], sizes[name[1]])

    @property
    def num_floats(self) -> int:
        return sum(c * a * b for c, a, b in (self.plane_shape(n) for n in PLANE_NAMES))
