"""``dcgen eval recon``: the split-level IoU of a VAE checkpoint matches a direct count over its reconstructions,
JSON and GIFs are written, and a checkpoint of another grid, an empty split or bad options are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcgen import checkpoint
from dcgen.cli import app
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import generate_block
from dcgen.metrics.recon_eval import evaluate_reconstruction, reconstruct
from dcgen.models.vae import HexPlaneVAE
from dcgen.presets import get_preset


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("recon") / "city.zarr"
    store = SceneStore.create(str(path), GRIDS["debug"], source="test-city", with_mask=True, capacity=6)
    batch, rows = generate_block(GRIDS["debug"], 3, 0, 6, 0.0, store.array_names)
    for row in rows:
        row["split"] = "val" if row["index"] >= 3 else "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


def save_vae(path, preset: str = "debug") -> str:
    torch.manual_seed(0)
    model = HexPlaneVAE(get_preset(preset).vae)
    checkpoint.save(path, kind="vae", config=model.config.to_dict(), state={"model": model.state_dict()}, step=7)
    return str(path)


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> str:
    return save_vae(tmp_path_factory.mktemp("vae") / "best")


def direct_iou(vae_path: str, store_path: str, split: str,
               batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (tp, fp, fn) over observed voxels, counted with numpy from reconstructions decoded in the
    evaluation's batches (a batch of another shape may run other kernels and flip a near-tie voxel's class: an
    untrained VAE has voxels whose top two logits are a few ulps apart)."""
    from dcgen.models.loading import load_vae

    store = SceneStore.open(store_path)
    batch = store.read(store.indices(split), ("occupancy", "mask"))
    model, occ = load_vae(vae_path).model, torch.from_numpy(batch["occupancy"].astype(np.int64))
    pred = torch.cat([reconstruct(model, occ[a:a + batch_size]) for a in range(0, len(occ), batch_size)]).numpy()
    gt, seen = batch["occupancy"][batch["mask"]], pred[batch["mask"]]
    k = np.arange(GRIDS["debug"].num_classes)[:, None]
    tp = ((gt == k) & (seen == k)).sum(1)
    return tp, ((gt != k) & (seen == k)).sum(1), ((gt == k) & (seen != k)).sum(1)


def test_split_iou_matches_a_direct_count_and_files_are_written(vae, city, tmp_path):
    result = evaluate_reconstruction(vae, city, "val", tmp_path / "eval", batch_size=2, num_renders=2)
    tp, fp, fn = direct_iou(vae, city, "val", batch_size=2)
    present = (tp + fn) > 0
    iou = tp[present] / (tp + fp + fn)[present]
    names = [n for n, p in zip(result["per_class_iou"], present) if p]
    assert [result["per_class_iou"][n] for n in names] == pytest.approx(list(iou))
    non_free = [i for i, p in enumerate(present) if p and i != 0]
    assert result["miou"] == pytest.approx(np.mean([tp[i] / (tp[i] + fp[i] + fn[i]) for i in non_free]))
    assert result["num_clips"] == 3 and result["vae_step"] == 7 and result["observed_mask"] is True
    saved = json.loads((tmp_path / "eval" / "recon.json").read_text())
    assert saved["miou"] == pytest.approx(result["miou"]) and len(saved["confusion"]) == 11
    assert [p.rsplit("/", 1)[1] for p in saved["renders"]] == ["recon-clip000003.gif", "recon-clip000004.gif"]
    from PIL import Image

    with Image.open(saved["renders"][0]) as gif:
        assert gif.n_frames == GRIDS["debug"].num_frames


def test_vae_of_another_grid_is_an_error(city, tmp_path):
    other = save_vae(tmp_path / "small-vae", "small")
    with pytest.raises(ValueError, match=r"store grid T=4 XYZ=\[32, 32, 4\] K=11 does not match the VAE .*"
                                         r"\(T=16 XYZ=\[64, 64, 8\] K=11\)"):
        evaluate_reconstruction(other, city, "val")


def test_empty_split_and_bad_options_are_errors(vae, city):
    with pytest.raises(ValueError, match=r"split 'test' has no complete clips \(splits: train 3, val 3\)"):
        evaluate_reconstruction(vae, city, "test")
    with pytest.raises(ValueError, match="--batch-size must be >= 1, got 0"):
        evaluate_reconstruction(vae, city, batch_size=0)
    with pytest.raises(ValueError, match="--max-clips must be >= 1"):
        evaluate_reconstruction(vae, city, max_clips=0)


def test_not_a_checkpoint_is_an_error(city, tmp_path):
    with pytest.raises(ValueError, match="not a dcgen checkpoint"):
        evaluate_reconstruction(str(tmp_path), city)


def test_cli_prints_the_table_and_one_line_errors(vae, city, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "recon", "--vae", vae, "--data", city, "--max-clips", "1", "--renders", "0",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "occupied" in res.output and (tmp_path / "e" / "recon.json").is_file()
    res = runner.invoke(app, ["eval", "recon", "--vae", vae, "--data", city, "--split", "test"])
    assert res.exit_code == 2 and "error: " in res.output and "split 'test' has no complete clips" in res.output
