"""Building blocks shared by the HexPlane VAE's encoder and decoders (SPEC §2).

The 3D residual block of both per-frame CNNs (conv3³, InstanceNorm, LeakyReLU 0.1, conv3³, InstanceNorm), the
Fourier coordinate channels sin/cos(2^f · c) of integer voxel coordinates (decoder step 4), and the first decoder
step run on all six planes at once: a 2D conv block over the planes stacked along channels and zero-padded to a
common size, as one grouped convolution. Padding is masked out before every operation that could leak across the
plane border, so each plane gets exactly what a conv block of its own would compute.

Legend: B batch, T time, X/Y/Z space, C channels, H/W plane rows/columns, P planes, F Fourier channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcgen.data.grid import PLANE_NAMES

LEAK = 0.1


class ResBlock3d(nn.Module):
    """``x + IN(conv3(LeakyReLU(IN(conv3(x)))))`` at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm3d(channels, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm3d(channels, affine=True)

    def forward(self, x_NCXYZ: torch.Tensor) -> torch.Tensor:
        h_NCXYZ = F.leaky_relu(self.norm1(self.conv1(x_NCXYZ)), LEAK, inplace=True)
        return x_NCXYZ + self.norm2(self.conv2(h_NCXYZ))


def num_fourier_channels(num_axes: int, num_freqs: int) -> int:
    return 2 * num_freqs * num_axes


def fourier_encode(coords_PA: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``[P, A]`` integer coordinates → ``[P, 2 · num_freqs · A]``: per axis, per f ascending, sin/cos of 2^f c."""
    if num_freqs < 1:
        raise ValueError(f"num_freqs={num_freqs} must be >= 1")
    coords_PA = coords_PA.float()
    feats = []
    for axis in range(coords_PA.shape[1]):
        for f in range(num_freqs):
            feats.append(torch.sin(coords_PA[:, axis] * 2.0**f))
            feats.append(torch.cos(coords_PA[:, axis] * 2.0**f))
    return torch.stack(feats, dim=1)


def fourier_features(sizes: tuple[int, ...], num_freqs: int, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[F, *sizes]``: ``fourier_encode`` of every integer voxel coordinate of a grid (SPEC §2 decoder step 4)."""
    axes = [torch.arange(n, device=device) for n in sizes]
    coords_PA = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))
    feats_PF = fourier_encode(coords_PA, num_freqs)
    return feats_PF.T.reshape(-1, *sizes).to(dtype)


def masked_instance_norm(x_BCHW: torch.Tensor, mask_1CHW: torch.Tensor, weight_C: torch.Tensor,
                         bias_C: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel instance norm whose statistics see only the pixels where ``mask`` is 1."""
    x32_BCHW = x_BCHW.float()
    count_1C11 = mask_1CHW.sum(dim=(2, 3), keepdim=True)
    mean_BC11 = (x32_BCHW * mask_1CHW).sum(dim=(2, 3), keepdim=True) / count_1C11
    var_BC11 = ((x32_BCHW - mean_BC11).square() * mask_1CHW).sum(dim=(2, 3), keepdim=True) / count_1C11
    y_BCHW = (x32_BCHW - mean_BC11) * torch.rsqrt(var_BC11 + eps)
    return (y_BCHW * weight_C.view(1, -1, 1, 1) + bias_C.view(1, -1, 1, 1)).to(x_BCHW.dtype)


class StackedPlaneConvBlock(nn.Module):
    """Six independent conv blocks ``C_in → C_out`` (conv3, norm, SiLU, zero-init conv3, 1×1 shortcut) in one pass.

    The planes are zero-padded to a common ``H × W`` and stacked along channels so each conv is one grouped conv
    with ``groups = 6``. Zero padding makes the first conv exact; the padded area is re-zeroed before the second
    conv and excluded from the norm statistics. The zero-initialised conv makes the block start as its shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        p = len(PLANE_NAMES)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(p * in_channels, p * out_channels, 3, padding=1, groups=p)
        self.norm_weight = nn.Parameter(torch.ones(p * out_channels))
        self.norm_bias = nn.Parameter(torch.zeros(p * out_channels))
        self.conv2 = nn.Conv2d(p * out_channels, p * out_channels, 3, padding=1, groups=p)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(p * in_channels, p * out_channels, 1, groups=p)

    def forward(self, planes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sizes = [tuple(planes[n].shape[-2:]) for n in PLANE_NAMES]
        h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        x_BCHW = torch.cat([F.pad(planes[n], (0, w - s[1], 0, h - s[0])) for n, s in zip(PLANE_NAMES, sizes)], 1)
        mask_PHW = torch.zeros(len(PLANE_NAMES), h, w, device=x_BCHW.device, dtype=torch.float32)
        for i, (a, b) in enumerate(sizes):
            mask_PHW[i, :a, :b] = 1.0
        mask_1CHW = mask_PHW.repeat_interleave(self.out_channels, dim=0).unsqueeze(0)

        h_BCHW = masked_instance_norm(self.conv1(x_BCHW), mask_1CHW, self.norm_weight, self.norm_bias)
        h_BCHW = F.silu(h_BCHW) * mask_1CHW.to(h_BCHW.dtype)
        y_BCHW = self.conv2(h_BCHW) + self.shortcut(x_BCHW)

        out = {}
        for i, (name, (a, b)) in enumerate(zip(PLANE_NAMES, sizes)):
            out[name] = y_BCHW[:, i * self.out_channels:(i + 1) * self.out_channels, :a, :b]
        return out


def check_planes(planes: dict[str, torch.Tensor], expected: dict[str, tuple[int, int, int]], what: str) -> int:
    """Raise a ValueError unless ``planes`` holds exactly the six planes of the expected ``(C, H, W)``; return B."""
    if set(planes) != set(PLANE_NAMES):
        raise ValueError(f"{what}: got planes {sorted(planes)}, expected exactly {list(PLANE_NAMES)}")
    batch = None
    for name in PLANE_NAMES:
        shape = tuple(planes[name].shape)
        if len(shape) != 4 or shape[1:] != tuple(expected[name]):
            want = ", ".join(map(str, expected[name]))
            raise ValueError(f"{what}: plane {name!r} has shape {shape}, expected (B, {want})")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise ValueError(f"{what}: plane {name!r} has batch size {shape[0]}, expected {batch} like plane 'xy'")
    return batch
