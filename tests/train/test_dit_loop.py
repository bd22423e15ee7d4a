"""DiT training: condition drops, checkpoints (weights, EMA, optimizer, VAE id, conditions), resume on a local
context and on Ray Train (with a worker failure), the ``train dit`` / ``train`` drivers and their errors."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from debug_models import train_debug_dit
from typer.testing import CliRunner

from dcgen import checkpoint
from dcgen.cli import app
from dcgen.data.grid import Grid
from dcgen.data.latent_store import LatentStore
from dcgen.diffusion.objective import EpsModel, diffusion_loss
from dcgen.diffusion.schedule import NoiseSchedule
from dcgen.models.dit import DiT
from dcgen.presets import get_preset
from dcgen.train.pipeline import train_pipeline
from dcgen.train.runs import Scaling, parse_conditions, train_dit

ALL = ("command", "trajectory", "layout", "bev", "prev_clip")


class Spy(torch.nn.Module):
    """Records the drop flags a DiT would get."""

    def __init__(self, config):
        super().__init__()
        self.net = DiT(config)
        self.drops = []

    def forward(self, x, t, cond, drop):
        self.drops.append({k: v.clone() for k, v in drop.items()})
        return self.net(x, t, cond, drop)


def _batch(cfg, b=6):
    s = DiT(cfg).rollout.size
    g = torch.Generator().manual_seed(0)
    return {"latent": torch.randn(b, 16, s, s, generator=g), "prev_latent": torch.randn(b, 16, s, s, generator=g),
            "has_prev": torch.tensor([True, False] * (b // 2)), "command": torch.randint(0, 4, (b,), generator=g),
            "trajectory": torch.randn(b, cfg.num_frames, 3, generator=g),
            "layout": torch.randint(0, 2, (b, cfg.num_frames, *cfg.layout_size), generator=g),
            "bev": torch.randint(0, cfg.num_classes, (b, *cfg.bev_size), generator=g)}


def test_prev_clip_is_dropped_where_there_is_no_previous_clip():
    cfg = get_preset("debug").dit
    spy = Spy(cfg)
    batch = _batch(cfg)
    valid = spy.net.rollout.valid_mask().float()
    loss = diffusion_loss(EpsModel(spy, cfg), NoiseSchedule.linear(), batch, ALL, valid,
                          torch.Generator().manual_seed(1), 0.0)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    drop = spy.drops[-1]
    assert torch.equal(drop["prev_clip"], ~batch["has_prev"])
    assert not any(drop[k].any() for k in ALL[:-1])
    diffusion_loss(EpsModel(spy, cfg), NoiseSchedule.linear(), batch, ALL, valid, torch.Generator().manual_seed(1),
                   1.0)
    assert all(spy.drops[-1][k].all() for k in ALL)


def test_parse_conditions():
    with_prev = SimpleNamespace(has_previous=True, path="x.zarr")
    without = SimpleNamespace(has_previous=False, path="x.zarr")
    assert parse_conditions("command, layout", with_prev) == ("command", "layout")
    assert parse_conditions("auto", with_prev) == ALL
    assert parse_conditions(None, without) == ALL[:-1]
    assert parse_conditions("none", with_prev) == ()
    with pytest.raises(ValueError, match=r"unknown condition\(s\) \['weather'\]"):
        parse_conditions("command,weather", with_prev)
    with pytest.raises(ValueError, match="names a condition twice"):
        parse_conditions("command,command", with_prev)
    with pytest.raises(ValueError, match="has no clip whose previous clip"):
        parse_conditions("prev_clip", without)


def test_local_run_checkpoints_exports_and_resumes(tmp_path, debug_latents):
    out = tmp_path / "run"
    best = train_debug_dit(debug_latents, out, ("command", "layout"), epochs=2)
    store = LatentStore.open(debug_latents)
    meta, state = checkpoint.load(best, kind="dit")
    assert set(state) == {"model", "ema"}
    assert meta["config"]["conditions"] == ["command", "layout"] and meta["conditions"] == ["command", "layout"]
    assert meta["vae_checkpoint_id"] == store.vae_checkpoint_id and Grid.from_dict(meta["grid"]) == store.grid
    assert meta["schedule"]["num_steps"] == 1000
    assert meta["config"]["prediction"] == "v" and meta["config"]["schedule"] == meta["schedule"]
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"])
    ckpts = sorted(out.glob("ckpt-*"))
    assert len(ckpts) == 2
    full_meta, full = checkpoint.load(ckpts[-1], kind="dit")
    assert {"model", "ema", "optimizer", "rng"} <= set(full)
    steps_2 = full_meta["step"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "val_loss" in r] == [0, 1]
    # a new context on the same run directory continues from the latest checkpoint
    train_debug_dit(debug_latents, out, ("command", "layout"), epochs=3)
    last_meta = checkpoint.read_meta(out / "last", kind="dit")
    assert last_meta["epoch"] == 2 and last_meta["step"] == steps_2 + steps_2 // 2
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r] == [0, 1, 2]


@pytest.mark.slow  # two Ray Train fits with an injected worker death: minutes on 2 cores
def test_ray_train_run_survives_a_failure_and_resumes(tmp_path, ray_local, debug_latents, debug_vae):
    out = tmp_path / "dit"
    steps = -(-LatentStore.open(debug_latents).rows("train").size // 8)
    summary = train_dit(debug_latents, out, vae=debug_vae, conditions="command,trajectory", preset="debug",
                        scaling=Scaling(max_failures=1), epochs=2, batch_size=8, fail_at_step=steps + 1)
    assert (out / f".failed-at-{steps + 1}").exists(), "the injected failure did not happen"
    assert summary["metrics"]["step"] == 2 * steps and summary["conditions"] == ["command", "trajectory"]
    meta = checkpoint.read_meta(summary["best"], kind="dit")
    assert meta["config"]["conditions"] == ["command", "trajectory"]
    assert meta["vae_checkpoint_id"] == checkpoint.checkpoint_id(debug_vae)
    with pytest.raises(ValueError, match="pass --resume"):
        train_dit(debug_latents, out, conditions="command,trajectory", preset="debug", epochs=3)
    with pytest.raises(ValueError, match=r"started with a different DiT \([a-z_, ]*conditions[a-z_, ]* differ"):
        train_dit(debug_latents, out, conditions="command", preset="debug", epochs=3, resume=True)
    again = train_dit(debug_latents, out, conditions="command,trajectory", preset="debug", epochs=3, batch_size=8,
                      resume=True)
    assert again["metrics"]["step"] == 3 * steps and again["metrics"]["epoch"] == 2


def test_local_run_trains_under_cpu_bf16(tmp_path, debug_latents, monkeypatch):
    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: True)  # any CI CPU takes the bf16 path
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen.append(out.dtype) if isinstance(m, torch.nn.Linear) else None)
    try:
        best = train_debug_dit(debug_latents, tmp_path / "run", ("command",), epochs=1, cpu_bf16=True)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # training and validation forwards alike
    meta, state = checkpoint.load(best, kind="dit")
    assert meta["train"]["cpu_bf16"] is True and torch.isfinite(torch.tensor(meta["metrics"]["val_loss"]))
    assert all(v.dtype == torch.float32 for v in state["ema"].values() if v.is_floating_point())


def test_cpu_bf16_dit_run_is_refused_on_a_cpu_without_bf16_kernels(tmp_path, debug_latents, monkeypatch):
    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: False)
    with pytest.raises(ValueError, match="--cpu-bf16: this CPU .* has no bf16 kernels"):
        train_dit(debug_latents, tmp_path / "run", preset="debug", cpu_bf16=True)
    assert not (tmp_path / "run").exists()
    # GPU workers autocast on CUDA, whatever the driver's CPU: a dry run passes and records the flag
    run = train_dit(debug_latents, tmp_path / "run", preset="debug", cpu_bf16=True,
                    scaling=Scaling(gpus_per_worker=1.0), dry_run=True)
    assert run["run"]["cpu_bf16"] is True and not (tmp_path / "run").exists()


def test_train_dit_refuses_bad_inputs(tmp_path, debug_latents, debug_dit):
    with pytest.raises(ValueError, match="expected a 'vae' checkpoint"):
        train_dit(debug_latents, tmp_path / "a", vae=debug_dit, preset="debug")
    other_vae = tmp_path / "vae"
    meta, state = checkpoint.load(LatentStore.open(debug_latents).meta["vae_checkpoint"], kind="vae")
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    checkpoint.save(other_vae, kind="vae", config=meta["config"], state=state, step=meta["step"])
    with pytest.raises(ValueError, match="was encoded with VAE"):
        train_dit(debug_latents, tmp_path / "b", vae=str(other_vae), preset="debug")
    with pytest.raises(ValueError, match="do not match the DiT preset 'small'"):
        train_dit(debug_latents, tmp_path / "c", preset="small")
    with pytest.raises(ValueError, match="unknown preset 'huge'; expected one of debug, small, carlasc, occ3d"):
        train_dit(debug_latents, tmp_path / "d", preset="huge")
    with pytest.raises(ValueError, match=r"DiT prediction must be one of \['eps', 'v'\], got 'x0'"):
        train_dit(debug_latents, tmp_path / "e", preset="debug", prediction="x0")
    with pytest.raises(ValueError, match="learning rate must be positive, got 0.0"):  # not the preset's rate
        train_dit(debug_latents, tmp_path / "f", preset="debug", lr=0.0)
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        train_dit(debug_latents, tmp_path / "g", preset="debug", epochs=0)
    assert not any((tmp_path / n).exists() for n in "abcdefg")


def test_a_v_dit_whose_schedule_differs_from_the_runs_is_refused(tmp_path):
    from dataclasses import asdict, replace

    from dcgen.diffusion.schedule import ScheduleConfig
    from dcgen.train.context import LocalContext
    from dcgen.train.dit_loop import DiTTrainConfig
    from dcgen.train.dit_loop import train_dit as train_dit_loop

    model = replace(get_preset("debug").dit, schedule=ScheduleConfig(num_steps=500).to_dict())
    run = DiTTrainConfig(model=model.to_dict(), schedule=ScheduleConfig().to_dict(), steps_per_epoch=1,
                         vae_checkpoint_id="abc", grid={}, out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"the DiT's v -> ε schedule .*'num_steps': 500.* differs from the run's"):
        train_dit_loop(LocalContext(out_dir=tmp_path / "run"), asdict(run))
    assert not (tmp_path / "run").exists()


def test_resume_compares_a_run_saved_before_the_prediction_field_as_an_eps_run(tmp_path):
    """run.json of an older run has no ``prediction``: it resumes as the ε network it is, not as a changed DiT."""
    from dataclasses import replace

    from dcgen.train.run_dir import check_same_dit

    eps = replace(get_preset("debug").dit, prediction="eps").to_dict()
    old = {k: v for k, v in eps.items() if k not in ("prediction", "schedule")}
    (tmp_path / "run.json").write_text(json.dumps({"run": {"model": old, "vae_checkpoint_id": "abc"}}))
    check_same_dit(tmp_path, SimpleNamespace(model=eps, vae_checkpoint_id="abc"))
    with pytest.raises(ValueError, match=r"different DiT \(prediction differ"):
        check_same_dit(tmp_path, SimpleNamespace(model=get_preset("debug").dit.to_dict(), vae_checkpoint_id="abc"))


def test_train_cli_errors_and_skipped_stages(tmp_path, debug_city, debug_vae, debug_latents, debug_dit):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "dit", "--latents", debug_latents, "--cond", "command,weather",
                                 "--preset", "debug", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "error: --cond 'command,weather': unknown condition(s) ['weather']" in \
        result.output
    from dcgen.train.calibrate import is_calibrated

    out = tmp_path / "pipe"
    shutil.copytree(debug_vae, out / "vae" / "best")
    shutil.copytree(debug_latents, out / "latents.zarr")
    shutil.copytree(debug_dit, out / "dit" / "best")
    # the feature networks' stage is another module's; a checkpoint directory in its place is all the skip needs
    checkpoint.save(out / "features" / "best", kind="features", config={}, state={}, step=0)
    # a decoder of another latent space (the VAE was trained again, say) is refused, not skipped nor replaced
    meta, state = checkpoint.load(debug_vae, kind="vae")
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    checkpoint.save(out / "decoder" / "best", kind="vae", config=meta["config"], state=state, step=meta["step"])
    other = checkpoint.checkpoint_id(out / "decoder" / "best")
    result = runner.invoke(app, ["train", "--data", debug_city, "--preset", "debug", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert (f"{out / 'decoder' / 'best'} decodes the latent space of VAE {other!r}, not that of {out / 'vae' / 'best'} "
            f"({checkpoint.checkpoint_id(debug_vae)!r}); remove {out / 'decoder'} to fine-tune again") in \
        " ".join(result.output.split())
    assert checkpoint.checkpoint_id(out / "decoder" / "best") == other  # nothing lost
    # a bad count is refused before any stage, the run directory as it was
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for bad, message in (("-1", "--decoder-epochs -1: expected a whole number of epochs >= 0"),
                         ("1.5", "Invalid value for '--decoder-epochs'")):
        result = runner.invoke(app, ["train", "--data", debug_city, "--preset", "debug", "--out", str(out),
                                     "--decoder-epochs", bad])
        assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    # --decoder-epochs 0 leaves the stage out: generation decodes with the VAE (the decoder there goes unused)
    result = runner.invoke(app, ["train", "--data", debug_city, "--preset", "debug", "--out", str(out),
                                 "--decoder-epochs", "0"])
    assert result.exit_code == 0, result.output
    for stage in ("vae", "dit", "features"):
        assert f"{stage}: {out / stage / 'best'} exists, skipping" in result.output
    # a VAE from before decode calibration was calibrated by the first run, in place: not again
    assert is_calibrated(out / "vae" / "best") and "calibrated" not in result.output
    assert checkpoint.latent_space_id(out / "vae" / "best") == checkpoint.checkpoint_id(debug_vae)
    assert f"encode: {out / 'latents.zarr'} is complete, skipping" in result.output
    assert (f"decoder: left out (--decoder-epochs 0) ({out / 'decoder' / 'best'} is there, unused); generation "
            f"decodes with {out / 'vae' / 'best'}") in result.output
    assert "pipeline done" in result.output and "decoder left out" in result.output
    assert f"generate with --vae {out / 'vae' / 'best'} --dit {out / 'dit' / 'best'}" in result.output
    shutil.rmtree(out / "decoder")
    summary = train_pipeline(debug_city, "debug", out, decoder_epochs=0, log=lambda line: None)
    assert summary["decoder"] is None and summary["sampling_vae"] == str(out / "vae" / "best")
    assert summary["stages"]["decoder"] == {"skipped": True, "reason": "--decoder-epochs 0"}
    assert not (out / "decoder").exists()
    result = runner.invoke(app, ["train", "--data", debug_city, "--preset", "small", "--out", str(out)])
    assert result.exit_code == 2 and "does not match the model preset 'small'" in result.output
    for args in (["train", "--data", debug_city, "--out", str(tmp_path / "new")],
                 ["train", "dit", "--latents", debug_latents, "--out", str(tmp_path / "new-dit")]):
        result = runner.invoke(app, [*args, "--preset", "debug", "--prediction", "x0"])
        assert result.exit_code == 2, result.output
        assert "error: DiT prediction must be one of ['eps', 'v'], got 'x0'" in result.output
    assert not (tmp_path / "new").exists() and not (tmp_path / "new-dit").exists()  # refused before any stage


def test_a_run_directory_on_a_uri_trains_resumes_and_serves_its_checkpoints(tmp_path, ray_local, debug_latents,
                                                                           debug_vae):
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline

    uri = f"file://{tmp_path}/runs/dit"  # object storage through pyarrow, as s3:// and gs:// are
    first = train_dit(debug_latents, uri, vae=debug_vae, conditions="command", preset="debug", epochs=1,
                      batch_size=8)
    assert first["best"] == f"{uri}/best" and first["metrics"]["epoch"] == 0
    local = tmp_path / "runs" / "dit"
    assert {"run.json", "metrics.jsonl", "best", "last", "ray"} <= {p.name for p in local.iterdir()}
    with pytest.raises(ValueError, match="pass --resume"):
        train_dit(debug_latents, uri, vae=debug_vae, conditions="command", preset="debug", epochs=2, batch_size=8)
    again = train_dit(debug_latents, uri, vae=debug_vae, conditions="command", preset="debug", epochs=2,
                      batch_size=8, resume=True)
    assert again["metrics"]["epoch"] == 1
    rows = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["epoch"] for r in rows if "val_loss" in r}) == [0, 1], "the resumed run keeps earlier rows"
    pipe = GenerationPipeline.from_checkpoints(debug_vae, f"{uri}/best", device="cpu")
    assert pipe.generate([SceneRequest(command=1)], [0], steps=2).shape == (1, *pipe.grid.shape)


def test_a_resumed_run_keeps_the_latent_normalisation_it_started_with(tmp_path, debug_latents):
    """A run started with per-channel statistics (before per-plane ones) resumes in that latent space; a new run
    standardises per plane."""
    from dcgen.diffusion.latent_norm import LatentNorm, PlaneLatentNorm, norm_from_dict

    fresh = train_dit(debug_latents, tmp_path / "new", preset="debug", dry_run=True)
    assert isinstance(norm_from_dict(fresh["run"]["model"]["latent_norm"]), PlaneLatentNorm)
    channel = train_dit(debug_latents, tmp_path / "new", preset="debug", latent_norm="channel", dry_run=True)
    assert isinstance(norm_from_dict(channel["run"]["model"]["latent_norm"]), LatentNorm)
    with pytest.raises(ValueError, match="latent normalisation 'pixel': expected one of plane, channel"):
        train_dit(debug_latents, tmp_path / "new", preset="debug", latent_norm="pixel", dry_run=True)
    out = tmp_path / "old"
    out.mkdir()
    per_channel = json.loads(json.dumps(  # as run.json holds it
        LatentNorm.from_statistics([0.0] * 16, [1.0] * 16, [-3.0] * 16, [3.0] * 16).to_dict()))
    saved = {**fresh["run"], "model": {**fresh["run"]["model"], "latent_norm": per_channel}}
    (out / "run.json").write_text(json.dumps({"kind": "dit", "run": saved}))
    resumed = train_dit(debug_latents, out, preset="debug", resume=True, dry_run=True)
    assert resumed["run"]["model"]["latent_norm"] == per_channel


def test_all_conditions_drop_defaults_on_for_new_runs_and_a_resumed_run_keeps_its_own(tmp_path, debug_latents):
    fresh = train_dit(debug_latents, tmp_path / "new", preset="debug", dry_run=True)
    assert fresh["run"]["cond_drop_all"] == 0.1
    out = tmp_path / "old"
    out.mkdir()
    older = {k: v for k, v in fresh["run"].items() if k != "cond_drop_all"}  # run.json of a run before the option
    (out / "run.json").write_text(json.dumps({"kind": "dit", "run": older}))
    assert train_dit(debug_latents, out, preset="debug", resume=True, dry_run=True)["run"]["cond_drop_all"] == 0.0
    chosen = train_dit(debug_latents, out, preset="debug", resume=True, cond_drop_all=0.2, dry_run=True)
    assert chosen["run"]["cond_drop_all"] == 0.2
    with pytest.raises(ValueError, match=r"all-conditions dropout must be in \[0, 1\], got 1.5"):
        train_dit(debug_latents, tmp_path / "bad", preset="debug", cond_drop_all=1.5, dry_run=True)
    assert not (tmp_path / "bad").exists()
