"""The padded rollout (SPEC §3): the six HexPlane planes packed into one square ``C × S × S`` image for the DiT.

Block layout, rows ``X', T', Z'`` by columns ``Y', Z', T'`` (planes sharing an axis sit next to each other along it)::

    xy   xz   txᵀ
    ty   tz   0
    yzᵀ  0    0

so the image has ``X' + T' + Z'`` rows and ``Y' + Z' + T'`` columns. **Decision** for non-square grids
(``X' != Y'``): the shorter side is zero-padded at its far end, ``S = max(rows, cols)``; every preset has
``X' == Y'`` and then ``S = X' + T' + Z'`` exactly (CarlaSC 76, Occ3D 116). Every block edge must fall on a patch
boundary so no token straddles two planes or a plane and padding: ``T', X', Y', Z'`` must all be multiples of the
patch size. A token is then either all plane or all padding, and the padding tokens can be dropped exactly.

Legend: B batch, C channels, S rollout side, H/W token grid rows/columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from dcgen.data.grid import PLANE_NAMES, LatentDims


@dataclass(frozen=True)
class Block:
    """Where one plane sits in the rollout; ``transposed`` planes are stored with their two axes swapped."""

    row: int
    col: int
    rows: int
    cols: int
    transposed: bool


@dataclass(frozen=True)
class RolloutLayout:
    """Pack/unpack between a HexPlane dict and a rollout image, plus its pixel and token validity masks."""

    dims: LatentDims
    patch: int = 2

    def __post_init__(self) -> None:
        if self.patch < 1:
            raise ValueError(f"rollout patch size must be >= 1, got {self.patch}")
        for axis in "txyz":
            n = getattr(self.dims, axis)
            if n < 1 or n % self.patch:
                raise ValueError(f"latent axis {axis.upper()}'={n} must be a positive multiple of the patch size "
                                 f"{self.patch} so no token straddles two planes")

    @cached_property
    def blocks(self) -> dict[str, Block]:
        d = self.dims
        return {
            "xy": Block(0, 0, d.x, d.y, False),
            "xz": Block(0, d.y, d.x, d.z, False),
            "tx": Block(0, d.y + d.z, d.x, d.t, True),
            "ty": Block(d.x, 0, d.t, d.y, False),
            "tz": Block(d.x, d.y, d.t, d.z, False),
            "yz": Block(d.x + d.t, 0, d.z, d.y, True),
        }

    @property
    def size(self) -> int:
        """S, the side of the square rollout."""
        d = self.dims
        return max(d.x + d.t + d.z, d.y + d.z + d.t)

    @property
    def grid(self) -> int:
        """Tokens per side of the rollout, S / patch."""
        return self.size // self.patch

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def pack(self, planes: dict[str, torch.Tensor]) -> torch.Tensor:
        """HexPlane dict of ``[B, C, A, B']`` planes -> ``rollout_BCSS`` with zeros outside the planes."""
        missing = [n for n in PLANE_NAMES if n not in planes]
        if missing:
            raise ValueError(f"HexPlane is missing planes {missing}; expected all of {list(PLANE_NAMES)}")
        first = planes["xy"]
        if first.ndim != 4:
            raise ValueError(f"plane 'xy' must have shape [B, C, X', Y'], got {list(first.shape)}")
        b = first.shape[0]
        for name in PLANE_NAMES:
            expected = (b, *self.dims.plane_shape(name))
            if tuple(planes[name].shape) != expected:
                raise ValueError(f"plane {name!r} has shape {list(planes[name].shape)}, expected {list(expected)}")
        s = self.size
        rollout_BCSS = first.new_zeros(b, self.dims.channels, s, s)
        for name, blk in self.blocks.items():
            plane = planes[name].transpose(2, 3) if blk.transposed else planes[name]
            rollout_BCSS[:, :, blk.row:blk.row + blk.rows, blk.col:blk.col + blk.cols] = plane
        return rollout_BCSS

    def unpack(self, rollout_BCSS: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact inverse of ``pack`` on the plane blocks (padding is ignored); returns contiguous planes."""
        s, c = self.size, self.dims.channels
        if rollout_BCSS.ndim != 4 or tuple(rollout_BCSS.shape[1:]) != (c, s, s):
            raise ValueError(f"rollout must have shape [B, {c}, {s}, {s}], got {list(rollout_BCSS.shape)}")
        planes = {}
        for name in PLANE_NAMES:
            blk = self.blocks[name]
            plane = rollout_BCSS[:, :, blk.row:blk.row + blk.rows, blk.col:blk.col + blk.cols]
            planes[name] = (plane.transpose(2, 3) if blk.transposed else plane).contiguous()
        return planes

    def valid_mask(self, device=None) -> torch.Tensor:
        """``[S, S]`` bool, True on the six planes."""
        valid_SS = torch.zeros(self.size, self.size, dtype=torch.bool, device=device)
        for blk in self.blocks.values():
            valid_SS[blk.row:blk.row + blk.rows, blk.col:blk.col + blk.cols] = True
        return valid_SS

    def token_mask(self, device=None) -> torch.Tensor:
        """``[H, W]`` bool over the token grid, False for the all-padding tokens the DiT drops."""
        p, g = self.patch, self.grid
        valid_HpWp = self.valid_mask(device).reshape(g, p, g, p)
        token_HW = valid_HpWp.any(dim=(1, 3))
        assert bool((token_HW == valid_HpWp.all(dim=(1, 3))).all()), "a token straddles a plane edge"
        return token_HW

    def xy_to_rollout(self, mask_BXY: torch.Tensor) -> torch.Tensor:
        """Broadcast an XY mask at latent resolution to every plane: ``[B, X', Y']`` -> ``[B, 1, S, S]``.

        A plane cell that spans a collapsed axis is set when *any* XY cell it summarises is set (``xz``/``tx`` take
        the any over Y, ``yz``/``ty`` over X, ``tz`` over both), so a cell is 0 only if everything it describes is 0.
        Padding is 0.
        """
        d = self.dims
        if mask_BXY.ndim != 3 or tuple(mask_BXY.shape[1:]) != (d.x, d.y):
            raise ValueError(f"XY mask must have shape [B, {d.x}, {d.y}] (latent resolution), "
                             f"got {list(mask_BXY.shape)}")
        m_BXY = mask_BXY.to(torch.float32)
        m_BX = m_BXY.amax(dim=2)
        m_BY = m_BXY.amax(dim=1)
        m_B = m_BXY.amax(dim=(1, 2))
        b = m_BXY.shape[0]
        planes = {
            "xy": m_BXY[:, None],
            "xz": m_BX[:, None, :, None].expand(b, 1, d.x, d.z),
            "yz": m_BY[:, None, :, None].expand(b, 1, d.y, d.z),
            "tx": m_BX[:, None, None, :].expand(b, 1, d.t, d.x),
            "ty": m_BY[:, None, None, :].expand(b, 1, d.t, d.y),
            "tz": m_B[:, None, None, None].expand(b, 1, d.t, d.z),
        }
        one_channel = RolloutLayout(LatentDims(d.t, d.x, d.y, d.z, 1), self.patch)
        return one_channel.pack(planes)
