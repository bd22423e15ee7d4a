"""Inpainting and outpainting: the known region ends equal to the source, each step uses the scene's own generator,
the X shift of outpainting, and mask validation."""

from __future__ import annotations

import pytest
import torch

from dcgen.data.grid import PLANE_NAMES
from dcgen.diffusion.inpaint import inpainting, outpainting, shift_x
from dcgen.diffusion.samplers import ddim_sample, ddpm_sample, dpmpp_sample, per_sample_noise
from dcgen.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule.linear()


def _source(layout, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    planes = {n: torch.randn(batch, *layout.dims.plane_shape(n), generator=gen) for n in PLANE_NAMES}
    return layout.pack(planes)


def _half_mask(layout, batch=2):
    mask = torch.zeros(batch, layout.dims.x, layout.dims.y)
    mask[:, :, layout.dims.y // 2:] = 1
    return mask


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample, dpmpp_sample])
def test_known_region_equals_the_source_at_the_end(tiny_dit, sampler):
    layout = tiny_dit.rollout
    source = _source(layout)
    job = inpainting(layout, source, _half_mask(layout))
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = sampler(lambda x, t: tiny_dit(x, t), SCHED, tuple(source.shape), gens, num_steps=5,
                  valid_SS=layout.valid_mask(), inpaint=job)
    known = (job.mask_B1SS == 0).expand_as(source) & layout.valid_mask()
    assert torch.equal(out[known], source[known])
    generated = (job.mask_B1SS == 1).expand_as(source)
    assert not torch.allclose(out[generated], source[generated])


def test_constrain_noises_the_source_with_each_scenes_generator(tiny_dit):
    layout = tiny_dit.rollout
    source = _source(layout)
    job = inpainting(layout, source, _half_mask(layout)[0])
    x = torch.randn(source.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([700, 700])
    out = job.constrain(x, SCHED, t, [torch.Generator().manual_seed(s) for s in (4, 5)])
    noise = per_sample_noise([torch.Generator().manual_seed(s) for s in (4, 5)], tuple(source.shape[1:]))
    m = job.mask_B1SS
    torch.testing.assert_close(out, m * x + (1 - m) * SCHED.q_sample(source, t, noise), atol=0, rtol=0)


def test_outpainting_shifts_along_x_and_generates_the_new_part(tiny_dit):
    layout = tiny_dit.rollout
    d = layout.dims
    source = _source(layout, batch=1)
    job = outpainting(layout, source, shift=4)
    planes, shifted = layout.unpack(source), layout.unpack(job.source_BCSS)
    assert torch.equal(shifted["xy"][:, :, :d.x - 4], planes["xy"][:, :, 4:])
    assert torch.equal(shifted["tx"][:, :, :, :d.x - 4], planes["tx"][:, :, :, 4:])
    assert float(shifted["xz"][:, :, d.x - 4:].abs().sum()) == 0.0
    mask = layout.unpack(job.mask_B1SS.expand(1, d.channels, -1, -1).contiguous())
    assert bool((mask["xy"][0, 0, d.x - 4:] == 1).all()) and bool((mask["xy"][0, 0, :d.x - 4] == 0).all())
    assert bool((mask["yz"] == 1).all()) and bool((mask["tz"] == 1).all())
    back = shift_x(layout, source, -3)
    assert torch.equal(layout.unpack(back)["xy"][:, :, 3:], planes["xy"][:, :, :-3])
    assert outpainting(layout, source).mask_B1SS[0, 0, : d.x // 2].sum() == 0


def test_bad_masks_and_shifts_are_rejected(tiny_dit):
    layout = tiny_dit.rollout
    source = _source(layout)
    d = layout.dims
    mask = _half_mask(layout)
    mask[1] = 0
    with pytest.raises(ValueError, match="mask of sample 1 covers nothing"):
        inpainting(layout, source, mask)
    with pytest.raises(ValueError, match="mask of sample 0 covers the whole scene"):
        inpainting(layout, source, torch.ones(2, d.x, d.y))
    with pytest.raises(ValueError, match="only 0 \\(keep\\) and 1 \\(generate\\)"):
        inpainting(layout, source, _half_mask(layout) * 0.5)
    with pytest.raises(ValueError, match="XY mask must have shape \\[B, 16, 16\\] or \\[16, 16\\]"):
        inpainting(layout, source, torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="mask has 3 samples, the source 2"):
        inpainting(layout, source, torch.ones(3, d.x, d.y))
    with pytest.raises(ValueError, match="must be a rollout \\[B, 16, 20, 20\\]"):
        inpainting(layout, source[:, :4], _half_mask(layout))
    for shift in (0, 16, -16):
        with pytest.raises(ValueError, match=f"0 < \\|shift\\| < X'=16 latent cells, got {shift}"):
            outpainting(layout, source, shift)
