"""Decoder fine-tuning (``dcgen train decoder``): the decoder learns on perturbed latents while the encoder, and
with it the latent space every DiT of the original VAE was trained in, stays exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dcgen import checkpoint
from dcgen.cli import app
from dcgen.data.grid import PLANE_NAMES
from dcgen.models.vae import HexPlaneVAE
from dcgen.presets import get_preset
from dcgen.train.vae_loop import VAETrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _planes(vae: HexPlaneVAE, batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(batch, *vae.plane_shapes[n], generator=gen) * (1 + i) for i, n in
            enumerate(PLANE_NAMES)}


def test_perturb_scales_noise_by_each_channels_spread_and_leaves_zero_scale_exact():
    vae = HexPlaneVAE(get_preset("debug").vae)
    planes = _planes(vae)
    same = vae.perturb(planes, 0.0)
    assert all(torch.equal(same[n], planes[n]) for n in PLANE_NAMES)
    a = vae.perturb(planes, 0.5, torch.Generator().manual_seed(1))
    b = vae.perturb(planes, 0.5, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[n], b[n]) for n in PLANE_NAMES)  # one generator, one perturbation
    for i, n in enumerate(PLANE_NAMES):
        step = a[n] - planes[n]
        assert step.abs().max() > 0
        # the level per clip is at most 1, so the noise's spread is at most scale x the plane's spread (x 1.5 for
        # the sampling error of a few hundred draws); planes of larger spread get proportionally larger noise
        assert step.std() <= 1.5 * 0.5 * planes[n].std()
        assert step.std() >= 0.02 * (1 + i)


def test_perturb_leaves_a_reference_frame_vaes_trajectory_slot_exact():
    vae = HexPlaneVAE(get_preset("debug").vae.replace(frame="reference"))
    planes = _planes(vae)
    noisy = vae.perturb(planes, 1.0, torch.Generator().manual_seed(0))
    keep = vae.slot.latent_mask(planes["tz"])
    assert torch.equal(noisy["tz"][:, ~keep], planes["tz"][:, ~keep])
    assert not torch.equal(noisy["tz"][:, keep], planes["tz"][:, keep])


def test_the_cli_defaults_are_the_fine_tunes_own():
    """The CLI writes its defaults as literals (it imports no torch-side module at start-up); they must be
    ``train_decoder``'s, which the pipeline's decoder stage uses."""
    import typer

    from dcgen.train import runs

    command = typer.main.get_command(app).commands["train"].commands["decoder"]
    defaults = {p.name: p.default for p in command.params}
    assert (defaults["latent_noise"], defaults["lr"], defaults["epochs"]) == (runs.DECODER_NOISE, runs.DECODER_LR,
                                                                                runs.DECODER_EPOCHS)


def test_config_needs_the_vae_to_start_from_and_a_sane_noise_level():
    base = {"model": get_preset("debug").vae.to_dict(), "class_weights": [1.0] * 11, "steps_per_epoch": 1}
    with pytest.raises(ValueError, match="frozen encoder needs the trained VAE"):
        VAETrainConfig(**base, freeze_encoder=True)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latent noise must be a finite number >= 0"):
            VAETrainConfig(**base, latent_noise=bad)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, debug_city, debug_vae) -> str:
    """``debug_vae``'s decoder fine-tuned one epoch on perturbed latents by the VAE loop (LocalContext)."""
    from debug_models import train_debug_vae

    out = tmp_path_factory.mktemp("decoder-run")
    return train_debug_vae(debug_city, out, epochs=1, lr=1e-3, init_from=debug_vae, freeze_encoder=True,
                           latent_noise=0.5, latent_space=checkpoint.latent_space_id(debug_vae))


def test_fine_tuning_changes_the_decoder_only_and_records_the_latent_space(debug_vae, fine_tuned):
    _, before = checkpoint.load(debug_vae)
    meta, after = checkpoint.load(fine_tuned)
    before, after = before["model"], after["model"]
    assert before.keys() == after.keys()
    kept = [k for k in before if not k.startswith("decoder.")]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    own = checkpoint.checkpoint_id(fine_tuned)
    assert own != checkpoint.checkpoint_id(debug_vae)
    assert meta["latent_space"] == checkpoint.checkpoint_id(debug_vae)
    assert checkpoint.latent_space_id(fine_tuned) == checkpoint.checkpoint_id(debug_vae)
    assert checkpoint.latent_space_id(debug_vae) == checkpoint.checkpoint_id(debug_vae)
    rows = [json.loads(line) for line in (Path(fine_tuned).parent / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_miou" in r]
    assert val and all(0.0 <= r["val_miou_clean"] <= 1.0 for r in val)


def test_a_dit_of_the_original_latents_decodes_through_the_fine_tuned_decoder(debug_vae, debug_dit, fine_tuned,
                                                                            tmp_path):
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.models.loading import check_checkpoints

    ids = check_checkpoints(fine_tuned, debug_dit)["ids"]
    assert ids["vae"] == checkpoint.checkpoint_id(fine_tuned)
    pipe = GenerationPipeline.from_checkpoints(fine_tuned, debug_dit, device="cpu", micro_batch=2)
    occ = pipe.generate([SceneRequest()], [0], sampler="ddim", steps=2)
    assert occ.shape == (1, *pipe.grid.shape) and occ.max() < pipe.grid.num_classes
    # a decoder whose latent space is another VAE's is refused, naming both
    other = tmp_path / "other"
    shutil.copytree(fine_tuned, other)
    meta_file = other / checkpoint.META_FILE
    meta = json.loads(meta_file.read_text())
    meta["latent_space"] = "vae-1-000000000000"
    meta_file.write_text(json.dumps(meta))
    for load in (lambda: check_checkpoints(other, debug_dit),
                 lambda: GenerationPipeline.from_checkpoints(str(other), debug_dit, device="cpu")):
        with pytest.raises(ValueError, match=r"in the latent space of VAE 'vae-1-000000000000'"):
            load()


def test_train_dit_accepts_the_fine_tuned_vae_for_the_original_latents(debug_latents, fine_tuned, tmp_path):
    from dcgen.train.runs import train_dit

    summary = train_dit(debug_latents, tmp_path / "dit", vae=fine_tuned, conditions="command", preset="debug",
                        dry_run=True)
    assert summary["run"]["vae_checkpoint_id"] == checkpoint.latent_space_id(fine_tuned)


# ---- the driver: bad input is refused before anything is written ---------------------------------------------

runner = CliRunner()


def _decoder(*args: str):
    return runner.invoke(app, ["train", "decoder", *args])


def test_dry_run_resolves_a_frozen_encoder_run_from_the_vae(debug_city, debug_vae, tmp_path):
    out = tmp_path / "dec"
    result = _decoder("--vae", debug_vae, "--data", debug_city, "--out", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)["run"]
    assert run["freeze_encoder"] and run["latent_noise"] == 0.6 and run["epochs"] == 4
    assert run["latent_space"] == checkpoint.checkpoint_id(debug_vae)
    assert run["model"] == checkpoint.read_meta(debug_vae)["config"]
    assert not out.exists()


def test_the_pipelines_decoder_stage_runs_the_measured_epochs_per_preset():
    from dcgen.data.grid import PRESET_NAMES
    from dcgen.presets import get_preset
    from dcgen.train.runs import DECODER_EPOCHS

    assert get_preset("small").decoder_epochs == 6  # measured: val mIoU 66.2 -> 68.9 %, README
    assert all(get_preset(p).decoder_epochs == DECODER_EPOCHS for p in PRESET_NAMES if p != "small")


@pytest.mark.parametrize("args, message", [
    (["--latent-noise", "-1"], "latent noise must be a finite number >= 0"),
    (["--lr", "0"], "learning rate must be positive"),
    (["--epochs", "0"], "epochs, batch size and steps per epoch must be >= 1"),
])
def test_bad_numbers_are_refused_before_anything_is_written(debug_city, debug_vae, tmp_path, args, message):
    out = tmp_path / "dec"
    result = _decoder("--vae", debug_vae, "--data", debug_city, "--out", str(out), *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert not out.exists()


def test_a_store_of_another_grid_or_a_checkpoint_of_another_kind_is_refused(debug_vae, debug_dit, tmp_path):
    from dcgen.data.grid import GRIDS
    from dcgen.data.store import SceneStore
    from dcgen.data.synth_city import generate_block

    small = SceneStore.create(str(tmp_path / "small.zarr"), GRIDS["small"], source="test", capacity=2)
    batch, rows = generate_block(GRIDS["small"], 0, 0, 2, 0.0, small.array_names)
    small.write(0, batch, rows)
    small.finalize()
    out = tmp_path / "dec"
    result = _decoder("--vae", debug_vae, "--data", str(tmp_path / "small.zarr"), "--out", str(out))
    assert result.exit_code != 0 and "does not match the VAE" in result.output, result.output
    result = _decoder("--vae", debug_dit, "--data", str(tmp_path / "small.zarr"), "--out", str(out))
    assert result.exit_code != 0 and "expected a 'vae' checkpoint" in result.output, result.output
    assert not out.exists()


def test_resume_of_a_run_in_another_latent_space_is_refused(debug_city, debug_vae, tmp_path):
    out = tmp_path / "dec"
    (out / "ray" / "vae").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"kind": "vae", "run": {"freeze_encoder": True,
                                                                     "latent_space": "vae-9-000000000000"}}))
    result = _decoder("--vae", debug_vae, "--data", debug_city, "--out", str(out), "--resume")
    assert result.exit_code != 0 and "not a decoder fine-tuning" in result.output, result.output
    assert json.loads((out / "run.json").read_text())["run"]["latent_space"] == "vae-9-000000000000"
