"""The Expansion & Squeeze (ESS) decoder: six latent planes → per-voxel class logits (SPEC §2, decoder).

1. A conv block lifts every plane C → 64 (one grouped conv over the stacked planes, see ``layers.py``) and a
   (2, 1) transposed conv restores T' → T on tx, ty, tz.
2. Expand every plane to ``(B, 64, T, X', Y', Z')`` by broadcasting and squeeze the six by element-wise product.
3. A per-frame 3D CNN (1×1 conv 64 → 128, two residual blocks) and a stride-2 transposed conv reach the full
   ``(X, Y, Z)`` with 32 channels.
4. 24 Fourier channels of the integer voxel coordinates (t, x, y, z) are concatenated and 5. a 1×1 conv head
   gives the logits.

Memory: the product volume and everything after it is the big tensor. It is built directly in the
``(B, T, C, X', Y', Z')`` layout, so folding frames into the batch is a view, and in the order
(xy·xz·yz) · (tx·ty) · tz so only one full-size intermediate exists. The head's 1×1 conv over the concatenation is
computed as ``W_feat · feat + W_fourier · fourier``; each Fourier channel depends on a single coordinate, so the
second term is four small per-axis tables added by broadcasting and the 24-channel grid is never materialised.
In training the last stretch (transposed conv, LeakyReLU, 1×1 head) is recomputed in backward instead of keeping
its full-resolution ``out_channels``-wide activation (67 MB per small-grid clip at the SPEC widths, as much as
the two residual blocks' inputs together): it is the cheapest part to redo, 2 × 2 × 2 taps against the 3³ convs
before it, about 3 % of the decoder's FLOPs.
Optionally (``lift_norm``, not in SPEC) an InstanceNorm follows the lift. The six factors of the product are each
O(0.1–0.3) at initialisation, so the product volume is ~1e-5 and the lift's output is its bias plus a signal
~1e-5 as large: the residual blocks' norms amplify it, but the first steps learn mostly the scale. The norm hands
the residual blocks a unit-scale volume from the first step, per frame and channel as their own norms do.
For mixed precision prefer bfloat16: the product of six small factors can underflow float16.

Legend: B batch, N = B·T frames, T time, X/Y/Z space (primed = latent), C channels, K classes, F Fourier channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dcgen.data.grid import LatentDims
from dcgen.models.layers import LEAK, ResBlock3d, StackedPlaneConvBlock, fourier_encode, num_fourier_channels

TEMPORAL_PLANES = ("tx", "ty", "tz")


def hexplane_product(planes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Broadcast the six ``[B, C, ·, ·]`` planes (tx/ty/tz at full T) to ``[B, T, C, X, Y, Z]`` and multiply them."""
    xy, xz, yz = planes["xy"], planes["xz"], planes["yz"]
    tx, ty, tz = planes["tx"], planes["ty"], planes["tz"]
    spatial_B1CXYZ = (xy[:, :, :, :, None] * xz[:, :, :, None, :] * yz[:, :, None, :, :]).unsqueeze(1)
    tx_BTCX11 = tx.transpose(1, 2)[:, :, :, :, None, None]
    ty_BTC1Y1 = ty.transpose(1, 2)[:, :, :, None, :, None]
    tz_BTC11Z = tz.transpose(1, 2)[:, :, :, None, None, :]
    return (spatial_B1CXYZ * (tx_BTCX11 * ty_BTC1Y1)) * tz_BTC11Z


class ESSDecoder(nn.Module):
    """``{xy, xz, yz: [B, C, ·, ·], tx, ty, tz: [B, C, T', ·]}`` → ``logits [B, K, T, X, Y, Z]``."""

    def __init__(self, num_classes: int, dims: LatentDims, num_frames: int, width: int = 64, hidden: int = 128,
                 out_channels: int = 32, num_freqs: int = 3, lift_norm: bool = False):
        super().__init__()
        self.num_frames = num_frames
        self.size = (2 * dims.x, 2 * dims.y, 2 * dims.z)
        self.num_freqs = num_freqs
        self.plane_block = StackedPlaneConvBlock(dims.channels, width)
        self.t_upsample = nn.ModuleDict({n: nn.ConvTranspose2d(width, width, (2, 1), stride=(2, 1))
                                         for n in TEMPORAL_PLANES})
        self.lift = nn.Conv3d(width, hidden, 1)
        self.lift_norm = nn.InstanceNorm3d(hidden, affine=True) if lift_norm else nn.Identity()
        self.res1 = ResBlock3d(hidden)
        self.res2 = ResBlock3d(hidden)
        self.upsample = nn.ConvTranspose3d(hidden, out_channels, 2, stride=2)
        self.head_feat = nn.Conv3d(out_channels, num_classes, 1)
        self.head_fourier = nn.Conv3d(num_fourier_channels(4, num_freqs), num_classes, 1, bias=False)
        self.recompute_full_resolution = True  # in training (module doc); False keeps its activations instead

    def fourier_logits(self, device, dtype) -> list[torch.Tensor]:
        """The Fourier half of the head as per-axis terms ``[T, K, 1, 1, 1]``, ``[1, K, X, 1, 1]``, ``[1, K, 1, Y, 1]``,
        ``[1, K, 1, 1, Z]``: each Fourier channel depends on one coordinate only, so ``W_fourier · fourier(t, x, y, z)``
        is the sum of one term per axis, and adding them broadcast never builds the 24-channel grid."""
        weight_KF = self.head_fourier.weight.flatten(1)
        per_axis = 2 * self.num_freqs
        terms = []
        for axis, n in enumerate((self.num_frames, *self.size)):
            feats_NF = fourier_encode(torch.arange(n, device=device).unsqueeze(1), self.num_freqs)
            term_KN = weight_KF[:, axis * per_axis:(axis + 1) * per_axis] @ feats_NF.to(weight_KF.dtype).T
            if axis == 0:
                terms.append(term_KN.T.reshape(n, -1, 1, 1, 1).to(dtype))
            else:
                shape = [1, -1, 1, 1, 1]
                shape[axis + 1] = n
                terms.append(term_KN.reshape(shape).to(dtype))
        return terms

    def _full_resolution(self, h_NCXYZ: torch.Tensor) -> torch.Tensor:
        """Half-resolution features → the feature half of the head's logits at full resolution."""
        return self.head_feat(F.leaky_relu(self.upsample(h_NCXYZ), LEAK, inplace=True))

    def forward(self, planes: dict[str, torch.Tensor]) -> torch.Tensor:
        planes = self.plane_block(planes)
        for name in TEMPORAL_PLANES:
            planes[name] = self.t_upsample[name](planes[name])
        volume_BTCXYZ = hexplane_product(planes)
        b, t = volume_BTCXYZ.shape[:2]

        h_NCXYZ = F.leaky_relu(self.lift_norm(self.lift(volume_BTCXYZ.flatten(0, 1))), LEAK, inplace=True)
        h_NCXYZ = self.res2(self.res1(h_NCXYZ))
        if self.recompute_full_resolution and torch.is_grad_enabled() and h_NCXYZ.requires_grad:
            logits_NKXYZ = checkpoint(self._full_resolution, h_NCXYZ, use_reentrant=False)
        else:
            logits_NKXYZ = self._full_resolution(h_NCXYZ)
        logits_BTKXYZ = logits_NKXYZ.view(b, t, *logits_NKXYZ.shape[1:])
        for term in self.fourier_logits(h_NCXYZ.device, h_NCXYZ.dtype):
            logits_BTKXYZ.add_(term)  # in place is safe: a conv's backward needs its input, not its output
        return logits_BTKXYZ.transpose(1, 2)
