"""Inpainting and outpainting at sampling time (SPEC §3).

An XY mask ``m`` at latent resolution (1 = generate, 0 = keep the source) is broadcast to every plane through the
rollout (``RolloutLayout.xy_to_rollout``: a cell of a plane that collapses X or Y is generated if any XY cell it
summarises is). Before every reverse step the known part is replaced by the source noised to the current level,
``x_t = m · x_t + (1 − m) · q_sample(x_source, t)``, with the noise drawn from each scene's own generator; after the
last step the known part is set to the source itself. Outpainting shifts the source latent along X by ``shift``
cells (positive: the scene moves towards −X, as when driving forward) and generates the vacated cells.

Legend: B batch, C latent channels, S rollout side, X/Y latent X'/Y'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dcgen.diffusion.samplers import per_sample_noise
from dcgen.diffusion.schedule import NoiseSchedule
from dcgen.models.rollout import RolloutLayout


@dataclass(frozen=True, eq=False)
class Inpainting:
    """The source rollout and the rollout-space mask (1 = generate) a sampler constrains each step with."""

    source_BCSS: torch.Tensor
    mask_B1SS: torch.Tensor

    def constrain(self, x_BCSS: torch.Tensor, schedule: NoiseSchedule, t_B: torch.Tensor,
                  generators: list[torch.Generator]) -> torch.Tensor:
        noise = per_sample_noise(generators, tuple(x_BCSS.shape[1:]), x_BCSS.device)
        known = schedule.q_sample(self.source_BCSS.to(x_BCSS), t_B, noise)
        m = self.mask_B1SS.to(x_BCSS)
        return m * x_BCSS + (1 - m) * known

    def finish(self, x_BCSS: torch.Tensor) -> torch.Tensor:
        m = self.mask_B1SS.to(x_BCSS)
        return m * x_BCSS + (1 - m) * self.source_BCSS.to(x_BCSS)


def inpainting(layout: RolloutLayout, source_BCSS: torch.Tensor, mask_BXY: torch.Tensor) -> Inpainting:
    """Generate where ``mask_BXY`` (``[B, X', Y']`` or one ``[X', Y']`` for all) is 1, keep the source elsewhere."""
    s, c = layout.size, layout.dims.channels
    if source_BCSS.ndim != 4 or tuple(source_BCSS.shape[1:]) != (c, s, s):
        raise ValueError(f"inpainting source must be a rollout [B, {c}, {s}, {s}], got {list(source_BCSS.shape)}")
    b = source_BCSS.shape[0]
    if mask_BXY.ndim == 2:
        mask_BXY = mask_BXY.expand(b, *mask_BXY.shape)
    xy = (layout.dims.x, layout.dims.y)
    if mask_BXY.ndim != 3 or tuple(mask_BXY.shape[1:]) != xy:
        raise ValueError(f"inpainting XY mask must have shape [B, {xy[0]}, {xy[1]}] or [{xy[0]}, {xy[1]}] "
                         f"(latent resolution), got {list(mask_BXY.shape)}")
    if mask_BXY.shape[0] != b:
        raise ValueError(f"inpainting mask has {mask_BXY.shape[0]} samples, the source {b}")
    m = mask_BXY.float()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("inpainting mask must hold only 0 (keep) and 1 (generate)")
    covered_B = m.flatten(1).sum(1)
    for k in range(b):
        if covered_B[k] == 0:
            raise ValueError(f"inpainting mask of sample {k} covers nothing; expected at least one cell to generate")
        if covered_B[k] == m[k].numel():
            raise ValueError(f"inpainting mask of sample {k} covers the whole scene; use plain sampling instead")
    return Inpainting(source_BCSS, layout.xy_to_rollout(m))


def shift_x(layout: RolloutLayout, source_BCSS: torch.Tensor, shift: int) -> torch.Tensor:
    """The source rollout with its X-indexed planes (xy, xz, tx) moved by ``shift`` cells towards −X; vacated cells
    are zero. Planes without an X axis are kept (the outpainting mask regenerates them)."""
    planes = layout.unpack(source_BCSS)
    for name, dim in (("xy", 2), ("xz", 2), ("tx", 3)):
        plane = planes[name]
        moved = torch.zeros_like(plane)
        n = plane.shape[dim]
        if shift > 0:
            moved.narrow(dim, 0, n - shift).copy_(plane.narrow(dim, shift, n - shift))
        else:
            moved.narrow(dim, -shift, n + shift).copy_(plane.narrow(dim, 0, n + shift))
        planes[name] = moved
    return layout.pack(planes)


def outpainting(layout: RolloutLayout, source_BCSS: torch.Tensor, shift: int | None = None) -> Inpainting:
    """Shift the source along X by ``shift`` latent cells (default half the extent) and generate the new part."""
    x = layout.dims.x
    shift = x // 2 if shift is None else int(shift)
    if not 0 < abs(shift) < x:
        raise ValueError(f"outpainting shift must satisfy 0 < |shift| < X'={x} latent cells, got {shift}")
    shifted = shift_x(layout, source_BCSS, shift)
    mask_BXY = torch.zeros(source_BCSS.shape[0], x, layout.dims.y, device=source_BCSS.device)
    if shift > 0:
        mask_BXY[:, x - shift:] = 1
    else:
        mask_BXY[:, :-shift] = 1
    return inpainting(layout, shifted, mask_BXY)
