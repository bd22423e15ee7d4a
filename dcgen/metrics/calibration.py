"""The fixed affine map from a feature network's raw pooled features to its metric features (SPEC §4).

The KID kernel (x·y/d + 1)³ assumes features of order one, and FID is easier to read when a feature network's
features are not all tiny; a network trained on a proxy task gives them whatever scale its weights happen to have.
So every dcgen-trained feature network ends in ``FeatureCalibration``: ``f = (raw - shift) * scale`` with ``shift``
the per-feature mean and ``scale`` one number, 1 / sqrt(mean per-feature variance), both measured on the val split
under the network's final weights (the training loop sets them at each validation). Calibrated features of that
split have zero mean and unit variance on average; one scalar keeps the relative weight of features, so nearly
constant features are not blown up into noise. The map is part of the network's state_dict, so a checkpoint's
features never change after it is saved. A fresh network's map is the identity.
Legend: B batch, D features.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureCalibration(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("shift_D", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, raw_BD: torch.Tensor) -> torch.Tensor:
        return (raw_BD - self.shift_D.to(raw_BD.dtype)) * self.scale.to(raw_BD.dtype)

    @torch.no_grad()
    def set_from_moments(self, sum_D: torch.Tensor, sum_sq_D: torch.Tensor, count: float) -> None:
        """Set the map from sums of raw features and of their squares over ``count`` samples."""
        if count < 2:
            raise ValueError(f"calibrating features needs at least 2 samples, got {count}")
        mean_D = sum_D.double() / count
        var_D = (sum_sq_D.double() / count - mean_D ** 2).clamp_min(0.0) * count / (count - 1)
        spread = float(var_D.mean())
        self.shift_D.copy_(mean_D.to(self.shift_D.dtype))
        self.scale.fill_(1.0 / spread ** 0.5 if spread > 0 else 1.0)
