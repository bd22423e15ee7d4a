"""Classifier-free guidance: the equation on ε only, s = 1 is the conditional model exactly, s = 0 unconditional."""

from __future__ import annotations

import pytest
import torch

from dcgen.diffusion.guidance import guide, guided_model_fn


def test_guide_acts_on_eps_only():
    cond = torch.cat([torch.full((1, 2, 3, 3), 2.0), torch.full((1, 2, 3, 3), 0.5)], dim=1)
    uncond = torch.cat([torch.full((1, 2, 3, 3), 1.0), torch.full((1, 2, 3, 3), -0.5)], dim=1)
    out = guide(cond, uncond, 4.0, channels=2)
    assert bool((out[:, :2] == 1.0 + 4.0 * (2.0 - 1.0)).all())
    assert torch.equal(out[:, 2:], cond[:, 2:])


def test_scale_one_is_the_conditional_model_and_skips_the_unconditional_pass(tiny_dit, tiny_cond):
    calls = []

    def model(x, t, cond):
        calls.append(bool(cond))
        return tiny_dit(x, t, cond)

    x = torch.randn(3, 16, 20, 20, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900, 400, 10])
    assert torch.equal(guided_model_fn(model, tiny_cond, 1.0)(x, t), tiny_dit(x, t, tiny_cond))
    assert calls == [True]
    calls.clear()
    guided = guided_model_fn(model, tiny_cond, 4.0)(x, t)
    assert sorted(calls) == [False, True]
    expected = guide(tiny_dit(x, t, tiny_cond), tiny_dit(x, t), 4.0, 16)
    torch.testing.assert_close(guided, expected, atol=0, rtol=0)
    assert not torch.allclose(guided, tiny_dit(x, t, tiny_cond))
    assert torch.equal(guided_model_fn(model, tiny_cond, 0.0)(x, t), tiny_dit(x, t))


def test_unconditional_pass_equals_every_condition_dropped(tiny_dit, tiny_cond):
    x = torch.randn(3, 16, 20, 20, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5, 50, 500])
    drop = {k: torch.ones(3, dtype=torch.bool) for k in tiny_dit.config.conditions}
    torch.testing.assert_close(tiny_dit(x, t, tiny_cond, drop), tiny_dit(x, t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_bad_scale_is_rejected(scale):
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0"):
        guided_model_fn(lambda x, t, c: x, {}, scale)
