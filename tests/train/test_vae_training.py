"""VAE training acceptance: the loop on a LocalContext (resume, schedule, deadline, bad checkpoints) and
``train_vae`` on Ray Train (2 workers, a worker killed mid-run and restarted from the last checkpoint, ``--resume``
with more epochs), plus every user error the driver must catch before a worker starts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dcgen import checkpoint
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import generate_block
from dcgen.train.context import LocalContext
from dcgen.train.runs import train_vae
from dcgen.train.vae_loop import VAETrainConfig, lr_factor, steps_per_epoch
from dcgen.train.vae_loop import train_vae as vae_loop


def make_store(path: Path, preset: str = "debug", num_clips: int = 12, val: tuple[int, ...] = (3, 7, 10, 11)) -> str:
    """A synthetic-city scene store with the clips at ``val`` in the val split and the rest in train."""
    grid = GRIDS[preset]
    store = SceneStore.create(str(path), grid, source="test-city", with_mask=True, capacity=num_clips)
    batch, rows = generate_block(grid, 0, 0, num_clips, 0.0, store.array_names)
    for row in rows:
        row["split"] = "val" if row["index"] in val else "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    return make_store(tmp_path_factory.mktemp("vae-train") / "city.zarr")


def local_run(store: str, out: Path, epochs: int, **overrides) -> dict:
    """The VAE loop on a LocalContext (no Ray) with debug widths, batch 4; returns its run dict."""
    from dcgen.presets import get_preset
    from dcgen.train.vae_losses import class_weights

    s = SceneStore.open(store)
    run = VAETrainConfig(model=get_preset("debug").vae.to_dict(),
                         class_weights=[float(w) for w in class_weights(s.class_histogram("train"))],
                         steps_per_epoch=steps_per_epoch(s.indices("train").size, 4, 1), epochs=epochs,
                         batch_size=4, report_every=1, out_dir=str(out))
    return asdict(run) | overrides


def rows(run_dir: Path, key: str = "val_miou") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


# ---- schedule --------------------------------------------------------------------------------------------

def test_lr_factor_steps_down_at_the_milestones():
    got = [lr_factor(s, 10, 0.5) for s in range(11)]
    assert got == [1, 1, 1, 1, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125]
    # a longer run (resumed with more epochs) has not reached its first milestone at the same step
    assert lr_factor(6, 20, 0.5) == 1


def test_lr_factor_warms_up_linearly_then_follows_the_milestones():
    got = [lr_factor(s, 10, 0.5, warmup_steps=3) for s in range(7)]
    assert got == [0.25, 0.5, 0.75, 1, 1, 0.5, 0.25]
    assert lr_factor(0, 10, 0.5) == lr_factor(0, 10, 0.5, warmup_steps=0) == 1


def test_lr_factor_takes_a_milestone_at_its_share_of_the_deadline_time():
    # 100 planned steps, stopped early by a deadline: at 10 steps the steps alone reach no milestone
    assert lr_factor(10, 100, 0.5, time_fraction=0.0) == 1
    assert [lr_factor(10, 100, 0.5, time_fraction=f) for f in (0.49, 0.5, 0.65, 0.95)] == [1, 0.5, 0.25, 0.03125]
    # whichever comes first, the steps or the clock
    assert lr_factor(60, 100, 0.5, time_fraction=0.1) == 0.25


def test_loop_steps_its_rate_down_on_the_deadline_clock(city, tmp_path, monkeypatch):
    """A run its deadline stops long before its planned steps still takes the schedule's milestones, at their shares
    of the deadline's time (a fake clock: 1 s per reading, so the 30-s deadline comes after ~10 steps of 100)."""
    import types

    from dcgen.train import vae_loop as loop_module

    now = [1000.0]

    def fake_time():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(time=fake_time))
    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    result = vae_loop(ctx, local_run(city, tmp_path, epochs=50, max_minutes=0.5))
    assert 3 <= result["step"] < 20  # stopped by the deadline
    lrs = [r["lr"] for r in rows(tmp_path, "lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] <= 1e-3 * 0.7 ** 3  # the steps alone (< 20 of 100) would still be at the full rate


def test_read_only_batches_become_tensors_without_a_warning():
    import warnings

    import numpy as np

    from dcgen.train.context import to_torch_batch

    mask = np.ones((1, 2, 3), dtype=bool)
    mask.flags.writeable = False  # as Ray Data hands out its Arrow-backed arrays
    occ = np.full((1, 2, 3), 3, dtype=np.uint8)
    occ.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_torch_batch({"occupancy": occ, "mask": mask}, torch.device("cpu"))
    assert out["mask"].dtype == torch.bool and out["mask"].all()
    assert out["occupancy"].dtype == torch.int64 and int(out["occupancy"].max()) == 3


def test_config_rejects_bad_numbers():
    with pytest.raises(ValueError, match="epochs, batch size"):
        VAETrainConfig(model={}, class_weights=[1.0], steps_per_epoch=1, epochs=0)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        VAETrainConfig(model={}, class_weights=[1.0], steps_per_epoch=1, max_minutes=0)
    with pytest.raises(ValueError, match="warm-up steps must be >= 0, got -1"):
        VAETrainConfig(model={}, class_weights=[1.0], steps_per_epoch=1, warmup_steps=-1)


# ---- the loop without Ray ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_loop_resumes_from_its_checkpoint_with_more_epochs(city, tmp_path):
    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    first = vae_loop(ctx, local_run(city, tmp_path, epochs=1))
    per_epoch = steps_per_epoch(8, 4, 1)
    assert first["step"] == per_epoch and 0.0 <= first["val_miou"] <= 1.0
    assert (tmp_path / "best" / "state.pt").is_file() and (tmp_path / "last" / "state.pt").is_file()
    meta, state = checkpoint.load(tmp_path / "last", kind="vae")
    assert set(state) == {"model"} and meta["epoch"] == 0  # user checkpoints hold weights only

    again = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    second = vae_loop(again, local_run(city, tmp_path, epochs=2))
    assert second["step"] == 2 * per_epoch and second["epoch"] == 1
    assert [r["epoch"] for r in rows(tmp_path)] == [0, 1]
    # the second epoch ran at the full rate: the 2-epoch schedule's first milestone is at its 50 % step
    lrs = [r["lr"] for r in rows(tmp_path, "lr")]
    assert lrs[per_epoch] == pytest.approx(1e-3 * lr_factor(per_epoch + 1, 2 * per_epoch, 0.7))


def test_loop_stops_at_the_deadline_and_checkpoints(city, tmp_path):
    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    result = vae_loop(ctx, local_run(city, tmp_path, epochs=50, max_minutes=1e-6))
    # the deadline has passed before the first step: no step, but the run still ends validated and saved
    assert result["step"] == 0 and result["partial_epoch"] is True and result["epoch"] == 0
    assert checkpoint.read_meta(tmp_path / "last", kind="vae")["step"] == 0


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Run as on a CPU with bf16 kernels, so the bf16 paths are exercised on any CI CPU (on one without, they are
    only slower)."""
    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: True)


def test_cpu_bf16_autocasts_on_cpu_only_when_asked(bf16_cpu):
    from dcgen.train.context import autocast

    conv, x = torch.nn.Conv3d(2, 2, 3), torch.randn(1, 2, 4, 4, 4)
    with autocast(torch.device("cpu"), amp=True, cpu_bf16=False):
        assert conv(x).dtype == torch.float32  # amp alone is for CUDA
    with autocast(torch.device("cpu"), amp=True, cpu_bf16=True):
        assert conv(x).dtype == torch.bfloat16


def test_cpu_bf16_is_refused_on_a_cpu_without_bf16_kernels_before_anything_is_written(city, tmp_path, monkeypatch):
    from dcgen.train.context import autocast
    from dcgen.train.pipeline import train_pipeline
    from dcgen.train.runs import Scaling

    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: False)
    with pytest.raises(ValueError, match="--cpu-bf16: this CPU .* has no bf16 kernels .*leave --cpu-bf16 out"):
        autocast(torch.device("cpu"), amp=True, cpu_bf16=True)
    with autocast(torch.device("cpu"), amp=True, cpu_bf16=False):  # float32 is not affected
        pass
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="has no bf16 kernels"):
        train_vae(city, "debug", out, cpu_bf16=True)
    with pytest.raises(ValueError, match="has no bf16 kernels"):
        train_pipeline(city, "debug", out, cpu_bf16=True)
    assert not out.exists()
    # GPU workers never autocast on their CPU: the driver's CPU is no reason to refuse them
    with pytest.raises(ValueError, match="learning rate must be positive"):
        train_vae(city, "debug", out, cpu_bf16=True, lr=0.0, scaling=Scaling(gpus_per_worker=1.0))


def test_zero_counts_and_learning_rates_are_refused_not_read_as_the_presets(city, tmp_path):
    from dcgen.train.pipeline import train_pipeline
    from dcgen.train.runs import train_features

    out = tmp_path / "run"
    with pytest.raises(ValueError, match="epochs, batch size and steps per epoch must be >= 1, got 0"):
        train_vae(city, "debug", out, epochs=0)
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        train_vae(city, "debug", out, batch_size=0)
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        train_features(city, out, epochs=0)
    for lrs in ({"vae_lr": 0.0}, {"dit_lr": -1e-4}):  # a DiT rate the pipeline would only meet after the VAE
        with pytest.raises(ValueError, match=r"--(vae|dit)-lr .*: the learning rate must be positive"):
            train_pipeline(city, "debug", out, **lrs)
    for bad in (-1, 1.5, 2.0, "2", True):  # the decoder stage comes after the VAE's and the DiT's hours
        with pytest.raises(ValueError, match=rf"--decoder-epochs {bad!r}: expected a whole number of epochs >= 0 "
                                             r"\(0 leaves the decoder stage out\)"):
            train_pipeline(city, "debug", out, decoder_epochs=bad)
    assert not out.exists()


def test_loop_trains_under_cpu_bf16(city, tmp_path, bf16_cpu):
    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    result = vae_loop(ctx, local_run(city, tmp_path, epochs=1, cpu_bf16=True))
    assert result["step"] == steps_per_epoch(8, 4, 1) and 0.0 <= result["val_miou"] <= 1.0
    losses = [r["train_total"] for r in rows(tmp_path, "train_total")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((tmp_path / "last" / "meta.json").read_text())["train"]["cpu_bf16"] is True


def test_loop_rejects_a_truncated_checkpoint(city, tmp_path):
    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    vae_loop(ctx, local_run(city, tmp_path, epochs=1))
    latest = ctx.latest_checkpoint()
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupted or unreadable checkpoint weights"):
        vae_loop(LocalContext(out_dir=tmp_path, store_path=city), local_run(city, tmp_path, epochs=2))


def test_loop_rejects_a_checkpoint_of_another_vae(city, tmp_path):
    from dcgen.presets import get_preset

    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    vae_loop(ctx, local_run(city, tmp_path, epochs=1))
    other = get_preset("small").vae.to_dict()
    with pytest.raises(ValueError, match="checkpoint is of a different VAE than this run.*num_frames"):
        vae_loop(LocalContext(out_dir=tmp_path, store_path=city), local_run(city, tmp_path, epochs=2, model=other))


def test_load_vae_rejects_truncated_weights(city, tmp_path):
    from dcgen.models.loading import load_vae

    ctx = LocalContext(out_dir=tmp_path, store_path=city, arrays=("occupancy", "mask"))
    vae_loop(ctx, local_run(city, tmp_path, epochs=1))
    state = tmp_path / "best" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupted or unreadable"):
        load_vae(tmp_path / "best")


# ---- driver errors (no Ray needed: all raised before a worker starts) ---------------------------------------

def fake_run(out: Path, preset: str = "debug", **model_changes) -> Path:
    """A run directory as a previous ``train_vae`` leaves it: Ray's folder, run.json and a sentinel file."""
    from dcgen.presets import get_preset

    (out / "ray" / "vae").mkdir(parents=True)
    model = get_preset(preset).vae.replace(**model_changes).to_dict()
    (out / "run.json").write_text(json.dumps({"kind": "vae", "run": {"model": model, "extra": {"preset": preset}}}))
    (out / "keep.txt").write_text("precious")
    return out


def test_existing_run_needs_resume_or_overwrite(city, tmp_path):
    out = fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match="a training run is already there; pass --resume .* or --overwrite"):
        train_vae(city, "debug", out)
    assert (out / "keep.txt").read_text() == "precious"


def test_resume_without_a_run_is_an_error(city, tmp_path):
    with pytest.raises(ValueError, match="--resume given but there is no run to resume"):
        train_vae(city, "debug", tmp_path / "nothing", resume=True)


def test_resume_with_another_preset_or_network_is_an_error(city, tmp_path):
    out = fake_run(tmp_path / "run", decoder="query")
    with pytest.raises(ValueError, match="started with preset 'debug' and a different VAE \\(decoder differ\\)"):
        train_vae(city, "debug", out, resume=True)
    assert (out / "keep.txt").read_text() == "precious"


def test_resume_from_a_truncated_ray_checkpoint_is_an_error_before_any_worker(city, tmp_path):
    from dcgen.presets import get_preset

    out = fake_run(tmp_path / "run")
    model = get_preset("debug").vae
    for name in ("checkpoint_2026-01-01_00-00-00.000001", "checkpoint_2026-01-01_00-00-09.000001"):
        checkpoint.save(out / "ray" / "vae" / name, kind="vae", config=model.to_dict(), state={"w": torch.ones(99)},
                        step=1)
    newest = out / "ray" / "vae" / "checkpoint_2026-01-01_00-00-09.000001" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:64])
    with pytest.raises(ValueError, match="checkpoint_2026-01-01_00-00-09.000001/state.pt: corrupted or unreadable"):
        train_vae(city, "debug", out, resume=True)


def test_store_grid_must_match_the_preset_and_nothing_is_overwritten(city, tmp_path):
    out = fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"store grid T=4 XYZ=\[32, 32, 4\] K=11 does not match the model preset "
                                         r"'small' \(T=16 XYZ=\[64, 64, 8\]"):
        train_vae(city, "small", out, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious" and (out / "ray" / "vae").is_dir()


def test_empty_val_split_is_an_error(tmp_path):
    store = make_store(tmp_path / "no-val.zarr", num_clips=4, val=())
    with pytest.raises(ValueError, match=r"needs clips in both the train and val splits \(has 4 train, 0 val\)"):
        train_vae(store, "debug", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_preset_is_an_error(city, tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        train_vae(city, "huge", tmp_path / "run")


# ---- Ray Train ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_survive_a_killed_worker_then_resume_with_more_epochs(ray_local, city, tmp_path):
    from dcgen.train.runs import Scaling

    out = tmp_path / "run"
    per_epoch = steps_per_epoch(8, 2, 2)  # 8 train clips over 2 workers, batch 2 -> 2 steps per epoch
    kill_at = per_epoch + 1  # inside epoch 1, after epoch 0's checkpoint
    two = Scaling(workers=2, cpus_per_worker=1.0, max_failures=1)
    summary = train_vae(city, "debug", out, scaling=two, epochs=2, batch_size=2, report_every=1,
                        fail_at_step=kill_at)
    assert (out / f".failed-at-{kill_at}").exists()  # rank 0 really died there
    assert summary["metrics"]["step"] == 2 * per_epoch
    epochs = [r["epoch"] for r in rows(out)]
    assert epochs == [0, 1]  # restarted from epoch 0's checkpoint, not from scratch
    train_steps = [r["step"] for r in rows(out, "train_total")]
    assert train_steps == [1, 2, 3, 3, 4]  # step 3 was logged by the killed attempt and again after the restart
    assert checkpoint.read_meta(summary["best"], kind="vae")["config"]["num_frames"] == GRIDS["debug"].num_frames
    assert any((out / "ray" / "vae").glob("checkpoint_*"))

    more = train_vae(city, "debug", out, scaling=two, epochs=3, batch_size=2, report_every=100, resume=True)
    assert more["metrics"]["step"] == 3 * per_epoch and more["metrics"]["epoch"] == 2
    assert [r["epoch"] for r in rows(out)] == [0, 1, 2]
    assert checkpoint.read_meta(out / "last", kind="vae")["step"] == 3 * per_epoch


def test_cli_reports_user_errors_on_one_line(city, tmp_path):
    from typer.testing import CliRunner

    from dcgen.cli import app

    res = CliRunner().invoke(app, ["train", "vae", "--data", city, "--preset", "small", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "does not match the model preset 'small'" in res.output


def test_bad_failure_budget_and_report_interval_are_errors(city, tmp_path):
    from dcgen.train.runs import Scaling

    with pytest.raises(ValueError, match="--max-failures must be >= 0 \\(or -1 for unlimited\\), got -2"):
        train_vae(city, "debug", tmp_path / "run", scaling=Scaling(max_failures=-2))
    with pytest.raises(ValueError, match="--report-every must be >= 1, got 0"):
        train_vae(city, "debug", tmp_path / "run", report_every=0)


def test_bad_learning_rate_warmup_or_deadline_is_an_error_before_anything_is_written(city, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="projection='maxpool', expected one of projection, avgpool, column"):
        train_vae(city, "debug", out, projection="maxpool")
    with pytest.raises(ValueError, match="frame='world', expected one of ego, reference"):
        train_vae(city, "debug", out, frame="world")
    with pytest.raises(ValueError, match="learning rate must be positive, got 0.0"):
        train_vae(city, "debug", out, lr=0.0)
    with pytest.raises(ValueError, match="warm-up steps must be >= 0, got -5"):
        train_vae(city, "debug", out, warmup_steps=-5)
    assert not out.exists()
    # an existing run is not deleted by --overwrite when the new run's numbers are bad
    (out / "ray" / "vae").mkdir(parents=True)
    (out / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        train_vae(city, "debug", out, overwrite=True, max_minutes=0)
    assert (out / "run.json").read_text() == "{}"
