"""The per-point Query decoder, the ablation baseline of the ESS decoder (SPEC §2, "Baseline for ablation").

After the same per-plane conv block C → 64 as ESS, every voxel (t, x, y, z) of the full-resolution clip samples
each of the six planes bilinearly at its own coordinates (voxel centres, ``align_corners=False``, border
clamping), the six samples are fused by element-wise product, concatenated with the same 24 Fourier channels as
ESS, and a 4-layer MLP (256 hidden, ReLU) gives the logits. Points are processed in chunks to bound the
transient memory of ``grid_sample``; in training every chunk's activations are still kept for backward, which is
why this decoder is slower and hungrier than ESS (SPEC §5 measures 1.4× the time and 2.3× the memory).

Legend: B batch, K classes, T time, X/Y/Z space, C channels, P points (voxels), F Fourier channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcgen.data.grid import PLANE_NAMES, LatentDims
from dcgen.models.layers import StackedPlaneConvBlock, fourier_encode, num_fourier_channels

_AXIS = {"t": 0, "x": 1, "y": 2, "z": 3}


def sample_hexplane(planes: dict[str, torch.Tensor], coords_P4: torch.Tensor,
                    shape: tuple[int, int, int, int]) -> torch.Tensor:
    """``[B, C, P]``: the six planes sampled bilinearly at voxels ``(t, x, y, z)`` of a ``shape`` grid, multiplied.

    Each plane spans the whole grid along its two axes whatever its resolution, so voxel centres map to
    ``(2c + 1) / n − 1`` in ``grid_sample``'s [−1, 1] frame.
    """
    b = planes["xy"].shape[0]
    sizes_4 = torch.tensor(shape, device=coords_P4.device, dtype=torch.float32)
    unit_P4 = (2.0 * coords_P4.float() + 1.0) / sizes_4 - 1.0
    fused_BCP = None
    for name in PLANE_NAMES:
        row, col = _AXIS[name[0]], _AXIS[name[1]]
        plane_BCHW = planes[name]
        grid_P2 = torch.stack([unit_P4[:, col], unit_P4[:, row]], dim=-1).to(plane_BCHW.dtype)  # (x=col, y=row)
        grid_B1P2 = grid_P2.expand(b, 1, -1, 2)
        sample_BCP = F.grid_sample(plane_BCHW, grid_B1P2, mode="bilinear", padding_mode="border",
                                   align_corners=False)[:, :, 0]
        fused_BCP = sample_BCP if fused_BCP is None else fused_BCP * sample_BCP
    return fused_BCP


class QueryDecoder(nn.Module):
    """``{six [B, C, ·, ·] planes}`` → ``logits [B, K, T, X, Y, Z]``, one MLP query per voxel."""

    def __init__(self, num_classes: int, dims: LatentDims, num_frames: int, width: int = 64, hidden: int = 256,
                 num_layers: int = 4, num_freqs: int = 3, chunk_points: int = 1 << 16):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"query decoder num_layers={num_layers}, expected >= 2 (input and output layer)")
        if chunk_points < 1:
            raise ValueError(f"query decoder chunk_points={chunk_points}, expected >= 1")
        self.shape = (num_frames, 2 * dims.x, 2 * dims.y, 2 * dims.z)
        self.num_freqs = num_freqs
        self.chunk_points = chunk_points
        self.plane_block = StackedPlaneConvBlock(dims.channels, width)
        layers: list[nn.Module] = [nn.Linear(width + num_fourier_channels(4, num_freqs), hidden), nn.ReLU()]
        for _ in range(num_layers - 2):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, num_classes))
        self.mlp = nn.Sequential(*layers)

    def _coords(self, start: int, stop: int, device) -> torch.Tensor:
        """Integer (t, x, y, z) of the voxels with C-order flat indices ``start..stop-1``, ``[P, 4]``."""
        flat_P = torch.arange(start, stop, device=device)
        coords = []
        for n in reversed(self.shape):
            coords.append(flat_P % n)
            flat_P = flat_P // n
        return torch.stack(coords[::-1], dim=1)

    def _query(self, planes: dict[str, torch.Tensor], coords_P4: torch.Tensor) -> torch.Tensor:
        fused_BCP = sample_hexplane(planes, coords_P4, self.shape)
        fourier_BPF = fourier_encode(coords_P4, self.num_freqs).to(fused_BCP.dtype).expand(fused_BCP.shape[0], -1, -1)
        return self.mlp(torch.cat([fused_BCP.transpose(1, 2), fourier_BPF], dim=-1))

    def forward(self, planes: dict[str, torch.Tensor]) -> torch.Tensor:
        planes = self.plane_block(planes)
        b, device = planes["xy"].shape[0], planes["xy"].device
        num_points = self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]
        chunks = [self._query(planes, self._coords(s, min(s + self.chunk_points, num_points), device))
                  for s in range(0, num_points, self.chunk_points)]
        logits_BPK = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]
        return logits_BPK.view(b, *self.shape, -1).permute(0, 5, 1, 2, 3, 4)
