"""The HexPlane latent (SPEC §2): six 2D feature planes that factor a 4D (T, X, Y, Z) feature volume.

A HexPlane is a plain ``dict[str, Tensor]`` keyed by ``PLANE_NAMES``, each plane ``[B, C, A, B']`` with the axes in
the order its name spells (``tx`` is ``[B, C, T', X']``). ``LatentDims`` fixes the downsampled sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
