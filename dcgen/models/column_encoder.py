"""The column encoder: semantic clip → six feature planes by a learned linear map of the voxels each pixel collapses.

An alternative to SPEC §2's encoder steps 1–3 (embedding, two per-frame 3D CNNs, Projection Modules), used by the
``small`` CPU preset (``VAEConfig.projection = "column"``). A pixel of plane ``xy`` stands for a 2 × 2 column of
voxels through every frame and height; its features are ``GELU(LayerNorm(W_xy · onehot(column)))``, one weight per
(class, position in the column) and feature, and likewise for the other five planes (``tz`` collapses a whole
2-frame, 2-layer slab). This is average pooling with a learned weight per collapsed position and class: it sees
which class sits at which height and time directly, where the CNN + attention path must first learn to carry that
through 8 channels. It has no receptive field beyond the pixel's own voxels; the latent's neighbourhoods are the
decoder's business. The per-plane ``Linear(C → 2C)`` giving μ, log σ² stays in ``vae.py``.

Why: on 2 CPU cores the SPEC encoder was the slow part of learning (a decoder fed free planes learnt one clip about
twice as fast per step) and more than half of a small-preset step (4.3 s in float32 on an AVX2 CPU). The column
encoder's forward takes ~0.12 s and the whole step 1.9 s; after 4 minutes of training it read 21.9 % val mIoU (step
128) where the CNN + attention encoder read 11.5 % (step 56), with the same decoder, data, seed and learning rate.
The maps are large (each pixel's fan-in is every voxel it collapses × classes: 180 k for ``tz`` at the small grid),
~21 M parameters at width 64, all in plain matmuls that a CPU runs near its peak.

In the reference frame (``motion_frame.py``) a voxel no frame saw carries the id ``num_classes`` (``unseen``): its
one-hot is all zeros, so it adds nothing to its pixels.

Legend: B batch, T time, X/Y/Z space, K classes, C channels; primed sizes are the latent's (every axis halved).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcgen.data.grid import PLANE_NAMES, LatentDims

# dimension of each axis in the one-hot view [B, T', 2, X', 2, Y', 2, Z', 2, K]: (latent position, offset in the pair)
_AXIS_DIMS = {"t": (1, 2), "x": (3, 4), "y": (5, 6), "z": (7, 8)}


class ColumnEncoder(nn.Module):
    """``occ [B, T, X, Y, Z]`` (long class ids) → dict of six ``[B, width, ·, ·]`` feature planes."""

    def __init__(self, num_classes: int, dims: LatentDims, num_frames: int, width: int = 64, unseen: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.unseen = unseen  # the id num_classes marks a voxel no frame saw: it adds nothing to its columns
        self.shape = (num_frames, 2 * dims.x, 2 * dims.y, 2 * dims.z)
        if num_frames != 2 * dims.t:
            raise ValueError(f"column encoder: {num_frames} frames do not halve to the latent's T'={dims.t}")
        sizes = dict(zip("txyz", self.shape))
        self.proj = nn.ModuleDict()
        self.norm = nn.ModuleDict()
        for name in PLANE_NAMES:
            voxels = 4 * math.prod(sizes[a] for a in "txyz" if a not in name)  # voxels one pixel collapses
            lin = nn.Linear(num_classes * voxels, width)
            # one voxel is one class: a unit-variance sum over the pixel's voxels whatever its size
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(voxels))
            nn.init.zeros_(lin.bias)
            self.proj[name] = lin
            self.norm[name] = nn.LayerNorm(width)

    def forward(self, occ_BTXYZ: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(occ_BTXYZ.shape[1:]) != self.shape:
            raise ValueError(f"column encoder built for clips of shape {self.shape}, got {tuple(occ_BTXYZ.shape[1:])}")
        b = occ_BTXYZ.shape[0]
        t, x, y, z = self.shape
        k = self.num_classes
        onehot = (F.one_hot(occ_BTXYZ, k + 1)[..., :k] if self.unseen else F.one_hot(occ_BTXYZ, k)).to(
            self.proj["xy"].weight.dtype)
        onehot = onehot.view(b, t // 2, 2, x // 2, 2, y // 2, 2, z // 2, 2, self.num_classes)
        planes = {}
        for name in PLANE_NAMES:
            kept = [_AXIS_DIMS[a][0] for a in name]
            inside = [_AXIS_DIMS[a][1] for a in name] + [d for a in "txyz" if a not in name for d in _AXIS_DIMS[a]]
            column_BHWV = onehot.permute(0, *kept, *inside, 9).reshape(b, onehot.shape[kept[0]],
                                                                         onehot.shape[kept[1]], -1)
            feat_BHWC = F.gelu(self.norm[name](self.proj[name](column_BHWV)))
            planes[name] = feat_BHWC.permute(0, 3, 1, 2)
        return planes
