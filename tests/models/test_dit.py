"""DiT on the rollout: config, size, exact token dropping, conditions and their validation, a short training run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dcgen.data.grid import LatentDims
from dcgen.diffusion.losses import hybrid_loss, v_loss_weight
from dcgen.diffusion.objective import EpsModel, dropped_conditions
from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
from dcgen.models.dit import CONDITIONS, DEFAULT_SCHEDULE, PREDICTIONS, DiT, DiTConfig
from dcgen.models.rollout import RolloutLayout
from dcgen.presets import PRESETS, get_preset

DEBUG = get_preset("debug").dit


def perturbed_dit(config: DiTConfig = DEBUG, seed: int = 0, scale: float = 0.05) -> DiT:
    """A DiT whose zero-initialised adaLN and head are perturbed so every path reaches the output."""
    model = DiT(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval().requires_grad_(False)


def conditions(config: DiTConfig, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    side = RolloutLayout(config.latent, config.patch).size
    return {
        "command": torch.randint(0, 4, (batch,), generator=gen),
        "trajectory": torch.randn(batch, config.num_frames, 3, generator=gen),
        "layout": (torch.rand(batch, config.num_frames, *config.layout_size, generator=gen) > 0.7).to(torch.uint8),
        "bev": torch.randint(0, config.num_classes, (batch, *config.bev_size), generator=gen),
        "prev_clip": torch.randn(batch, config.latent.channels, side, side, generator=gen),
    }


def inputs(batch: int = 2, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, 20, 20, generator=gen), torch.randint(0, 1000, (batch,), generator=gen)


def test_config_round_trips_through_json():
    for cfg in (p.dit for p in PRESETS.values()):
        assert DiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DEBUG.out_channels == 32 and replace(DEBUG, learn_sigma=False).out_channels == 16


def test_config_validation():
    with pytest.raises(ValueError, match="must be distinct names from"):
        replace(DEBUG, conditions=("command", "weather"))
    with pytest.raises(ValueError, match="width divisible by heads"):
        replace(DEBUG, width=66, heads=4)
    with pytest.raises(ValueError, match="Z'=3"):
        replace(DEBUG, latent=LatentDims(2, 16, 16, 3, 16))


def test_carlasc_has_about_43m_parameters():
    with torch.device("meta"):
        model = DiT(get_preset("carlasc").dit)
    n = sum(p.numel() for p in model.parameters())
    assert 42.5e6 < n < 44.7e6, n
    assert int(model.keep_idx.numel()) == 1444 - 28


def test_every_preset_is_wider_than_a_tokens_input():
    # at width <= patch² · C the final LayerNorm drops a token's scale and mean, which capped ε accuracy (presets.py)
    for name, preset in PRESETS.items():
        cfg = preset.dit
        assert cfg.width > cfg.patch ** 2 * cfg.latent.channels, name


def test_patch_4_rollout_drops_padding_exactly_and_reads_every_condition():
    cfg = replace(get_preset("small").dit, depth=1, width=384, heads=6, patch=4)  # 4×4 tokens, one block
    model = perturbed_dit(cfg)
    side = model.rollout.size
    gen = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 16, side, side, generator=gen), torch.tensor([10, 900])
    cond = conditions(cfg, 2)
    dropped = model(x, t, cond)
    torch.testing.assert_close(dropped, model(x, t, cond, drop_padding=False), atol=1e-5, rtol=1e-5)
    assert float(dropped[:, :, ~model.rollout.valid_mask()].abs().max()) == 0.0
    other = conditions(cfg, 2, seed=5)
    for name in CONDITIONS:
        assert not torch.allclose(dropped, model(x, t, {**cond, name: other[name]}), atol=1e-6), name


def test_fresh_model_predicts_zero():
    """The zero-initialised head outputs 0: ε = 0 for an ε network; v = 0, so ε = √(1 − ᾱ_t) x_t, for a v one."""
    x, t = inputs()
    with torch.no_grad():
        out = DiT(replace(DEBUG, prediction="eps"))(x, t, conditions(DEBUG, 2))
        out_v = EpsModel(DiT(replace(DEBUG, prediction="v")))(x, t, conditions(DEBUG, 2))
    assert out.shape == out_v.shape == (2, 32, 20, 20)
    assert float(out.abs().max()) == 0.0
    sched, valid = NoiseSchedule.linear(), DiT(DEBUG).rollout.valid_mask()
    assert torch.allclose(out_v[:, :16], sched.coef("sqrt_one_minus_alphas_cumprod", t, 4) * x * valid, atol=1e-6)
    assert float(out_v[:, 16:].abs().max()) == 0.0


def test_v_prediction_returns_eps_of_its_velocity():
    """ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂: fed the true velocity, the conversion gives back the true noise and x_0."""
    sched = NoiseSchedule.linear()
    model = DiT(replace(DEBUG, prediction="v"))
    g, valid = torch.Generator().manual_seed(3), model.rollout.valid_mask()
    x0, noise = (torch.randn(4, 16, 20, 20, generator=g) * valid for _ in range(2))
    t = torch.tensor([0, 250, 750, 999])
    x_t = sched.q_sample(x0, t, noise)
    v = sched.coef("sqrt_alphas_cumprod", t, 4) * noise - sched.coef("sqrt_one_minus_alphas_cumprod", t, 4) * x0
    out = EpsModel(model).v_to_eps(torch.cat([v, torch.ones_like(v)], 1), x_t, t)
    assert torch.allclose(out[:, :16], noise, atol=1e-4)
    assert torch.allclose(sched.predict_x0(x_t, t, out[:, :16])[:3], x0[:3], atol=1e-3)
    assert torch.equal(out[:, 16:], torch.ones_like(v))


def test_v_prediction_rejects_timesteps_off_its_table():
    model = DiT(replace(DEBUG, prediction="v"))
    x, _ = inputs()
    for bad in (torch.tensor([0, 1000]), torch.tensor([-1, 3]), torch.tensor([2.5, 3.0])):
        with pytest.raises(ValueError, match=r"whole timesteps in \[0, 999\]"):
            EpsModel(model)(x, bad)


def test_dit_default_schedule_is_the_diffusion_default():
    """models/ knows no schedule, so DiTConfig keeps SPEC's defaults as a plain dict: the same numbers."""
    assert DEFAULT_SCHEDULE == ScheduleConfig().to_dict() == DEBUG.schedule


def test_old_configs_without_prediction_load_as_eps_networks():
    d = DEBUG.to_dict()
    assert DiTConfig.from_dict(d).prediction == DEBUG.prediction == "v"
    del d["prediction"], d["schedule"]
    old = DiTConfig.from_dict(d)
    assert old.prediction == "eps" and old.schedule == ScheduleConfig().to_dict()
    with pytest.raises(ValueError, match="prediction must be one of"):
        replace(DEBUG, prediction="x0")


def test_dropping_padding_tokens_is_exact():
    model = perturbed_dit()
    x, t = inputs()
    cond = conditions(DEBUG, 2)
    dropped = model(x, t, cond)
    kept = model(x, t, cond, drop_padding=False)
    torch.testing.assert_close(dropped, kept, atol=1e-5, rtol=1e-5)
    valid = model.rollout.valid_mask()
    assert float(dropped[:, :, ~valid].abs().max()) == 0.0
    assert float(dropped[:, :, valid].abs().min()) >= 0.0 and float(dropped[:, :, valid].abs().max()) > 0


def test_padding_input_is_ignored():
    model = perturbed_dit()
    x, t = inputs()
    x2 = x.clone()
    x2[:, :, ~model.rollout.valid_mask()] = 7.0
    assert torch.equal(model(x, t), model(x2, t))


@pytest.mark.parametrize("name", CONDITIONS)
def test_each_condition_changes_the_output(name):
    model = perturbed_dit()
    x, t = inputs()
    cond = conditions(DEBUG, 2)
    base = model(x, t, {name: cond[name]})
    uncond = model(x, t)
    other = conditions(DEBUG, 2, seed=5)
    assert not torch.allclose(base, uncond, atol=1e-6)
    assert not torch.allclose(base, model(x, t, {name: other[name]}), atol=1e-6)


def test_missing_condition_equals_dropped_and_drop_is_per_sample():
    model = perturbed_dit()
    x, t = inputs()
    cond = conditions(DEBUG, 2)
    all_dropped = {k: torch.tensor([True, True]) for k in CONDITIONS}
    torch.testing.assert_close(model(x, t, cond, all_dropped), model(x, t), atol=1e-5, rtol=1e-5)
    first_dropped = {k: torch.tensor([True, False]) for k in CONDITIONS}
    mixed = model(x, t, cond, first_dropped)
    torch.testing.assert_close(mixed[:1], model(x[:1], t[:1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1:], model(x[1:], t[1:], {k: v[1:] for k, v in cond.items()}),
                               atol=1e-5, rtol=1e-5)


def test_unconfigured_condition_is_rejected():
    cfg = replace(DEBUG, conditions=("command",))
    model = DiT(cfg)
    x, t = inputs()
    with pytest.raises(ValueError, match="condition \\['trajectory'\\] given but this model was configured"):
        model(x, t, {"trajectory": torch.zeros(2, 4, 3)})
    with pytest.raises(ValueError, match="drop flag \\['bev'\\] given"):
        model(x, t, {}, {"bev": torch.tensor([True, False])})


@pytest.mark.parametrize("name, value, match", [
    ("command", torch.tensor([0, 4]), "ids must lie in \\[0, 3\\], got range \\[0, 4\\]"),
    ("command", torch.tensor([0.0, 1.0]), "must hold integer ids"),
    ("bev", torch.full((2, 32, 32), 11), "ids must lie in \\[0, 10\\]"),
    ("bev", torch.zeros(2, 16, 16, dtype=torch.long), "'bev' has shape \\[2, 16, 16\\], expected \\[2, 32, 32\\]"),
    ("trajectory", torch.full((2, 4, 3), float("nan")), "non-finite"),
    ("trajectory", torch.zeros(2, 16, 3), "expected \\[2, 4, 3\\]"),
    ("layout", torch.full((2, 4, 8, 8), 2.0), "occupancy map in \\[0, 1\\]"),
    ("prev_clip", torch.zeros(2, 16, 18, 18), "expected \\[2, 16, 20, 20\\]"),
])
def test_bad_condition_values_are_rejected(name, value, match):
    model = DiT(DEBUG)
    x, t = inputs()
    with pytest.raises(ValueError, match=match):
        model(x, t, {name: value})


def test_bad_inputs_are_rejected():
    model = DiT(DEBUG)
    x, t = inputs()
    with pytest.raises(ValueError, match="DiT input must have shape \\[B, 16, 20, 20\\]"):
        model(x[:, :8], t)
    with pytest.raises(ValueError, match="timesteps must have shape \\[2\\]"):
        model(x, t[:1])
    with pytest.raises(ValueError, match="drop flags for 'command' must be a bool tensor of shape \\[2\\]"):
        model(x, t, {}, {"command": torch.tensor([1, 0])})


def test_dropped_conditions_flags():
    flags = dropped_conditions(DEBUG.conditions, 1000, 0.1, torch.Generator().manual_seed(0))
    assert set(flags) == set(CONDITIONS)
    rate = torch.stack(list(flags.values())).float().mean().item()
    assert 0.07 < rate < 0.13
    with pytest.raises(ValueError, match="drop probability must be in \\[0, 1\\], got 1.5"):
        dropped_conditions(DEBUG.conditions, 4, 1.5, torch.Generator())


def test_all_conditions_are_dropped_together_at_their_own_rate():
    names, n = ("command", "trajectory", "layout"), 20000

    def all_dropped(flags):
        return torch.stack([flags[k] for k in names]).all(0).float().mean().item()

    spec = dropped_conditions(names, n, 0.1, torch.Generator().manual_seed(0))
    assert all_dropped(spec) < 0.003  # 0.1 ** 3: the unconditional network would see 0.1 % of the samples
    joint = dropped_conditions(names, n, 0.1, torch.Generator().manual_seed(0), all_prob=0.1)
    assert 0.09 < all_dropped(joint) < 0.115  # ~0.1 + 0.9 * 0.001
    assert all(torch.equal(spec[k] & joint[k], spec[k]) for k in names)  # the independent drops are kept
    only = dropped_conditions(names, n, 0.0, torch.Generator().manual_seed(1), all_prob=0.5)
    assert all(torch.equal(only[k], only["command"]) for k in names) and 0.45 < only["command"].float().mean() < 0.55
    assert all(f.all() for f in dropped_conditions(names, 8, 0.0, torch.Generator(), all_prob=1.0).values())
    with pytest.raises(ValueError, match=r"all-conditions drop probability must be in \[0, 1\], got -0.1"):
        dropped_conditions(names, 4, 0.1, torch.Generator(), all_prob=-0.1)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_a_debug_dit_lowers_the_loss(prediction):
    torch.manual_seed(0)
    net = DiT(replace(DEBUG, prediction=prediction))
    model = EpsModel(net)
    schedule = NoiseSchedule.linear()
    gen = torch.Generator().manual_seed(0)
    valid = net.rollout.valid_mask()
    x0 = torch.randn(4, 16, 20, 20, generator=gen) * valid
    cond = conditions(DEBUG, 4)
    t_eval = torch.randint(0, 1000, (4,), generator=gen)
    noise_eval = torch.randn(x0.shape, generator=gen)

    def evaluate():
        with torch.no_grad():
            x_t = schedule.q_sample(x0, t_eval, noise_eval)
            out = model(x_t, t_eval, cond)
            return loss_of(out, x_t, t_eval, noise_eval).mean().item()

    def loss_of(out, x_t, t, noise):
        weight = v_loss_weight(schedule, t) if prediction == "v" else None
        return hybrid_loss(schedule, out, x0, x_t, t, noise, valid, mse_weight_B=weight)["loss"]

    before = evaluate()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(30):
        t = torch.randint(0, 1000, (4,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = schedule.q_sample(x0, t, noise)
        loss = loss_of(model(x_t, t, cond), x_t, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < 0.8 * before, (before, after)
