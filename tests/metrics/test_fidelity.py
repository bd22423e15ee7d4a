"""The fidelity report of issue 23 on the debug city: a copy of the real-vs-real half scores exactly the real-vs-real
row, other real clips score near it, corrupted copies (class noise, eroded objects, frames shifted in time) score
worse on the statistics each corrupts, and bad inputs (mismatched grids, a features checkpoint of another grid, too
few clips, clips seeded from ground truth, a real split the generator trained on) are refused or warned about."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from dcgen.data.classes import CLASS_IDS
from dcgen.data.store import SceneStore
from dcgen.generate.conditions import SceneRequest
from dcgen.generate.sample_store import write_samples
from dcgen.metrics import corruptions
from dcgen.metrics.fidelity import fidelity_report, format_table, parse_store_split, real_halves
from dcgen.metrics.fidelity_table import COLUMNS, format_comparison
from dcgen.metrics.provenance import generation_origin

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THIN = [CLASS_IDS[n] for n in ("vehicle", "pedestrian", "bicycle", "pole", "barrier", "other")]


def _half_b(real: str) -> np.ndarray:
    """The real-vs-real half of ``real`` (all splits, seed 0) in store order: what the report compares."""
    _, half_b = real_halves(SceneStore.open(real), None, 0)
    return np.sort(half_b)


def _as_generated(out, real: str, indices: np.ndarray, corrupt=None, prev_from: int = 0, provenance=None,
                  with_trajectory: bool = True) -> str:
    """Clips ``indices`` of ``real`` (optionally corrupted) written as ``dcgen sample`` writes generated scenes,
    each requesting its real trajectory (else none is known); the first ``prev_from`` of them say they continued
    a stored clip."""
    store = SceneStore.open(real)
    batch = store.read(indices, ("occupancy", "trajectory"))
    occ = batch["occupancy"] if corrupt is None else corrupt(batch["occupancy"])
    requests = [SceneRequest(trajectory=t if with_trajectory else None, prev_clip=occ[i] if i < prev_from else None)
                for i, t in enumerate(batch["trajectory"])]
    return write_samples(str(out), store.grid, occ, requests, list(range(len(indices))),
                         provenance=provenance or {"generator": "dcgen sample"})


@pytest.fixture(scope="module")
def city(request, tmp_path_factory):
    """The debug city, tiny feature networks and the debug VAE (built here, under one torch thread, when this
    module is the first to ask: see ``one_torch_thread``), and a copy of the real-vs-real half as generated."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    real, features = request.getfixturevalue("debug_city"), request.getfixturevalue("debug_features")
    vae = request.getfixturevalue("debug_vae")
    root = tmp_path_factory.mktemp("fidelity")
    half_b = _half_b(real)
    yield {"real": real, "features": features, "vae": vae, "root": root, "half_b": half_b,
           "copy_b": _as_generated(root / "copy-b.zarr", real, half_b)}
    torch.set_num_threads(before)


def _report(city, fake: str, **kw) -> dict:
    return fidelity_report(city["real"], fake, city["features"], device="cpu", **kw)


def _gaps(objects: dict) -> dict:
    """Every relative gap of an ``object_stats.compare`` result by its path, e.g. ``vehicle.size_median``."""
    out = {k: objects[k]["relative_gap"] for k in ("occupied_share", "flicker", "static_change", "persistence")}
    for name, row in objects["classes"].items():
        out.update({f"{name}.{k}": v["relative_gap"] for k, v in row.items() if isinstance(v, dict)})
    return out


# ---- the identity ---------------------------------------------------------------------------------------------

def test_a_copy_of_the_real_half_scores_exactly_the_real_vs_real_row(city, tmp_path):
    report = _report(city, city["copy_b"], vae=city["vae"], out=tmp_path / "report")
    assert report["num_clips"] == len(city["half_b"]) == 16
    assert report["objects"]["generated"] == report["objects"]["real_vs_real"]  # integer counts: exact
    for space in ("2d", "3d"):
        for metric, entry in report["metrics"][space].items():
            if entry["real_vs_real"] and metric != "kid_mean":
                assert entry["generated_ratio"] == pytest.approx(1.0, rel=1e-4), (space, metric)
        assert report["metrics"][space]["fid"]["real_vs_real"] > 0  # two different halves: not zero
    # the fake store says how it was made: from noise, conditioned on (here real) trajectories
    assert report["fake"]["provenance_known"] and report["fake"]["pure_noise_clips"] == 16
    assert report["fake"]["conditioned"] == {"trajectory": 16}
    assert "generated from pure noise" in report["generation"]
    # the reconstruction row reconstructs half B with the VAE; the debug VAE trained one epoch is no ceiling yet
    assert report["objects"]["reconstruction"]["num_clips"] == {"real": 16, "fake": 16}
    assert report["metrics"]["3d"]["fid"]["reconstruction_ratio"] > 1.0
    # the halves themselves: whole scenes, disjoint, and statistically alike
    a, b = report["real"]["reference_clips"], report["real"]["real_vs_real_clips"]
    assert not set(a) & set(b) and {i // 2 for i in a}.isdisjoint({i // 2 for i in b})  # 2 clips per scene
    rvr = report["objects"]["real_vs_real"]
    assert rvr["class_mix_l1"] < 0.25 and abs(rvr["occupied_share"]["relative_gap"]) < 0.1
    assert abs(rvr["classes"]["vehicle"]["size_median"]["relative_gap"]) <= 0.25
    assert rvr["persistence"]["fake"] > 0.9 and rvr["static_change"]["fake"] < 0.2
    # what was written: the JSON as returned, a PNG, and a table naming every row
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["objects"] == report["objects"] and on_disk["files"]["png"].endswith("report.png")
    from PIL import Image

    with Image.open(tmp_path / "report" / "report.png") as png:
        assert png.size[0] >= 800 and png.size[1] > 300
    table = format_table(report)
    for label in ("real A (reference)", "real B (real-vs-real)", "generated", "reconstruction", "x1.00"):
        assert label in table
    # 16 clips x 6 views > 64 features and 16 clips > 12: FID is not rough; 'dcgen sample' stores name no DiT path
    assert report["warnings"] == ["cannot tell whether the generator trained on these real clips: the fake store's "
                                  "provenance names no DiT checkpoint"]


def test_other_real_clips_score_near_the_real_vs_real_row(city, tmp_path):
    from debug_models import write_city_store

    other = write_city_store(tmp_path / "other.zarr", num_scenes=8, seed=1)
    report = _report(city, other)
    for space in ("2d", "3d"):
        assert 0.2 < report["metrics"][space]["fid"]["generated_ratio"] < 5.0
    gen = report["objects"]["generated"]
    assert gen["class_mix_l1"] < 0.2 and abs(gen["occupied_share"]["relative_gap"]) < 0.15
    assert any("does not say how its clips were made" in w for w in report["warnings"])


# ---- corruptions --------------------------------------------------------------------------------------------------

def _noisy(occ):
    return corruptions.class_noise(occ, 0.1, 11, seed=1)


def _eroded(occ):
    return corruptions.erode(occ, THIN)


def _shifted_odd_frames(occ):
    out = occ.copy()
    out[:, 1::2] = corruptions.shift(occ[:, 1::2], 2, 0)  # the world jumps 2 voxels forward and back each frame
    return out


def _worse(report: dict, key: str) -> tuple[float, float]:
    """|relative gap| of the generated row and of the real-vs-real row for one statistic."""
    return abs(_gaps(report["objects"]["generated"])[key] or 0.0), abs(_gaps(report["objects"]["real_vs_real"])[key])


@pytest.mark.parametrize("corrupt, worse", [
    (_noisy, ("flicker", "static_change", "pole.components_per_frame", "vehicle.size_p90")),
    (_eroded, ("vehicle.size_median", "vehicle.components_per_frame", "pole.components_per_frame", "vehicle.share")),
    (_shifted_odd_frames, ("flicker", "static_change", "persistence", "building.static_change")),
], ids=["class-noise", "eroded", "shifted"])
def test_corrupted_copies_score_worse_on_what_they_corrupt(city, tmp_path, corrupt, worse):
    fake = _as_generated(tmp_path / "fake.zarr", city["real"], city["half_b"], corrupt)
    report = _report(city, fake)
    for key in worse:
        generated, floor = _worse(report, key)
        assert generated > floor + 0.05, key
    # (the feature metrics are not asserted: networks trained two steps with 12 3D features do not see these)
    if corrupt is _eroded:  # shrunk, not displaced: the size distributions move far from real
        w1 = report["objects"]["generated"]["classes"]["vehicle"]["size_wasserstein"]
        assert w1 > 3 * report["objects"]["real_vs_real"]["classes"]["vehicle"]["size_wasserstein"]


def test_a_comparison_puts_each_generated_set_on_its_own_row_beside_one_real_pair(city, tmp_path):
    copy = _report(city, city["copy_b"], vae=city["vae"])
    eroded = _report(city, _as_generated(tmp_path / "eroded.zarr", city["real"], city["half_b"], _eroded))
    table = format_comparison({"copy": copy, "eroded": eroded})
    lines = table.splitlines()
    rows = {line[:24].strip(): line[24:].split() for line in lines[2:]
            if line[:24].strip() and not line.startswith(("-", " "))}
    # one real pair, then the rows in the order given, then the first report's reconstruction
    assert list(rows)[:5] == ["real A (reference)", "real B (real-vs-real)", "copy", "eroded", "VAE reconstruction"]
    assert rows["copy"] == rows["real B (real-vs-real)"]  # a copy of half B is the real-vs-real row
    median = [name for name, _, _ in COLUMNS].index("veh med")
    assert float(rows["eroded"][median]) < float(rows["copy"][median])  # eroded vehicles are smaller
    assert sum("x real-vs-real" in line for line in lines) == 3  # copy, eroded, reconstruction
    assert f"eroded: {eroded['fake']['path']}" in table
    with pytest.raises(ValueError, match="at least one fidelity report"):
        format_comparison({})


# ---- what the generated store says about itself ------------------------------------------------------------------

def test_clips_seeded_from_ground_truth_are_left_out_and_counted(city, tmp_path):
    fake = _as_generated(tmp_path / "seeded.zarr", city["real"], city["half_b"], prev_from=4)
    origin = generation_origin(SceneStore.open(fake))
    assert origin["known"] and origin["pure"].tolist() == [False] * 4 + [True] * 12
    report = _report(city, fake)
    assert report["num_clips"] == 12 and report["fake"]["seeded_from_ground_truth"] == {"prev_clip": 4}
    assert report["fake"]["scored_clips"] == list(range(4, 16))
    assert any("4 of 16 clips were seeded from encoded ground truth (prev_clip 4)" in w for w in report["warnings"])


def test_chained_continuations_of_noise_born_scenes_count_as_generated(city, tmp_path):
    store = SceneStore.open(city["real"])
    occ = store.read(city["half_b"][:8], ("occupancy",))["occupancy"]
    chained = occ.reshape(4, 2 * occ.shape[1], *occ.shape[2:])  # 4 scenes of 2 clips, as 'dcgen sample --chain 2'
    requests = [SceneRequest(prev_clip=chained[0, :4])] + [SceneRequest() for _ in range(3)]
    fake = write_samples(str(tmp_path / "chained.zarr"), store.grid, chained, requests, [0, 1, 2, 3])
    origin = generation_origin(SceneStore.open(fake))
    # scene 0 began from a stored clip (both its clips are left out); the other scenes' second clips continue
    # their own generated first clips
    assert origin["pure"].tolist() == [False, False] + [True] * 6
    assert origin["seeded"] == {"prev_clip": 2} and origin["continued"] == 3 and not origin["conditioned"]
    assert origin["statement"] == ("2 of 8 clips were seeded from encoded ground truth (prev_clip 2) and are left "
                                   "out: scored, they would measure reconstruction, not generation; 3 generated "
                                   "clips continue a generated clip of their scene (chained)")


def test_generated_clips_without_a_trajectory_get_one_only_when_asked(city, tmp_path):
    fake = _as_generated(tmp_path / "no-traj.zarr", city["real"], city["half_b"][:4], with_trajectory=False)
    plain = _report(city, fake)
    assert plain["trajectories"]["generated"] == {"none": 4} and plain["trajectories"]["real_vs_real"] == \
        {"recorded": 4}
    assert plain["objects"]["generated"]["static_change"]["fake"] is None
    assert any(n.startswith("4 of 4 generated clips have no trajectory") for n in plain["notes"])
    searched = _report(city, fake, estimate_trajectories=True)
    assert searched["trajectories"]["generated"] == {"estimated here": 4} and not searched["notes"]
    assert searched["objects"]["generated"]["static_change"]["fake"] is not None


def test_a_store_seeded_entirely_from_ground_truth_is_refused(city, tmp_path):
    fake = _as_generated(tmp_path / "all-seeded.zarr", city["real"], city["half_b"], prev_from=16)
    with pytest.raises(ValueError, match=r"16 of 16 clips were seeded from encoded ground truth .* no clip is left "
                                         r"that was generated from pure noise"):
        _report(city, fake)


def _dit_trained_on(root, store_path: str) -> str:
    """A DiT checkpoint directory whose training config names a latent store encoded from ``store_path`` (the
    metadata the DiT loop writes, with no weights: the report reads metadata only)."""
    from dcgen import checkpoint
    from dcgen.data.grid import LatentDims
    from dcgen.data.latent_store import LatentStore
    from dcgen.train.dit_loop import DiTTrainConfig, _meta_extra

    store = SceneStore.open(store_path)
    table = store.manifest()
    idx = table.column("index").to_numpy()
    side = store.read(idx, ("command", "trajectory", "layout", "bev"))
    latents = LatentStore.create(str(root / "latents.zarr"), grid=store.grid, dims=LatentDims(2, 8, 8, 2, 4),
                                 rollout_size=16, rollout_patch=2, conditions=side, clip_index=idx,
                                 splits=table.column("split").to_pylist(), prev_index=np.full(idx.size, -1),
                                 source=store_path, vae_checkpoint="", vae_checkpoint_id="vae-0-000000000000")
    cfg = DiTTrainConfig(model={"conditions": []}, schedule={}, steps_per_epoch=1, vae_checkpoint_id="vae-0-0",
                         grid=store.grid.to_dict(), extra={"latents": latents.path})
    return str(checkpoint.save(root / "dit", kind="dit", config={}, state={"model": {}}, step=0,
                               extra=_meta_extra(cfg, 0, 0.0)))


def test_a_real_split_the_generator_trained_on_warns_loudly(city, tmp_path):
    dit = _dit_trained_on(tmp_path, city["real"])
    prov = {"generator": "dcgen synth", "job": {"dit": dit}}
    fake = _as_generated(tmp_path / "fake.zarr", city["real"], city["half_b"][:8], provenance=prov)
    report = _report(city, fake, real_split="train", max_clips=4)
    overlap = [w for w in report["warnings"] if w.startswith("OVERLAP")]
    assert len(overlap) == 1 and "of the 8 real clips scored" in overlap[0] and "flatter the model" in overlap[0]
    assert f"--real {city['real']}:val" in overlap[0] and "WARNING: OVERLAP" in format_table(report)
    assert report["fake"]["generator_training_data"]["store"] == city["real"]
    # the same generator scored against another store: no overlap
    from debug_models import write_city_store

    other = write_city_store(tmp_path / "other.zarr", num_scenes=4, seed=2)
    report = fidelity_report(other, fake, city["features"], device="cpu", max_clips=4)
    assert not any(w.startswith("OVERLAP") for w in report["warnings"])
    # 'dcgen sample' records checkpoint ids, not paths: the report says it cannot tell
    fake_ids = _as_generated(tmp_path / "ids.zarr", city["real"], city["half_b"][:8],
                             provenance={"generator": "dcgen sample", "dit": "dit-3-0123456789ab"})
    report = _report(city, fake_ids, max_clips=4)
    assert "cannot tell whether the generator trained on these real clips: its provenance records the DiT's " \
        "checkpoint id 'dit-3-0123456789ab', not where the checkpoint is ('dcgen sample' stores do)" in \
        report["warnings"]
    # a path that is no checkpoint
    fake_gone = _as_generated(tmp_path / "gone.zarr", city["real"], city["half_b"][:8],
                              provenance={"generator": "dcgen synth", "job": {"dit": str(tmp_path / "no-dit")}})
    report = _report(city, fake_gone, max_clips=4)
    gone = f"its provenance's DiT '{tmp_path / 'no-dit'}' is not a readable DiT checkpoint here"
    assert any(w.startswith(f"cannot tell whether the generator trained on these real clips: {gone}")
               for w in report["warnings"])


# ---- bad input ----------------------------------------------------------------------------------------------------

def _crop_store(src: str, out) -> str:
    """``src`` cropped to its first 16 x 16 columns: a store of another grid."""
    store = SceneStore.open(src)
    dst = SceneStore.create(str(out), replace(store.grid, size=(16, 16, 4)), source="test-city", with_mask=True)
    b = store.read(slice(0, store.num_clips))
    b.update(occupancy=b["occupancy"][:, :, :16, :16], mask=b["mask"][:, :, :16, :16],
             layout=b["layout"][:, :, :4, :4], bev=b["bev"][:, :16, :16])
    dst.append(b, [{k: r[k] for k in ("scene", "frame_start", "split", "seed")} for r in store.manifest().to_pylist()])
    dst.finalize()
    return str(out)


def test_stores_of_different_grids_are_refused_and_an_earlier_report_survives(city, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')
    small = _crop_store(city["real"], tmp_path / "small.zarr")
    with pytest.raises(ValueError, match=r"--real .*city.zarr holds clips of grid T=4 XYZ=\[32, 32, 4\] .* but --fake "
                                         r".*small.zarr of T=4 XYZ=\[16, 16, 4\].*; expected one grid"):
        _report(city, small, out=out)
    assert (out / "report.json").read_text() == '{"earlier": true}' and not (out / "report.png").exists()
    # both stores on the small grid, the features of the debug grid
    with pytest.raises(ValueError, match=r"--features .*: the feature networks read clips of grid T=4 "
                                         r"XYZ=\[32, 32, 4\] K=11, but the stores hold T=4 XYZ=\[16, 16, 4\].*use a "
                                         r"features checkpoint trained on this grid"):
        fidelity_report(small, small, city["features"], device="cpu", out=out)
    # the stores and features on the small grid, the VAE of the debug grid
    small_features = _train_tiny_features(small, tmp_path / "small-features")
    with pytest.raises(ValueError, match=r"--vae .*: the VAE reads clips of grid T=4 XYZ=\[32, 32, 4\] K=11, but the "
                                         r"stores hold T=4 XYZ=\[16, 16, 4\].*use a VAE trained on this grid"):
        fidelity_report(small, small, small_features, vae=city["vae"], device="cpu", out=out)
    assert (out / "report.json").read_text() == '{"earlier": true}' and not (out / "report.png").exists()


def _train_tiny_features(store: str, out) -> str:
    """Feature networks as ``debug_features`` for the grid of ``store``, trained one step."""
    from dataclasses import asdict

    from dcgen.metrics.feature_nets import FeatureNetsConfig
    from dcgen.metrics.proxy_task import ProxyTask
    from dcgen.train.context import LocalContext
    from dcgen.train.features_loop import FeaturesTrainConfig, train_features

    cfg = FeatureNetsConfig.for_grid(SceneStore.open(store).grid, ProxyTask(), render_size=32,
                                     image={"width": 2, "groups": 2},
                                     voxel={"widths": (2, 4), "bottleneck_dim": 4, "groups": 2})
    run = FeaturesTrainConfig(nets=cfg.to_dict(), steps_per_epoch=1, epochs=1, batch_size=4, report_every=100,
                              out_dir=str(out))
    train_features(LocalContext(out_dir=out, store_path=store, arrays=("occupancy", "command")), asdict(run))
    return str(out / "best")


def test_too_few_clips_warn_and_fewer_than_four_are_refused(city):
    report = _report(city, city["copy_b"], max_clips=8)
    assert report["num_clips"] == 8
    rough = [w for w in report["warnings"] if "FID with N at or below the feature width is rough" in w]
    assert [w[:34] for w in rough] == ["2D: N = 48 samples for 64 features", "3D: N = 8 samples for 12 features:"]
    assert "WARNING: 3D: N = 8 samples for 12 features" in format_table(report)
    with pytest.raises(ValueError, match=r"N = 3 clips per set \(real halves 16 and 16 clips of .* split all, 16 "
                                         r"generated from pure noise in .*copy-b.zarr, --max-clips 3\); at least 4"):
        _report(city, city["copy_b"], max_clips=3)
    with pytest.raises(ValueError, match=r"N = 2 clips per set \(real halves 4 and 2 clips of .* split val"):
        _report(city, city["copy_b"], real_split="val")


def test_store_split_specs():
    assert parse_store_split("runs/city.zarr:val") == ("runs/city.zarr", "val")
    assert parse_store_split("runs/city.zarr:all") == ("runs/city.zarr", None)
    assert parse_store_split("runs/city.zarr") == ("runs/city.zarr", None)
    assert parse_store_split("s3://bucket/city.zarr") == ("s3://bucket/city.zarr", None)
    assert parse_store_split("s3://bucket/city.zarr:test") == ("s3://bucket/city.zarr", "test")
    with pytest.raises(ValueError, match=r"city.zarr:valid: split 'valid' is not one of train, val, test, all"):
        parse_store_split("city.zarr:valid")


def test_erosion_strips_the_outer_layer_of_the_chosen_classes_only():
    occ = np.zeros((1, 1, 8, 8, 2), np.uint8)
    occ[..., 1:6, 1:4, 0] = CLASS_IDS["vehicle"]  # 5 x 3: its middle column 3 x 1 survives
    occ[..., 7, 0:8, 1] = CLASS_IDS["building"]  # on the grid's edge, not eroded (not chosen)
    occ[..., 0, 6, 0] = CLASS_IDS["pole"]
    out = corruptions.erode(occ, THIN)
    assert np.argwhere(out == CLASS_IDS["vehicle"])[:, 2:].tolist() == [[2, 2, 0], [3, 2, 0], [4, 2, 0]]
    assert (out == CLASS_IDS["building"]).sum() == 8 and not (out == CLASS_IDS["pole"]).any()
    assert np.array_equal(corruptions.erode(occ, []), occ)
    with pytest.raises(ValueError, match=r"expected integer class ids of shape \[N, T, X, Y, Z\]"):
        corruptions.erode(occ[0], THIN)


def test_bad_arguments_name_the_value_and_touch_nothing(city, tmp_path):
    (tmp_path / "taken").write_text("a file")
    for kw, message in [({"max_clips": 0}, r"max_clips 0: expected a positive integer"),
                        ({"batch_size": 0}, r"batch_size 0: expected a positive integer"),
                        ({"real_split": "valid"}, r"real split 'valid' is not one of train, val, test"),
                        ({"out": tmp_path / "taken"}, r"--out .*taken: exists and is not a directory")]:
        with pytest.raises(ValueError, match=message):
            _report(city, city["copy_b"], **kw)
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_vae_that_trained_on_the_reconstructed_clips_is_flagged(city, tmp_path):
    import shutil

    # the debug VAE's checkpoint in a run directory whose run.json names its store, as 'dcgen train vae' writes it
    shutil.copytree(city["vae"], tmp_path / "run" / "best")
    (tmp_path / "run" / "run.json").write_text(json.dumps({"kind": "vae", "run": {"extra": {"data": city["real"]}}}))
    report = _report(city, city["copy_b"], vae=str(tmp_path / "run" / "best"), max_clips=4)
    assert any(re.fullmatch(r"the reconstruction row reconstructs [1-4] of 4 clips the VAE .*run/best trained on: "
                            r"the ceiling is optimistic", w) for w in report["warnings"])
    assert not report["notes"]  # its training store is known


def test_eval_fidelity_command_prints_the_table_and_writes_the_report(city, tmp_path):
    from typer.testing import CliRunner

    from dcgen.cli import app

    out = tmp_path / "fid"
    result = CliRunner().invoke(app, ["eval", "fidelity", "--real", f"{city['real']}:all", "--fake", city["copy_b"],
                                      "--features", city["features"], "--out", str(out), "--device", "cpu",
                                      "--kid-subsets", "5"])
    assert result.exit_code == 0, result.output
    assert "real B (real-vs-real)" in result.output and "x1.00" in result.output
    assert (out / "report.json").is_file() and (out / "report.png").is_file()
    bad = CliRunner().invoke(app, ["eval", "fidelity", "--real", f"{city['real']}:nosuch", "--fake", city["copy_b"],
                                   "--features", city["features"]])
    assert bad.exit_code == 2 and "error:" in bad.output and "nosuch" in bad.output


def test_same_store_resolves_local_aliases_and_ignores_a_uris_trailing_slash(tmp_path, monkeypatch):
    from dcgen.metrics.provenance import same_store

    (tmp_path / "city.zarr").mkdir()
    (tmp_path / "alias.zarr").symlink_to(tmp_path / "city.zarr")
    monkeypatch.chdir(tmp_path)
    assert same_store("city.zarr", str(tmp_path / "alias.zarr"))
    assert same_store("./city.zarr/", str(tmp_path / "city.zarr"))
    assert same_store("s3://bucket/city.zarr/", "s3://bucket/city.zarr")
    assert not same_store("s3://bucket/city.zarr", "s3://bucket/other.zarr")
    assert not same_store("city.zarr", "s3://bucket/city.zarr")
    (tmp_path / "other.zarr").mkdir()
    assert not same_store("city.zarr", "other.zarr")
