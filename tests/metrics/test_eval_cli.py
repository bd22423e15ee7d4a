"""Generation-metric commands end to end (SPEC §4, issue 5): reference statistics round trip, 'dcgen eval gen' on
two stores in the Table 2 layout, 'dcgen render', 'dcgen train features' (Ray Train) and 'dcgen bench metrics',
their error paths, and the acceptance check: real-vs-real FID far below real-vs-corrupted FID in 2D and 3D."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import generate_block
from dcgen.metrics import corruptions
from dcgen.metrics.extract import ClipFeatures, extract_features, extract_store
from dcgen.metrics.feature_nets import FeatureNetsConfig, load_feature_nets
from dcgen.metrics.feature_stats import FeatureStats
from dcgen.metrics.gen_eval import compare_features, diversity_note, evaluate_generation, format_table
from dcgen.metrics.generation import GenerationMetricsConfig
from dcgen.metrics.proxy_task import ProxyTask
from dcgen.metrics.reference import ReferenceStats, make_reference
from dcgen.train.context import LocalContext
from dcgen.train.features_loop import FeaturesTrainConfig, train_features

DEBUG = GRIDS["debug"]
runner = CliRunner()


def make_store(path, num_clips: int, seed: int = 0, val_every: int = 4) -> str:
    store = SceneStore.create(str(path), DEBUG, source="test-city", with_mask=True, capacity=num_clips)
    batch, rows = generate_block(DEBUG, seed, 0, num_clips, 0.0, store.array_names)
    for row in rows:
        row["split"] = "val" if row["index"] % val_every == val_every - 1 else "train"
    store.write(0, batch, rows)
    store.finalize()
    return str(path)


def make_repeated_store(path, num_clips: int, seed: int = 0) -> str:
    """A store holding one synthetic-city clip ``num_clips`` times: what a collapsed sampler writes."""
    store = SceneStore.create(str(path), DEBUG, source="test-city", with_mask=True, capacity=num_clips)
    batch, rows = generate_block(DEBUG, seed, 0, num_clips, 0.0, store.array_names)
    store.write(0, {k: np.repeat(v[:1], num_clips, axis=0) for k, v in batch.items()}, rows)
    store.finalize()
    return str(path)


def train_tiny(store: str, out, seed: int = 0, epochs: int = 1) -> str:
    """Small feature networks (32-px renders) trained by the loop on a LocalContext: their best checkpoint."""
    cfg = FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), render_size=32, image={"width": 8},
                                     voxel={"widths": (8, 16), "bottleneck_dim": 8})
    run = FeaturesTrainConfig(nets=cfg.to_dict(), steps_per_epoch=2, epochs=epochs, batch_size=4, seed=seed,
                              report_every=100, out_dir=str(out))
    torch.manual_seed(seed)
    train_features(LocalContext(out_dir=out, store_path=store, arrays=("occupancy", "command"), seed=seed),
                   asdict(run))
    return str(out / "best")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-eval")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    real = make_store(root / "real.zarr", 12, seed=0)
    fake = make_store(root / "fake.zarr", 8, seed=1)
    few = make_store(root / "few.zarr", 3, seed=2)
    features = train_tiny(real, root / "features")
    other = train_tiny(real, root / "features-other", seed=1)
    yield {"root": root, "real": real, "fake": fake, "few": few, "features": features, "other": other}
    torch.set_num_threads(old)


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# ---- reference statistics -------------------------------------------------------------------------------------

def test_reference_round_trip_through_the_cli(world, tmp_path):
    out = tmp_path / "ref.npz"
    result = cli("eval", "reference", "--data", world["real"], "--features", world["features"], "--out", out,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "12 clips / 72 images" in result.output
    ref = ReferenceStats.load(out)
    loaded = load_feature_nets(world["features"])
    assert ref.feature_checkpoint_id == loaded.checkpoint_id and ref.meta["data"] == world["real"]
    direct, _ = extract_store(loaded.nets, world["real"])
    for a, b in zip(ref.features.as_tuple(), direct.as_tuple()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    again = FeatureStats.from_features(direct.feat3d_ND)
    np.testing.assert_allclose(ref.stats3d.cov_DD, again.cov_DD, rtol=1e-6, atol=1e-9)
    assert ref.stats2d.num_samples == 72 and ref.features.views_per_clip == 6
    # extracting a batch alone gives the same rows as the whole store (batch independence)
    clips = SceneStore.open(world["real"]).read(slice(4, 6), ("occupancy",))["occupancy"]
    part = extract_features(loaded.nets, clips, batch_size=1)
    np.testing.assert_allclose(part.feat3d_ND, direct.take(slice(4, 6)).feat3d_ND, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(part.probs2d_MK.sum(1), 1.0, rtol=1e-9)


def test_reference_load_errors(world, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ReferenceStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "stats.npz", mean=np.zeros(3), cov=np.eye(3), num_samples=5)
    with pytest.raises(ValueError, match="not a dcgen reference statistics file"):
        ReferenceStats.load(tmp_path / "stats.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an .npz file"):
        ReferenceStats.load(tmp_path / "junk.npz")


# ---- eval gen ---------------------------------------------------------------------------------------------------

def test_eval_gen_on_two_stores_prints_table_2_and_writes_json(world, tmp_path):
    out = tmp_path / "gen.json"
    result = cli("eval", "gen", "--real", world["real"], "--fake", world["fake"], "--features", world["features"],
                 "--json", out, "--kid-subsets", "5", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "DynamicCity (paper)" in result.output and "generated (this run)" in result.output
    assert "12 clips / 72 images" in result.output and "8 clips / 48 images" in result.output
    doc = json.loads(out.read_text())
    assert doc["feature_checkpoint_id"] == load_feature_nets(world["features"]).checkpoint_id
    assert doc["real"]["num_clips"] == 12 and doc["fake"]["num_clips"] == 8
    assert doc["fake"]["distinct_clips"] == 8 and doc["fake"]["collapsed"] is False and doc["fake"]["note"] is None
    for space, rows in (("2d", (72, 48)), ("3d", (12, 8))):
        m = doc["metrics"][space]
        assert (m["num_real"], m["num_fake"]) == rows
        assert m["fid"] > 0 and m["is_mean"] >= 1.0 and 0 <= m["precision"] <= 1
        assert m["notes"]  # 72 / 48 images for 256 2D features, 12 / 8 clips for 40 3D ones: rank-deficient
        assert m["collapsed"] is False
    assert doc["paper_table2"]["DynamicCity"]["3d"]["fid"] == 354.2


def test_eval_gen_with_a_reference_matches_the_store(world, tmp_path):
    ref, _ = make_reference(world["real"], world["features"], tmp_path / "ref.npz", device="cpu")
    cfg_kw = {"device": "cpu"}
    from_store = evaluate_generation(world["real"], world["fake"], world["features"], **cfg_kw)
    from_ref = evaluate_generation(str(tmp_path / "ref.npz"), world["fake"], world["features"], **cfg_kw)
    for space in ("2d", "3d"):
        for key in ("fid", "kid_mean", "precision", "recall", "gaussian_precision", "is_mean"):
            assert from_ref["metrics"][space][key] == pytest.approx(from_store["metrics"][space][key], rel=1e-4,
                                                                    abs=1e-6)
    assert from_ref["real"]["kind"] == "reference" and "generated (this run)" in format_table(from_ref)


def test_eval_gen_errors(world, tmp_path):
    ref_other = tmp_path / "ref-other.npz"
    assert cli("eval", "reference", "--data", world["real"], "--features", world["other"], "--out", ref_other,
               "--device", "cpu").exit_code == 0
    result = cli("eval", "gen", "--real", ref_other, "--fake", world["fake"], "--features", world["features"],
                 "--device", "cpu")
    assert result.exit_code == 2 and "the reference was made with feature network" in result.output
    result = cli("eval", "gen", "--real", world["real"], "--fake", world["few"], "--features", world["features"],
                 "--device", "cpu")
    assert result.exit_code == 2
    assert "3 clips; at least 4 are needed" in result.output
    result = cli("eval", "gen", "--real", world["real"], "--fake", world["fake"], "--features", world["real"])
    assert result.exit_code == 2 and "not a dcgen checkpoint" in result.output
    result = cli("eval", "reference", "--data", world["real"], "--features", world["features"], "--out",
                 tmp_path / "r.npz", "--split", "test")
    assert result.exit_code == 2 and "split 'test' has no complete clips" in result.output


def test_eval_gen_reports_a_collapsed_generated_set_and_refuses_a_collapsed_real_one(world, tmp_path):
    same = make_repeated_store(tmp_path / "same.zarr", 6)
    out = tmp_path / "gen.json"
    result = cli("eval", "gen", "--real", world["real"], "--fake", same, "--features", world["features"], "--json",
                 out, "--kid-subsets", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "generated: collapsed: all 6 scenes identical" in result.output
    doc = json.loads(out.read_text())
    assert doc["fake"]["distinct_clips"] == 1 and doc["fake"]["collapsed"] is True
    assert doc["fake"]["note"] == "collapsed: all 6 scenes identical"
    m3 = doc["metrics"]["3d"]
    assert m3["collapsed"] is True and any(n.startswith("generated set collapsed: all 6 feature vectors")
                                           for n in m3["notes"])
    assert "note (3D): generated set collapsed" in result.output
    for space in ("2d", "3d"):
        m = doc["metrics"][space]
        for key in ("fid", "kid_mean", "precision", "recall", "gaussian_precision", "gaussian_recall", "is_mean"):
            assert math.isfinite(m[key]), (space, key)
        assert 0 <= m["gaussian_recall"] <= 1 and 0 <= m["recall"] <= 1
    # the real side is the reference distribution: identical real clips leave nothing to compare with
    bad = tmp_path / "bad.json"
    result = cli("eval", "gen", "--real", same, "--fake", world["fake"], "--features", world["features"], "--json",
                 bad, "--kid-subsets", "3", "--device", "cpu")
    assert result.exit_code == 2
    assert "3D metrics: real features: all 6 feature vectors are identical (up to rounding" in result.output
    assert not bad.exists() and json.loads(out.read_text())["fake"]["collapsed"] is True


def test_compare_features_flags_a_collapsed_space():
    real = fake_features(10)
    one = fake_features(8, seed=1)
    collapsed = ClipFeatures(one.feat2d_MD, one.probs2d_MK, np.repeat(one.feat3d_ND[:1], 8, axis=0), one.probs3d_NK,
                             6)
    out = compare_features(real, collapsed, GenerationMetricsConfig(kid_subsets=2))
    assert out["3d"]["collapsed"] is True and out["2d"]["collapsed"] is False
    assert any(n.startswith("generated set collapsed: all 8 feature vectors") for n in out["3d"]["notes"])
    assert out["3d"]["gaussian_recall"] == 0.0 and math.isfinite(out["3d"]["fid"])
    with pytest.raises(ValueError, match="3D metrics: real features: all 8 feature vectors are identical"):
        compare_features(collapsed, real, GenerationMetricsConfig(kid_subsets=2))
    assert diversity_note(6, 1) == "collapsed: all 6 scenes identical"
    assert diversity_note(6, 4) == "only 4 of 6 scenes distinct" and diversity_note(6, 6) is None


def fake_features(n: int, d2: int = 8, d3: int = 4, seed: int = 0, value: float | None = None) -> ClipFeatures:
    g = np.random.default_rng(seed)
    f2, f3 = g.normal(size=(n * 6, d2)).astype(np.float32), g.normal(size=(n, d3)).astype(np.float32)
    if value is not None:
        f3[1, 0] = value
    p2, p3 = g.dirichlet(np.ones(5), n * 6), g.dirichlet(np.ones(5), n)
    return ClipFeatures(f2, p2, f3, p3, 6)


def test_compare_features_rejects_non_finite_mismatched_and_too_few():
    real = fake_features(10)
    with pytest.raises(ValueError, match="3D metrics: generated features: 1 samples hold NaN or inf"):
        compare_features(real, fake_features(10, value=np.nan))
    with pytest.raises(ValueError, match="3D metrics: .*inf"):
        compare_features(real, fake_features(10, value=np.inf))
    with pytest.raises(ValueError, match="real features have 8 features per sample but generated features have 6"):
        compare_features(real, fake_features(10, d2=6))
    with pytest.raises(ValueError, match="generated set: 2 clips; at least 4 are needed"):
        compare_features(real, fake_features(2))
    with pytest.raises(ValueError, match="expected N V 2D rows for N 3D rows"):
        ClipFeatures(real.feat2d_MD[:5], real.probs2d_MK, real.feat3d_ND, real.probs3d_NK, 6)


# ---- render -------------------------------------------------------------------------------------------------------

def test_render_writes_gif_and_png_and_rejects_a_bad_clip(world, tmp_path):
    result = cli("render", world["real"], "--clip", "5", "--out", tmp_path / "clip.gif")
    assert result.exit_code == 0, result.output and (tmp_path / "clip.gif").stat().st_size > 0
    result = cli("render", world["real"], "--clip", "5", "--out", tmp_path / "clip.png", "--frame", "2")
    assert result.exit_code == 0 and (tmp_path / "clip.png").is_file()
    result = cli("render", world["real"], "--clip", "12", "--out", tmp_path / "bad.gif")
    assert result.exit_code == 2 and "--clip 12 is not a complete clip" in result.output and "0..11" in result.output
    result = cli("render", world["real"], "--clip", "1", "--out", tmp_path / "bad.jpg")
    assert result.exit_code == 2 and "expected a file name ending in .gif or .png" in result.output
    result = cli("render", world["real"], "--clip", "1", "--out", tmp_path / "f.png", "--frame", "9")
    assert result.exit_code == 2 and "frame 9 is out of range" in result.output


# ---- train features: user errors (no worker starts) -------------------------------------------------------------

def test_train_features_rejects_bad_input_before_training(world, tmp_path):
    no_val = make_store(tmp_path / "noval.zarr", 4, val_every=100)
    result = cli("train", "features", "--data", no_val, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "needs clips in both the train and val splits (has 4 train, 0 val)" in result.output
    result = cli("train", "features", "--data", world["real"], "--preset", "small", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "does not match the feature networks preset 'small'" in result.output
    (tmp_path / "w.pth").write_bytes(b"nope")
    result = cli("train", "features", "--data", world["real"], "--inception-weights", tmp_path / "w.pth", "--out",
                 tmp_path / "run")
    assert result.exit_code == 2 and "not a torch weights file" in result.output
    result = cli("train", "features", "--data", world["real"], "--image-net", "inception-pretrained", "--out",
                 tmp_path / "run")
    assert result.exit_code == 2 and "needs --inception-weights FILE" in result.output


@pytest.mark.slow
def test_train_features_on_ray_train(world, ray_local, tmp_path):
    out = tmp_path / "features"
    result = cli("train", "features", "--data", world["real"], "--out", out, "--epochs", "1", "--render-size", "32")
    assert result.exit_code == 0, result.output
    assert "val accuracy 2D" in result.output and (out / "best" / "meta.json").is_file()
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["trained_on"]["train_clips"] == 9 and meta["trained_on"]["provenance"]["dcgen_version"]
    assert meta["config"]["proxy"]["density_edges"] != ProxyTask().to_dict()["density_edges"]  # fitted on the data
    result = cli("train", "features", "--data", world["real"], "--out", out, "--epochs", "1")
    assert result.exit_code == 2 and "a training run is already there" in result.output


# ---- bench ----------------------------------------------------------------------------------------------------------

def test_bench_metrics_writes_json(world, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "metrics", "--out", out, "--presets", "debug", "--clips", "2", "--batch-size", "2",
                 "--features", world["features"], "--samples", "100", "--dim", "8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    e = doc["extraction"][0]
    assert e["preset"] == "debug" and e["2d_clips_per_s"] > 0 and e["3d_clips_per_s"] > 0
    assert set(doc["metrics"]["seconds"]) == {"is", "fid", "kid", "knn_precision_recall", "gaussian_precision_recall"}
    assert doc["metrics"]["target_met"] is True
    result = cli("bench", "metrics", "--out", out, "--presets", "small", "--features", world["features"])
    assert result.exit_code == 2 and "not the small preset's" in result.output


# ---- acceptance: real vs real far below real vs corrupted ------------------------------------------------------------

@pytest.mark.slow
def test_real_vs_real_fid_is_far_below_real_vs_corrupted_in_2d_and_3d(tmp_path):
    """Issue 5's acceptance check on a debug synthetic city: networks of the default shape trained on it, two
    disjoint halves of held-out clips compared with each other and with corrupted copies of the second half."""
    torch.set_num_threads(2)
    train = make_store(tmp_path / "train.zarr", 96, seed=0)
    cfg = FeatureNetsConfig.for_grid(DEBUG, ProxyTask())
    run = FeaturesTrainConfig(nets=cfg.to_dict(), steps_per_epoch=9, epochs=4, batch_size=8, report_every=100,
                              out_dir=str(tmp_path / "features"))
    train_features(LocalContext(out_dir=tmp_path / "features", store_path=train, arrays=("occupancy", "command")),
                   asdict(run))
    nets = load_feature_nets(tmp_path / "features" / "best").nets
    held_out = make_store(tmp_path / "held.zarr", 160, seed=7)
    occ = SceneStore.open(held_out).read(slice(0, 160), ("occupancy",))["occupancy"]
    report = corruptions.corruption_check(nets, occ, seed=3, config=GenerationMetricsConfig(kid_subsets=20))
    print(json.dumps({k: v if k == "num_clips_per_half" else {s: {m: v[s][m] for m in ("fid", "kid_mean")}
                                                              for s in ("2d", "3d")} for k, v in report.items()},
                     indent=1))
    for space in ("2d", "3d"):
        real = report["real"][space]
        for name in ("class_noise", "shift", "empty"):
            bad = report[name][space]
            assert bad["fid"] > 3 * real["fid"], (space, name, bad["fid"], real["fid"])
            assert bad["kid_mean"] > real["kid_mean"], (space, name)
