"""Decode calibration (``dcgen train calibrate``, ``dcgen.train.calibrate``): per-class logit offsets that give a
VAE's reconstructions the training split's class mix, kept in the model, the latent space unchanged."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcgen import checkpoint
from dcgen.cli import app
from dcgen.data.store import SceneStore
from dcgen.models.loading import check_checkpoints, load_vae
from dcgen.train.calibrate import calibrate_vae, fit_class_bias, is_calibrated

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _shares(logits_NK: torch.Tensor, bias_K) -> np.ndarray:
    pred = (logits_NK + torch.as_tensor(bias_K)).argmax(1)
    return np.bincount(pred.numpy(), minlength=logits_NK.shape[1]) / pred.numel()


def test_fit_gives_each_class_its_share_with_free_fixed_at_zero():
    g = torch.Generator().manual_seed(0)
    # logits that over-predict classes 2 and 3 (as a class-weighted loss does), class 4 never in the target
    logits = torch.randn(20000, 5, generator=g) + torch.tensor([1.0, 0.5, 0.8, 0.6, -3.0])
    target = np.array([0.55, 0.3, 0.1, 0.05, 0.0])
    assert np.abs(_shares(logits, np.zeros(5))[:4] / target[:4] - 1).max() > 0.3
    bias, fit = fit_class_bias(logits, target * 1000)  # counts or shares alike
    got = _shares(logits, bias)
    assert fit["converged"] and fit["share_error_after"] <= 0.01 < fit["share_error_before"]
    assert np.abs(got[:4] / target[:4] - 1).max() <= 0.01
    assert bias[0] == 0.0  # the free class is the reference
    assert got[4] < 1e-3  # a class absent from the target is not fitted and stays (almost) never decoded
    again, refit = fit_class_bias(logits + torch.as_tensor(bias), target)  # already calibrated: nothing to move
    assert refit["iterations"] == 0 and np.all(again == 0)


def test_fit_recovers_the_log_weights_of_a_weighted_posterior():
    """Logits of a posterior multiplied by weights w (a weighted CE's optimum): the fitted offsets undo log w."""
    g = torch.Generator().manual_seed(1)
    prior = torch.tensor([0.6, 0.25, 0.1, 0.05])
    log_p = torch.log_softmax(2.0 * torch.randn(40000, 4, generator=g) + prior.log(), dim=1)
    labels = torch.multinomial(log_p.exp(), 1, generator=g).squeeze(1)  # a world in which p is the truth
    w = torch.tensor([1.0, 2.0, 6.0, 12.0])
    target = np.bincount(labels.numpy(), minlength=4)
    bias, _ = fit_class_bias(log_p + w.log(), target)
    uncal = _shares(log_p + w.log(), np.zeros(4))
    assert uncal[3] > 1.5 * target[3] / target.sum()  # the weighted argmax over-paints the heavy class
    # the argmax of p (the Bayes decision) is not share-matched either; the fit lands near -log w, not on it
    assert np.corrcoef(bias, -w.log().numpy())[0, 1] > 0.95


@pytest.mark.parametrize("logits, target, message", [
    (torch.zeros(10, 3), [1, 1], r"logits of shape \(10, 3\) and 2 class targets"),
    (torch.zeros(0, 2), [1, 1], r"expected \[N > 0, 2\] logits"),
    (torch.zeros(10, 2), [1, -1], "must be finite, non-negative and not all zero"),
    (torch.zeros(10, 2), [0, 0], "must be finite, non-negative and not all zero"),
    (torch.zeros(10, 2), [1, float("nan")], "must be finite, non-negative and not all zero"),
])
def test_fit_refuses_bad_logits_or_targets(logits, target, message):
    with pytest.raises(ValueError, match=message):
        fit_class_bias(logits, target)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, debug_vae, debug_city):
    out = tmp_path_factory.mktemp("calibrated") / "vae"
    record = calibrate_vae(debug_vae, debug_city, str(out), clips=8)
    return out, record


def test_calibrated_reconstructions_have_the_training_class_mix(debug_city, debug_vae, calibrated):
    out, record = calibrated
    store = SceneStore.open(debug_city)
    batch = store.read(store.indices("train")[:8], ("occupancy", "trajectory", "mask"))
    occ = torch.from_numpy(batch["occupancy"].astype(np.int64))
    valid = torch.from_numpy(batch["mask"])
    target = np.bincount(occ[valid].numpy(), minlength=11) / valid.sum().item()
    assert np.allclose(record["target_share"], target)

    def decoded_shares(path) -> np.ndarray:
        model = load_vae(path, "cpu").model
        with torch.no_grad():
            pred = model(occ, sample=False)[0].argmax(1)
        return np.bincount(pred[valid].numpy(), minlength=11) / valid.sum().item()

    present = target > 0
    before = np.abs(decoded_shares(debug_vae)[present] / target[present] - 1).max()
    after = np.abs(decoded_shares(out)[present] / target[present] - 1).max()
    # the debug grid's clips have fewer voxels than a clip's sample: the fit saw every voxel of these 8 clips
    assert after <= 0.01 < before and record["converged"]
    assert record["share_error_after"] == pytest.approx(after, abs=1e-6)
    assert is_calibrated(out) and not is_calibrated(debug_vae)


def test_calibration_keeps_the_latent_space_and_the_dit_decodes_through_it(debug_vae, debug_dit, calibrated):
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline

    out, record = calibrated
    assert checkpoint.checkpoint_id(out) != checkpoint.checkpoint_id(debug_vae)  # other weights: another id
    assert checkpoint.latent_space_id(out) == checkpoint.checkpoint_id(debug_vae)
    assert record["from_checkpoint"] == checkpoint.checkpoint_id(debug_vae)
    check_checkpoints(out, debug_dit)
    source, cal = load_vae(debug_vae, "cpu").model, load_vae(out, "cpu").model
    assert torch.equal(cal.class_bias, torch.tensor(record["class_bias"]))
    for name, p in source.state_dict().items():  # only the offsets differ
        if name != "class_bias":
            assert torch.equal(p, cal.state_dict()[name]), name
    pipe = GenerationPipeline.from_checkpoints(str(out), debug_dit, device="cpu")
    assert torch.equal(pipe.vae.class_bias, torch.tensor(record["class_bias"]))
    raw = GenerationPipeline.from_checkpoints(debug_vae, debug_dit, device="cpu")
    assert pipe.generate([SceneRequest()], [0], steps=2).shape == raw.generate([SceneRequest()], [0], steps=2).shape


def test_offsets_apply_outside_training_only(calibrated):
    out, _ = calibrated
    model = load_vae(out, "cpu").model
    occ = torch.zeros(1, *model.config.shape, dtype=torch.long)
    with torch.no_grad():
        mu, _ = model.encode(occ)
        model.eval()
        served = model.decode(mu).clone()
        model.train()
        trained = model.decode(mu)
    assert torch.allclose(served - trained, model.class_bias.view(1, -1, 1, 1, 1, 1).expand_as(served), atol=1e-5)


def test_weights_saved_before_calibration_load_uncalibrated(debug_vae, tmp_path):
    meta, state = checkpoint.load(debug_vae, kind="vae")
    state["model"].pop("class_bias", None)
    old = tmp_path / "old"
    checkpoint.save(old, kind="vae", config=meta["config"], state=state, step=meta["step"])
    model = load_vae(old, "cpu").model
    assert torch.equal(model.class_bias, torch.zeros(model.config.num_classes))


def test_in_place_calibration_and_the_cli(debug_vae, debug_city, tmp_path):
    path = tmp_path / "vae"
    shutil.copytree(debug_vae, path)
    result = CliRunner().invoke(app, ["train", "calibrate", "--vae", str(path), "--data", debug_city, "--out",
                                      str(path), "--clips", "4"])
    assert result.exit_code == 0, result.output
    assert f"calibrated {path} -> {path} on 4 train clips: largest class-share error" in result.output
    assert is_calibrated(path) and checkpoint.latent_space_id(path) == checkpoint.checkpoint_id(debug_vae)
    first = checkpoint.checkpoint_id(path)
    calibrate_vae(str(path), debug_city, str(path), clips=4)  # again: fitted afresh from the raw logits
    assert checkpoint.latent_space_id(path) == checkpoint.checkpoint_id(debug_vae)
    assert checkpoint.checkpoint_id(path) == first


def _store(path, preset: str, num_clips: int, val: tuple[int, ...]) -> str:
    from dcgen.data.grid import GRIDS
    from dcgen.data.synth_city import generate_block

    store = SceneStore.create(str(path), GRIDS[preset], source="test-city", with_mask=True, capacity=num_clips)
    batch, rows = generate_block(GRIDS[preset], 0, 0, num_clips, 0.0, store.array_names)
    for row in rows:
        row["split"] = "val" if row["index"] in val else "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


def test_bad_input_is_refused_before_anything_is_written(debug_vae, debug_city, tmp_path):
    out = tmp_path / "out"
    small = _store(tmp_path / "small.zarr", "small", 1, ())
    empty_val = _store(tmp_path / "noval.zarr", "debug", 2, ())
    cases = [
        (dict(clips=0), "--clips 0: expected a whole number >= 1"),
        (dict(clips=True), "--clips True: expected a whole number >= 1"),
        (dict(clips=1.5), "--clips 1.5: expected a whole number >= 1"),
        (dict(data=small), "grid"),
        (dict(data=empty_val, split="val"), "split 'val' has no clips to calibrate on"),
        (dict(data=str(tmp_path / "missing.zarr")), "missing.zarr"),
        (dict(vae=str(tmp_path / "nothing")), "not a dcgen checkpoint"),
    ]
    for overrides, message in cases:
        args = dict(vae=debug_vae, data=debug_city, out=str(out)) | overrides
        with pytest.raises(ValueError, match=message):
            calibrate_vae(args.pop("vae"), args.pop("data"), args.pop("out"), **args)
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        calibrate_vae(debug_vae, debug_city, str(out))
    assert (out / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(app, ["train", "calibrate", "--vae", debug_vae, "--data", debug_city, "--out",
                                      str(tmp_path / "cli"), "--clips", "-2"])
    assert result.exit_code == 2 and "error: --clips -2: expected a whole number >= 1" in result.output
    assert not (tmp_path / "cli").exists()


def test_raw_writes_zero_offsets_that_the_pipeline_leaves(calibrated, debug_city, tmp_path):
    from dcgen.train.pipeline import _calibrate_left

    source, _ = calibrated
    run = tmp_path / "vae"
    result = CliRunner().invoke(app, ["train", "calibrate", "--vae", str(source), "--out", str(run / "best"),
                                      "--raw"])
    assert result.exit_code == 0, result.output
    assert f"{source} -> {run / 'best'}: zero class offsets (the raw decode)" in result.output
    assert torch.equal(load_vae(run / "best", "cpu").model.class_bias, torch.zeros(11))
    assert is_calibrated(run / "best") and checkpoint.read_meta(run / "best")["calibration"]["raw"]
    assert checkpoint.latent_space_id(run / "best") == checkpoint.latent_space_id(source)
    before = checkpoint.checkpoint_id(run / "best")
    assert _calibrate_left(run, debug_city, log=None) == {}  # a chosen raw decode is not calibrated again
    assert checkpoint.checkpoint_id(run / "best") == before
    # without --raw the offsets need a store to fit on
    result = CliRunner().invoke(app, ["train", "calibrate", "--vae", str(source), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "calibrating needs --data" in result.output
    assert not (tmp_path / "x").exists()
