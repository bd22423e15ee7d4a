"""A tiny seeded DiT (the debug preset with every weight perturbed) and its conditions, shared by the sampler,
guidance and inpainting tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dcgen.models.dit import DiT
from dcgen.presets import get_preset

# pinned (not the preset's current depth, width or output parametrisation) so the recorded golden sums stay valid
TINY = replace(get_preset("debug").dit, depth=2, width=64, heads=2, prediction="eps")


@pytest.fixture(scope="module")
def tiny_dit() -> DiT:
    model = DiT(TINY)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_cond() -> dict[str, torch.Tensor]:
    cfg = TINY
    gen = torch.Generator().manual_seed(99)
    return {
        "command": torch.tensor([1, 2, 3]),
        "trajectory": torch.randn(3, cfg.num_frames, 3, generator=gen),
        "layout": (torch.rand(3, cfg.num_frames, *cfg.layout_size, generator=gen) > 0.7).float(),
    }
