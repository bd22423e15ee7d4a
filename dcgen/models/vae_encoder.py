"""The HexPlane VAE encoder: semantic clip → six feature planes (SPEC §2, encoder steps 1–3).

Every voxel's class id is embedded (``Embedding(num_classes, 16)``). Two per-frame 3D CNNs (frames folded into the
batch) turn the embedding into ``(B, C, T, X', Y', Z')`` features: conv3³ → residual block → a stride-2 stage
(conv3³ stride 2, InstanceNorm, LeakyReLU, residual block) that halves X, Y and Z. The spatial branch sees the
embedding; the temporal branch sees the embedding ⊕ a one-hot frame index, so its features know their time.
The one-hot channels are the same at every voxel of a frame, so their share of the temporal stem's convolution is
one pattern per frame (its kernel's sum, less where zero padding cuts the kernel at the border): ``FrameCNN``
computes it once from the stem's own weights and adds it, instead of convolving E + T channels at every voxel
of every clip. The result is the same; the stem does E/(E + T) of the work and keeps no (E + T)-channel input
for backward (at the SPEC widths, 67 MB per clip at the small grid).
Projection modules h_S then collapse the spatial features over T into a volume and the volume over Z, Y, X into
xy, xz, yz, and the temporal features over (Y, Z), (X, Z), (X, Y) into tx, ty, tz, whose T is halved by a
(2, 1)-stride conv. The per-plane Linear(C → 2C) that turns these planes into μ, log σ² lives in ``vae.py``.

Legend: B batch, T time, X/Y/Z space, C channels, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcgen.data.grid import LatentDims
from dcgen.models.layers import LEAK, ResBlock3d
from dcgen.models.projection import AxisProjection


class FrameCNN(nn.Module):
    """Per-frame 3D CNN ``[N, C_in, X, Y, Z] → [N, C, X/2, Y/2, Z/2]``, N = clips × frames in clip order.

    With ``num_frames`` T > 0 the stem's input is the ``C_in`` given channels ⊕ a one-hot frame index (T channels);
    the caller passes only the ``C_in`` channels and the one-hot part is added as a per-frame pattern (module doc).
    """

    def __init__(self, in_channels: int, channels: int, num_frames: int = 0):
        super().__init__()
        self.in_channels, self.num_frames = in_channels, num_frames
        self.stem = nn.Conv3d(in_channels + num_frames, channels, 3, padding=1)
        self.res_full = ResBlock3d(channels)
        self.down = nn.Conv3d(channels, channels, 3, stride=2, padding=1)
        self.down_norm = nn.InstanceNorm3d(channels, affine=True)
        self.res_half = ResBlock3d(channels)

    def _stem(self, x_NEXYZ: torch.Tensor) -> torch.Tensor:
        if not self.num_frames:
            return self.stem(x_NEXYZ)
        e, t = self.in_channels, self.num_frames
        weight = self.stem.weight
        h_NCXYZ = F.conv3d(x_NEXYZ, weight[:, :e], self.stem.bias, padding=1)
        # conv of frame t's one-hot channel (1 everywhere) = conv of a ones grid with that channel's kernel
        ones_11XYZ = torch.ones(1, 1, *x_NEXYZ.shape[2:], device=x_NEXYZ.device, dtype=h_NCXYZ.dtype)
        kernels = weight[:, e:].transpose(0, 1).reshape(-1, 1, *weight.shape[2:])  # [T · C, 1, k, k, k]
        frame_1TCXYZ = F.conv3d(ones_11XYZ, kernels.to(h_NCXYZ.dtype), padding=1).view(1, t, -1,
                                                                                        *h_NCXYZ.shape[2:])
        out_BTCXYZ = h_NCXYZ.view(-1, t, *h_NCXYZ.shape[1:]) + frame_1TCXYZ
        return out_BTCXYZ.flatten(0, 1)

    def forward(self, x_NCXYZ: torch.Tensor) -> torch.Tensor:
        if x_NCXYZ.shape[1] != self.in_channels:
            raise ValueError(f"frame CNN expects {self.in_channels} input channels, got {x_NCXYZ.shape[1]}")
        if self.num_frames and x_NCXYZ.shape[0] % self.num_frames:
            raise ValueError(f"frame CNN got {x_NCXYZ.shape[0]} frames, expected whole clips of {self.num_frames}")
        h_NCXYZ = self.res_full(self._stem(x_NCXYZ))
        h_NCXYZ = F.leaky_relu(self.down_norm(self.down(h_NCXYZ)), LEAK, inplace=True)
        return self.res_half(h_NCXYZ)


class HexPlaneEncoder(nn.Module):
    """``occ [B, T, X, Y, Z]`` (long class ids) → dict of six ``[B, C, ·, ·]`` feature planes."""

    def __init__(self, num_classes: int, dims: LatentDims, num_frames: int, embed_dim: int = 16,
                 channels: int = 16, pooling: str = "projection", num_heads: int = 2, depth: int = 2,
                 mlp_ratio: int = 2):
        super().__init__()
        self.num_frames = num_frames
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.spatial_cnn = FrameCNN(embed_dim, channels)
        self.temporal_cnn = FrameCNN(embed_dim, channels, num_frames)
        t, x, y, z = num_frames, dims.x, dims.y, dims.z

        def proj(axes: str, sizes: tuple[int, ...], collapse: str) -> AxisProjection:
            return AxisProjection(channels, axes, sizes, collapse, pooling, num_heads, depth, mlp_ratio)

        self.to_volume = proj("txyz", (t, x, y, z), "t")
        self.to_spatial = nn.ModuleDict({
            "xy": proj("xyz", (x, y, z), "z"),
            "xz": proj("xyz", (x, y, z), "y"),
            "yz": proj("xyz", (x, y, z), "x"),
        })
        self.to_temporal = nn.ModuleDict({
            "tx": proj("txyz", (t, x, y, z), "yz"),
            "ty": proj("txyz", (t, x, y, z), "xz"),
            "tz": proj("txyz", (t, x, y, z), "xy"),
        })
        self.halve_t = nn.ModuleDict({n: nn.Conv2d(channels, channels, (2, 1), stride=(2, 1))
                                      for n in self.to_temporal})

    def _frames(self, cnn: FrameCNN, x_BTEXYZ: torch.Tensor) -> torch.Tensor:
        b, t = x_BTEXYZ.shape[:2]
        h_NCXYZ = cnn(x_BTEXYZ.flatten(0, 1))
        return h_NCXYZ.view(b, t, *h_NCXYZ.shape[1:]).transpose(1, 2)

    def forward(self, occ_BTXYZ: torch.Tensor) -> dict[str, torch.Tensor]:
        t = occ_BTXYZ.shape[1]
        if t != self.num_frames:
            raise ValueError(f"encoder built for {self.num_frames} frames, got {t}")
        emb_BTEXYZ = self.embedding(occ_BTXYZ).permute(0, 1, 5, 2, 3, 4)
        spatial_BCTXYZ = self._frames(self.spatial_cnn, emb_BTEXYZ)
        volume_BCXYZ = self.to_volume(spatial_BCTXYZ)
        planes = {name: proj(volume_BCXYZ) for name, proj in self.to_spatial.items()}

        temporal_BCTXYZ = self._frames(self.temporal_cnn, emb_BTEXYZ)
        for name, proj in self.to_temporal.items():
            planes[name] = self.halve_t[name](proj(temporal_BCTXYZ))
        return planes
