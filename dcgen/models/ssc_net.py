"""A small LMSCNet-style semantic scene completion network: one LiDAR sweep's occupied voxels in, every voxel's
class out (the lightweight baseline of the CarlaSC benchmark; Roldão et al., "LMSCNet: Lightweight Multiscale 3D
Semantic Completion", 3DV 2020, §3).

As in LMSCNet the height axis is the channel axis of a 2D U-Net over the bird's-eye plane (Z binary input
channels; ``levels`` 2x poolings, each doubling the width, then transposed-convolution upsampling with skip
connections), whose full-resolution output is lifted into a 3D volume of ``head_channels`` features per voxel
(LMSCNet expands one feature per voxel and widens it with a 3x3x3 convolution; a 1x1 lift to several features per
height does both at once) and read out by its 3D segmentation head: parallel dilated 3x3x3 convolutions (the
ASPP-like block, dilations 1, 2, 3 at full size) summed into a residual, then a classifier. The 2D convolutions are
followed by batch normalisation, which LMSCNet's trunk lacks: on the debug city it doubled what 150 steps learn
(19.4 % val mIoU against 11.6 %; 300 steps 38 %), and the benchmark's runs are short. Simplifications for a CPU
budget: one convolution per dilation instead of two, a 1x1x1 classifier, and only the full-resolution (1:1) head
(LMSCNet's 1:2, 1:4, 1:8 auxiliary heads and their losses are left out). The 3D head runs channels-last, where a
CPU's 3D convolution (backward included) is about twice as fast.

Legend: B batch, X/Y/Z space, C channels, K classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from dcgen.data.grid import GRIDS, PRESET_NAMES


@dataclass(frozen=True)
class SSCNetConfig:
    """The grid the network reads and its widths."""

    num_classes: int
    size: tuple[int, int, int]  # X, Y, Z voxels
    width: int = 32  # 2D U-Net channels at full resolution (doubled per level)
    levels: int = 3  # 2x poolings of the U-Net
    head_channels: int = 8  # 3D features per voxel after the lift
    dilations: tuple[int, ...] = (1, 2, 3)  # the 3D head's parallel dilated convolutions (LMSCNet's ASPP-like block)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "dilations", tuple(int(v) for v in self.dilations))
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"SSCNetConfig.dilations={self.dilations}, expected one or more positive dilations")
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"SSCNetConfig.size={self.size}, expected three positive sizes (X, Y, Z)")
        if self.num_classes < 2:
            raise ValueError(f"SSCNetConfig.num_classes={self.num_classes}, expected >= 2 (free + one class)")
        for name in ("width", "levels", "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"SSCNetConfig.{name}={getattr(self, name)}, expected a positive integer")
        step = 2 ** self.levels
        if self.size[0] % step or self.size[1] % step:
            raise ValueError(f"SSCNetConfig: X, Y = {self.size[:2]} must be divisible by 2^levels = {step} "
                             f"(levels={self.levels})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SSCNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SSCNetConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def _preset(name: str, **widths) -> SSCNetConfig:
    g = GRIDS[name]
    return SSCNetConfig(num_classes=g.num_classes, size=g.size, **widths)


SSC_PRESETS: dict[str, SSCNetConfig] = {
    "debug": _preset("debug", width=16, levels=2, head_channels=8, dilations=(1,)),
    "small": _preset("small", width=32, levels=3, head_channels=8, dilations=(1, 2)),
    "carlasc": _preset("carlasc", width=32, levels=4, head_channels=8),
    "occ3d": _preset("occ3d", width=32, levels=3, head_channels=8),
}


def ssc_preset(name: str) -> SSCNetConfig:
    """The network config of a named preset; a clear error for an unknown name."""
    if name not in SSC_PRESETS:
        raise ValueError(f"unknown SSC preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    return SSC_PRESETS[name]


def _block2d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))


class SSCNet(nn.Module):
    """``hits [B, X, Y, Z]`` (0/1 float) → ``logits [B, K, X, Y, Z]``."""

    def __init__(self, config: SSCNetConfig):
        super().__init__()
        self.config = config
        w, z, c3 = config.width, config.size[2], config.head_channels
        widths = [w * 2 ** level for level in range(config.levels + 1)]
        self.stem = _block2d(z, widths[0])
        self.down = nn.ModuleList(_block2d(widths[i], widths[i + 1]) for i in range(config.levels))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in range(config.levels))
        self.fuse = nn.ModuleList(_block2d(2 * widths[i], widths[i]) for i in range(config.levels))
        self.lift = nn.Conv2d(widths[0], c3 * z, 1)
        self.dilated = nn.ModuleList(nn.Conv3d(c3, c3, 3, padding=d, dilation=d) for d in config.dilations)
        self.classify = nn.Conv3d(c3, config.num_classes, 1)

    def forward(self, hits_BXYZ: torch.Tensor) -> torch.Tensor:
        size = tuple(self.config.size)
        if hits_BXYZ.dim() != 4 or tuple(hits_BXYZ.shape[1:]) != size:
            raise ValueError(f"SSCNet input of shape {list(hits_BXYZ.shape)}, expected "
                             f"[B, {', '.join(map(str, size))}]")
        b, x, y, z = hits_BXYZ.shape
        feat_BCXY = self.stem(hits_BXYZ.permute(0, 3, 1, 2).float())  # height as channels
        skips = []
        for block in self.down:
            skips.append(feat_BCXY)
            feat_BCXY = block(nn.functional.max_pool2d(feat_BCXY, 2))
        for i in reversed(range(self.config.levels)):
            feat_BCXY = self.fuse[i](torch.cat([self.up[i](feat_BCXY), skips[i]], dim=1))
        c3 = self.config.head_channels
        vol_BCZXY = nn.functional.leaky_relu(self.lift(feat_BCXY), 0.1).view(b, c3, z, x, y)
        vol_BCXYZ = vol_BCZXY.permute(0, 1, 3, 4, 2).contiguous(memory_format=torch.channels_last_3d)
        vol_BCXYZ = nn.functional.leaky_relu(vol_BCXYZ + sum(conv(vol_BCXYZ) for conv in self.dilated), 0.1)
        return self.classify(vol_BCXYZ).contiguous()
