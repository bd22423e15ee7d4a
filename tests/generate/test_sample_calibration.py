"""Sample calibration (``dcgen train calibrate-samples``, ``dcgen.generate.sample_calibration``): decode offsets
fitted on a DiT's own samples, kept in the DiT checkpoint's metadata and applied by the pipeline to unconditional
scenes and (object classes only) layout-conditioned ones, and only with the VAE they were fitted through."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcgen import checkpoint
from dcgen.cli import app
from dcgen.data.store import SceneStore
from dcgen.generate.conditions import SceneRequest
from dcgen.generate.job import checkpoint_facts
from dcgen.generate.pipeline import GenerationPipeline
from dcgen.data.classes import CLASS_IDS
from dcgen.generate.sample_calibration import (KEY, OBJECT_CLASSES, TOLERANCE, calibrate_samples,
                                               ensure_sample_calibration, fit_object_offsets)
from dcgen.train.calibrate import calibrate_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCENES = 8


def _worst(shares_K: np.ndarray, target_K: np.ndarray) -> float:
    present = target_K > 0
    return float(np.max(np.abs(shares_K[present] / target_K[present] - 1.0)))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, debug_vae, debug_dit, debug_city):
    dit = tmp_path_factory.mktemp("sample-cal") / "dit"
    shutil.copytree(debug_dit, dit)
    record = calibrate_samples(debug_vae, str(dit), debug_city, scenes=SCENES, device="cpu")
    return str(dit), record


def test_offsets_give_unconditional_samples_the_training_class_mix(fitted, debug_vae, debug_city):
    dit, record = fitted
    target = np.asarray(record["target_share"])
    store = SceneStore.open(debug_city)
    occ = store.read(store.indices("train"), ("occupancy",))["occupancy"]  # the whole split's class mix
    assert np.allclose(target, np.bincount(occ.ravel(), minlength=target.size) / occ.size)
    k = target.size
    raw = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu", sample_calibrated=False)
    raw.vae.class_bias.zero_()
    cal = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu")
    seeds = list(range(SCENES))  # seed 0: scene i takes seed i (calibrate_samples)
    requests = [SceneRequest() for _ in seeds]
    before, after = raw.generate(requests, seeds), cal.generate(requests, seeds)
    fit = record
    got = [np.bincount(x.ravel(), minlength=k)[:k] / x.size for x in (before, after)]
    # the debug grid has fewer voxels per scene than the fit keeps: it saw every voxel of these very scenes
    assert _worst(got[1], target) == pytest.approx(fit["share_error_after"], abs=1e-6)
    assert _worst(got[0], target) == pytest.approx(fit["share_error_before"], abs=1e-6)
    assert fit["share_error_after"] <= fit["share_error_before"]
    assert fit["converged"] == (fit["share_error_after"] <= TOLERANCE)


def test_each_scene_decodes_with_its_groups_offsets_whatever_shares_its_micro_batch(fitted, debug_vae, debug_city):
    dit, record = fitted
    store = SceneStore.open(debug_city)
    clips = store.read(store.indices("val")[:2], ("layout", "occupancy"))
    mask = np.zeros(store.grid.size[:2], bool)
    mask[16:, 16:] = True
    requests = [SceneRequest(layout=clips["layout"][0]), SceneRequest(), SceneRequest(command=1),
                SceneRequest(source=clips["occupancy"][1], inpaint_mask=mask), SceneRequest(layout=clips["layout"][1])]
    seeds = [11, 12, 13, 14, 15]
    cal = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu")
    plain = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu", sample_calibrated=False)
    groups = cal.decode_groups(requests)
    assert groups == ["layout", "unconditional", None, None, "layout"]  # an edit keeps the VAE's offsets
    mixed = cal.generate(requests, seeds)
    alone = np.concatenate([cal.generate([r], [s]) for r, s in zip(requests, seeds)])
    assert np.array_equal(alone, mixed)
    # the same latents, decoded with the VAE's offsets moved to the group's
    base = plain.logits(plain.sample_latents(requests, seeds))
    own = plain.vae.class_bias
    offsets = {"unconditional": record["class_bias"], "layout": record["layout"]["class_bias"]}
    for i, group in enumerate(groups):
        shift = torch.zeros_like(own) if group is None else torch.tensor(offsets[group]) - own
        want = (base[i] + shift.view(-1, 1, 1, 1, 1)).argmax(0).to(torch.uint8).numpy()
        assert np.array_equal(mixed[i], want), (i, group)
    assert not np.array_equal(mixed[[0, 1, 4]], plain.generate([requests[i] for i in (0, 1, 4)],
                                                               [seeds[i] for i in (0, 1, 4)]))


def test_layout_offsets_move_the_object_classes_only(fitted, debug_vae):
    _, record = fitted
    layout = record["layout"]
    own = checkpoint.load(debug_vae, kind="vae")[1]["model"]["class_bias"].numpy()
    moved = np.asarray(layout["class_bias"]) - own
    objects = [CLASS_IDS[name] for name in layout["classes"]]
    assert set(layout["classes"]) <= set(OBJECT_CLASSES) and layout["classes"]
    assert np.allclose(np.delete(moved, objects), 0.0, atol=1e-6)
    assert np.allclose(moved[objects], layout["delta"], atol=1e-6)
    assert layout["share_error_after"] <= layout["share_error_before"]


def test_fit_object_offsets_gives_each_object_class_its_share():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40_000, 11, generator=gen)
    logits[:, 0] += 2.0  # mostly free space, as a scene is
    counts = np.array([60, 15, 1, 1, 1, 1, 8, 4, 3, 1, 5], np.float64)
    vae_bias = np.linspace(-0.5, 0.5, 11).astype(np.float32)
    fit = fit_object_offsets(logits + torch.from_numpy(vae_bias), counts, vae_bias)
    bias = np.asarray(fit["class_bias"], np.float32)
    got = np.bincount((logits + torch.from_numpy(bias)).argmax(1).numpy(), minlength=11) / len(logits)
    target = counts / counts.sum()
    for name in OBJECT_CLASSES:
        assert abs(got[CLASS_IDS[name]] - target[CLASS_IDS[name]]) < 5e-4, name
    others = [c for c in range(11) if c not in {CLASS_IDS[n] for n in OBJECT_CLASSES}]
    assert np.array_equal(bias[others], vae_bias[others])
    assert fit["share_error_after"] < 0.02 < fit["share_error_before"]


def test_the_checkpoint_keeps_its_weights_and_the_pipeline_applies_the_offsets_with_that_vae_only(
        fitted, debug_vae, debug_dit, debug_city, tmp_path):
    dit, record = fitted
    assert checkpoint.checkpoint_id(dit) == checkpoint.checkpoint_id(debug_dit)  # weights untouched
    assert checkpoint.read_meta(dit, kind="dit")[KEY]["vae_checkpoint_id"] == checkpoint.checkpoint_id(debug_vae)
    assert record["scenes"] == SCENES and record["split"] == "train"
    pipe = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu")
    own = checkpoint.load(debug_vae, kind="vae")[1]["model"]["class_bias"].numpy()
    assert np.allclose(pipe.vae.class_bias.numpy(), own)  # the VAE's offsets stay for conditioned scenes
    assert np.allclose(pipe.decode_shifts["unconditional"].numpy() + own, record["class_bias"])
    assert np.allclose(pipe.decode_shifts["layout"].numpy() + own, record["layout"]["class_bias"])
    assert pipe.checkpoint_ids["decode_offsets"].startswith("sample-")
    assert pipe.info()["checkpoints"]["decode_offsets"] == pipe.checkpoint_ids["decode_offsets"]
    # the same DiT through another VAE of its latent space (here: calibrated afresh) decodes with that VAE's own
    other = tmp_path / "other-vae"
    calibrate_vae(debug_vae, debug_city, str(other), clips=4)
    through_other = GenerationPipeline.from_checkpoints(str(other), dit, device="cpu")
    assert "decode_offsets" not in through_other.checkpoint_ids and not through_other.decode_shifts
    # a synth job's identity names the offsets, so a job resumed after a calibration cannot mix two decodes
    assert checkpoint_facts(debug_vae, dit)["checkpoints"]["decode_offsets"] == pipe.checkpoint_ids["decode_offsets"]
    assert "decode_offsets" not in checkpoint_facts(debug_vae, debug_dit)["checkpoints"]


def test_ensure_skips_a_fitted_pair_and_completes_one_without_layout_offsets(fitted, debug_vae, debug_city, tmp_path):
    dit, record = fitted
    said = []
    assert ensure_sample_calibration(debug_vae, dit, debug_city, log=said.append) is None
    assert "has one fitted through" in said[0]
    assert checkpoint.read_meta(dit, kind="dit")[KEY] == record
    # a calibration from before the layout offsets, on a DiT that takes a layout: fitted anew, with them
    older = tmp_path / "dit-older"
    shutil.copytree(dit, older)
    checkpoint.update_meta(str(older), kind="dit", **{KEY: {k: v for k, v in record.items() if k != "layout"}})
    again = ensure_sample_calibration(debug_vae, str(older), debug_city, log=said.append, scenes=SCENES,
                                      device="cpu")
    assert again is not None and "layout" in again


def test_a_record_of_the_grouped_format_decodes_alike(fitted, debug_vae, tmp_path):
    """DiTs calibrated before the offsets were recorded flat keep theirs: the same offsets and the same id."""
    dit, record = fitted
    old = tmp_path / "dit-grouped"
    shutil.copytree(dit, old)
    grouped = record | {"class_bias": {"unconditional": record["class_bias"]}}
    checkpoint.update_meta(str(old), kind="dit", **{KEY: grouped})
    new_pipe = GenerationPipeline.from_checkpoints(debug_vae, dit, device="cpu")
    old_pipe = GenerationPipeline.from_checkpoints(debug_vae, str(old), device="cpu")
    for group in ("unconditional", "layout"):
        assert np.array_equal(old_pipe.decode_shifts[group].numpy(), new_pipe.decode_shifts[group].numpy())
    assert old_pipe.checkpoint_ids["decode_offsets"] == new_pipe.checkpoint_ids["decode_offsets"]


def _small_store(path) -> str:
    """One clip of the small preset's grid (not the models')."""
    from dcgen.data.grid import GRIDS
    from dcgen.data.synth_city import generate_block

    store = SceneStore.create(str(path), GRIDS["small"], source="test-city", with_mask=True, capacity=1)
    batch, rows = generate_block(GRIDS["small"], 0, 0, 1, 0.0, store.array_names)
    for row in rows:
        row["split"] = "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


def test_bad_input_is_refused_and_the_checkpoint_left_alone(debug_vae, debug_dit, debug_city, tmp_path):
    dit = tmp_path / "dit"
    shutil.copytree(debug_dit, dit)
    before = (dit / checkpoint.META_FILE).read_bytes()
    small = _small_store(tmp_path / "small.zarr")
    cases = [
        (dict(scenes=0), "--scenes 0: expected a whole number >= 1"),
        (dict(scenes=True), "--scenes True: expected a whole number >= 1"),
        (dict(data=small), r"clips of shape \(16, 64, 64, 8\).*calibrate on the store the models were trained on"),
        (dict(split="test"), "split 'test' has no clips to take the class mix from"),
        (dict(data=str(tmp_path / "missing.zarr")), "missing.zarr"),
        (dict(vae=str(tmp_path / "nothing")), "not a dcgen checkpoint"),
    ]
    for overrides, message in cases:
        args = dict(vae=debug_vae, data=debug_city) | overrides
        with pytest.raises(ValueError, match=message):
            calibrate_samples(args.pop("vae"), str(dit), args.pop("data"), device="cpu", **args)
        assert (dit / checkpoint.META_FILE).read_bytes() == before
    result = CliRunner().invoke(app, ["train", "calibrate-samples", "--vae", debug_vae, "--dit", str(dit), "--data",
                                      debug_city, "--scenes", "0"])
    assert result.exit_code == 2 and "--scenes 0: expected a whole number >= 1" in result.output


def test_the_cli_fits_and_reports(debug_vae, debug_dit, debug_city, tmp_path):
    dit = tmp_path / "dit"
    shutil.copytree(debug_dit, dit)
    result = CliRunner().invoke(app, ["train", "calibrate-samples", "--vae", debug_vae, "--dit", str(dit), "--data",
                                      debug_city, "--scenes", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (f"sample calibration of {dit} through {debug_vae} on 4 unconditional scenes: largest class-share error"
            in " ".join(result.output.split()))
    assert checkpoint.read_meta(dit, kind="dit")[KEY]["scenes"] == 4
