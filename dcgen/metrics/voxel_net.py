"""dcgen's 3D feature network on voxel clips (SPEC §4, "3D": a 3D convolutional autoencoder/classifier on voxel
clips; features = pooled bottleneck).

1. **Patch stem**: the one-hot clip ``occ[T, X, Y, Z]`` is average-pooled into small ``pool`` cells (class shares,
   counted with one ``bincount``: a one-hot float tensor of a clip would be K times the clip), then a learned
   Conv4d with kernel = stride = ``patch`` (time folded into its input channels) maps each patch to ``widths[0]``
   channels. The defaults (``VoxelNetConfig.for_grid``) pool about 2 × 2 × 2 voxels on the ``small`` grid (none on
   ``debug``), never across time, and make ``T' = 4`` time slices of ``8 × 8 × 2`` cells whatever the grid.
2. **3D CNN per time slice** (slices folded into the batch): a residual block (3³ conv, GroupNorm, SiLU) at
   ``widths[0]``, a stride-2 3³ conv to ``widths[1]`` and a residual block there.
3. **Temporal pooling**: spatial mean per slice, a 1D conv across the ``T'`` slices (motion, hence the command),
   then mean ⊕ max over slices and a linear layer with SiLU: the pooled bottleneck (``bottleneck_dim``, 64).
4. **Metric feature**: the bottleneck ⊕ the mean and standard deviation over all cells and slices of every channel
   of the stem's and the first residual block's outputs (4 · ``widths[0]``), under a fixed affine calibration that
   weighs the three blocks equally (``calibration.py``): 192-D by default, near the clip counts of a small
   evaluation. SPEC §4 says "pooled bottleneck"; the bottleneck alone, trained for the proxy task, learned to
   ignore voxel class noise (real-vs-noisy FID 2.6 × real-vs-real on the ``debug`` city) while the first maps'
   pooled statistics moved ~10 ×, as for the 2D network (``render_net.py``).
5. Heads on the metric vector (raw): the proxy task's logits (``proxy_task.py``), and the autoencoder part, a linear
   decoder of the clip's coarse class map (class shares in each of ``T' × 4 × 4`` cells), so the features describe
   where things are.
GroupNorm keeps every clip's features independent of its batch.
Legend: B batch, T time, X/Y/Z space, K voxel classes, L logits, C channels, D features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dcgen.metrics.calibration import FeatureCalibration

AUX_XY = 4  # coarse map side


@dataclass(frozen=True)
class VoxelNetConfig:
    num_frames: int
    size: tuple[int, int, int]  # X, Y, Z
    num_voxel_classes: int  # class ids the clips may hold
    num_outputs: int  # classifier outputs: the proxy task's logits (``ProxyTask.num_logits``)
    pool: tuple[int, int, int, int]  # fixed class-share cells (t, x, y, z) the stem starts from
    patch: tuple[int, int, int, int]  # the learned stem's kernel = stride over the pooled grid
    widths: tuple[int, int] = (32, 64)
    bottleneck_dim: int = 64
    aux: bool = True
    groups: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        for name in ("pool", "patch", "widths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        dims = (self.num_frames, *self.size)
        if len(self.pool) != 4 or any(p < 1 or d % p for p, d in zip(self.pool, dims)):
            raise ValueError(f"VoxelNetConfig.pool {list(self.pool)} must divide the clip shape (T, X, Y, Z) "
                             f"{list(dims)}")
        pooled = [d // p for d, p in zip(dims, self.pool)]
        if len(self.patch) != 4 or any(p < 1 or d % p for p, d in zip(self.patch, pooled)):
            raise ValueError(f"VoxelNetConfig.patch {list(self.patch)} must divide the pooled clip shape {pooled}")
        if self.size[0] % AUX_XY or self.size[1] % AUX_XY:
            raise ValueError(f"VoxelNetConfig.size {list(self.size)}: X and Y must be multiples of {AUX_XY}")
        if len(self.widths) != 2 or any(w < self.groups or w % self.groups for w in self.widths):
            raise ValueError(f"VoxelNetConfig.widths must be two multiples of groups={self.groups}, got "
                             f"{list(self.widths)}")
        if self.num_voxel_classes < 2 or self.num_outputs < 2 or self.bottleneck_dim < 1:
            raise ValueError(f"VoxelNetConfig needs >= 2 voxel classes, >= 2 outputs and bottleneck_dim >= 1; "
                             f"got {self.num_voxel_classes}, {self.num_outputs}, {self.bottleneck_dim}")

    @property
    def feature_dim(self) -> int:
        """Bottleneck ⊕ mean and standard deviation of the stem's and first block's channels."""
        return self.bottleneck_dim + 4 * self.widths[0]

    @property
    def slices(self) -> tuple[int, int, int, int]:
        """``(T', X', Y', Z')`` after the patch stem."""
        return tuple(d // p // q for d, p, q in zip((self.num_frames, *self.size), self.pool, self.patch))

    @classmethod
    def for_grid(cls, num_frames: int, size: tuple[int, int, int], num_voxel_classes: int, num_outputs: int,
                 **kw) -> "VoxelNetConfig":
        """The default stem: class shares in cells of about 1/32 of X and Y and 1/4 of Z (no pooling over time),
        then a patch making about 4 time slices of 8 × 8 × 2 cells (fewer where the grid is smaller)."""
        def cut(n: int, parts: int) -> int:
            p = max(1, n // parts)
            while n % p:
                p -= 1
            return p

        x, y, z = size
        pool = (1, max(1, x // 32), max(1, y // 32), max(1, z // 4))
        pool = tuple(p if d % p == 0 else cut(d, d // p) for p, d in zip(pool, (num_frames, x, y, z)))
        pooled = [d // p for d, p in zip((num_frames, x, y, z), pool)]
        patch = (cut(pooled[0], 4), cut(pooled[1], 8), cut(pooled[2], 8), cut(pooled[3], 2))
        return cls(num_frames, tuple(size), num_voxel_classes, num_outputs, pool, patch, **kw)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "VoxelNetConfig":
        from dcgen import config

        return config.from_dict(cls, d)


def _conv3(c_in: int, c_out: int, stride, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU())


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv1 = _conv3(channels, channels, 1, groups)
        self.conv2 = nn.Conv3d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, x_BCXYZ: torch.Tensor) -> torch.Tensor:
        return F.silu(x_BCXYZ + self.norm2(self.conv2(self.conv1(x_BCXYZ))))


def class_shares(occ_BTXYZ: torch.Tensor, num_voxel_classes: int, cell: tuple[int, int, int, int]) -> torch.Tensor:
    """``[B, K, T/ct, X/cx, Y/cy, Z/cz]`` float share of each class in every ``cell`` (a fixed average pooling of
    the one-hot clip, counted with one ``bincount`` instead of materialising the one-hot tensor)."""
    b, t, x, y, z = occ_BTXYZ.shape
    k = num_voxel_classes
    dev = occ_BTXYZ.device
    out = tuple(d // c for d, c in zip((t, x, y, z), cell))
    index = torch.zeros((), dtype=torch.long, device=dev)
    for axis, (d, c, n) in enumerate(zip((t, x, y, z), cell, out)):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 1] = d
        index = index * n + (torch.arange(d, device=dev) // c).view(shape)
    cells = out[0] * out[1] * out[2] * out[3]
    index = (torch.arange(b, device=dev).view(b, 1, 1, 1, 1) * cells + index) * k + occ_BTXYZ.long()
    counts = torch.bincount(index.reshape(-1), minlength=b * cells * k).view(b, *out, k).float()
    shares = counts / float(cell[0] * cell[1] * cell[2] * cell[3])
    return shares.permute(0, 5, 1, 2, 3, 4)


class PatchStem4d(nn.Module):
    """Class-id clip -> ``[B, C, T', X', Y', Z']``: class shares in ``pool`` cells, then a learned Conv4d with
    kernel = stride = ``patch`` over them (time folded into the input channels)."""

    def __init__(self, num_voxel_classes: int, pool: tuple[int, int, int, int], patch: tuple[int, int, int, int],
                 channels: int):
        super().__init__()
        self.num_voxel_classes, self.pool, self.patch = num_voxel_classes, pool, patch
        self.conv = nn.Conv3d(num_voxel_classes * patch[0], channels, patch[1:], patch[1:])

    def forward(self, occ_BTXYZ: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            shares = class_shares(occ_BTXYZ, self.num_voxel_classes, self.pool)  # [B, K, T, X, Y, Z] pooled
        b, k, t, x, y, z = shares.shape
        pt = self.patch[0]
        folded = shares.view(b, k, t // pt, pt, x, y, z).permute(0, 2, 1, 3, 4, 5, 6)
        folded = folded.reshape(b * (t // pt), k * pt, x, y, z)
        emb = self.conv(folded.to(self.conv.weight.dtype))
        return emb.view(b, t // pt, *emb.shape[1:]).transpose(1, 2)


class VoxelNet(nn.Module):
    """Clips ``[B, T, X, Y, Z]`` of class ids -> (features ``[B, D]``, logits ``[B, L]``, aux logits
    ``[B, K, T', 4, 4]`` or None)."""

    def __init__(self, config: VoxelNetConfig):
        super().__init__()
        self.config = config
        c0, c1 = config.widths
        g = config.groups
        self.stem = PatchStem4d(config.num_voxel_classes, config.pool, config.patch, c0)
        self.block0 = ResBlock3d(c0, g)
        self.down = _conv3(c0, c1, 2, g)
        self.block1 = ResBlock3d(c1, g)
        self.temporal = nn.Sequential(nn.Conv1d(c1, c1, 3, 1, 1), nn.SiLU())
        self.bottleneck = nn.Sequential(nn.Linear(2 * c1, config.bottleneck_dim), nn.SiLU())
        self.head = nn.Linear(config.feature_dim, config.num_outputs)
        self.calibration = FeatureCalibration(config.feature_dim, (config.bottleneck_dim, 2 * c0, 2 * c0))
        t_slices = config.slices[0]
        self.aux = (nn.Linear(config.feature_dim, config.num_voxel_classes * t_slices * AUX_XY * AUX_XY)
                    if config.aux else None)

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def features(self, occ_BTXYZ: torch.Tensor) -> torch.Tensor:
        """The metric features: calibrated bottleneck ⊕ early-map statistics (``calibration.py``)."""
        return self.calibration(self.raw_features(occ_BTXYZ))

    def raw_features(self, occ_BTXYZ: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if occ_BTXYZ.dim() != 5 or tuple(occ_BTXYZ.shape[1:]) != (cfg.num_frames, *cfg.size):
            raise ValueError(f"VoxelNet expects clips [B, {cfg.num_frames}, {', '.join(map(str, cfg.size))}], got "
                             f"{list(occ_BTXYZ.shape)}")
        x = self.stem(occ_BTXYZ)  # [B, C0, T', X', Y', Z']
        b, c0, t = x.shape[:3]
        x = x.transpose(1, 2).reshape(b * t, c0, *x.shape[3:])
        x0 = self.block0(x)
        x1 = self.block1(self.down(x0))  # [B T', C1, X'', Y'', Z'']
        per_slice_BCT = x1.mean(dim=(2, 3, 4)).view(b, t, -1).transpose(1, 2)
        h_BCT = self.temporal(per_slice_BCT)
        pooled = torch.cat([h_BCT.mean(2), h_BCT.amax(2)], dim=1)
        return torch.cat([self.bottleneck(pooled), _mean_std(x, b), _mean_std(x0, b)], dim=1)

    def forward(self, occ_BTXYZ: torch.Tensor):
        """``(metric features, logits, aux)``; the heads read the raw feature vector."""
        raw_BD = self.raw_features(occ_BTXYZ)
        aux = None
        if self.aux is not None:
            aux = self.aux(raw_BD).view(-1, self.config.num_voxel_classes, self.config.slices[0], AUX_XY, AUX_XY)
        return self.calibration(raw_BD), self.head(raw_BD), aux


def _mean_std(x_SCXYZ: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B, 2C]`` mean and standard deviation of each channel over every cell of every time slice of a clip
    (rows ``S = B T'``, clip major); the epsilon keeps the gradient finite."""
    s, c = x_SCXYZ.shape[:2]
    per_clip = x_SCXYZ.float().reshape(batch, s // batch, c, -1).transpose(1, 2).reshape(batch, c, -1)
    var, mean = torch.var_mean(per_clip, dim=2, correction=0)
    return torch.cat([mean, torch.sqrt(var + 1e-5)], dim=1)


def coarse_class_map(occ_BTXYZ: torch.Tensor, num_voxel_classes: int, num_slices: int) -> torch.Tensor:
    """``[B, K, T', 4, 4]`` share of each class in every coarse cell: the autoencoder head's target."""
    _, t, x, y, z = occ_BTXYZ.shape
    return class_shares(occ_BTXYZ, num_voxel_classes, (t // num_slices, x // AUX_XY, y // AUX_XY, z))[..., 0]
