"""``dcgen synth`` on the session's local Ray with debug checkpoints (freshly initialised networks: the job's
mechanics don't depend on the weights): exactly n scenes with the requested conditions, identical bytes for any
batch size, gates that reject and record, resuming after a SIGKILL of the driver, ``--serve``, bad inputs; the
gate statistics, the scenario file, ``dcgen export`` and ``dcgen bench synth``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.generate.batch import rejected_path
from dcgen.generate.conditions import SceneRequest
from dcgen.generate.gates import GateConfig, RealClips, batch_fid, calibrate, flicker, js_divergence, occupied_fraction
from dcgen.generate.job import Scenario, attempt_seed, scenario_for_kind
from dcgen.metrics.feature_stats import FeatureStats
from dcgen.metrics.fid import frechet_distance
from dcgen.runtime import scene_seed

runner = CliRunner()
DEBUG = GRIDS["debug"]
STEPS = "2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("synth-ckpt"))


def _synth(ckpts, out, *args) -> list[str]:
    vae, dit = ckpts
    return ["synth", "--vae", vae, "--dit", dit, "--out", str(out), "--steps", STEPS, "--guidance", "1",
            "--workers", "1", *args]


def _invoke(argv):
    result = runner.invoke(app, [str(a) for a in argv])
    return result, result.output  # stdout and stderr together


# ---- unit: seeds, scenario, gate statistics -------------------------------------------------------------------

def test_attempt_zero_is_the_scene_seed_and_attempts_differ():
    assert attempt_seed(7, 5, 0) == scene_seed(7, 5)
    seeds = {attempt_seed(7, k, a) for k in range(20) for a in range(3)}
    assert len(seeds) == 60


def test_scenario_pattern_follows_the_weights():
    s = Scenario.from_dict({"entries": [{"command": "left", "weight": 2}, {"command": 1}]})
    assert [s.entry_of(k) for k in range(6)] == [0, 0, 1, 0, 0, 1]
    assert s.entries[0].command == 2 and s.entries[1].model_conditions == ("command",)
    assert Scenario.from_dict(s.to_dict()) == s
    assert scenario_for_kind("inpaint", DEBUG, True).entries[0].inpaint == (16, 32, 0, 32)  # the half ahead
    assert scenario_for_kind("outpaint", DEBUG, True).entries[0].outpaint == 8
    assert scenario_for_kind("command", DEBUG, False).entries[0].command == "cycle"
    assert scenario_for_kind("command", DEBUG, True).entries[0].command == "source"
    with pytest.raises(ValueError, match="unknown condition kind 'left'; expected one of none, command"):
        scenario_for_kind("left", DEBUG, False)


@pytest.mark.parametrize("entries, message", [
    ([{"command": "left"}, {"guidance": -1}], "entries[1].guidance: -1 is less than the minimum of 0"),
    ([{"layout": "from-a-file"}], "entries[0].layout: 'source' was expected"),
    ([{"command": 7}], "entries[0].command: 7 is not valid"),
    ([{"colour": "red"}], "entries[0]: Additional properties are not allowed ('colour' was unexpected)"),
    ([{"inpaint": {"x": [0, 8], "y": [0, 8]}, "outpaint": {"shift": 8}}], "entries[0]: inpaint and outpaint are "
                                                                          "exclusive"),
    ([], "entries: [] should be non-empty"),
])
def test_scenario_schema_errors_name_entry_and_field(entries, message):
    with pytest.raises(ValueError) as e:
        Scenario.from_dict({"entries": entries}, what="scenario file s.json")
    assert message in str(e.value) and str(e.value).startswith("scenario file s.json: ")


def test_batch_fid_is_the_exact_frechet_distance():
    g = np.random.default_rng(0)
    ref = FeatureStats.from_features(g.normal(size=(200, 12)))
    batch = g.normal(0.3, 1.2, size=(8, 12))
    want = frechet_distance(ref, FeatureStats.from_features(batch))
    assert batch_fid(ref, batch) == pytest.approx(want, rel=1e-6)  # the D×D route adds sqrt(rounding) terms


def test_clip_statistics():
    occ = np.zeros((3, 4, 8, 8, 2), np.uint8)
    occ[1, :, :4] = 6  # half the voxels, static
    occ[2, ::2, :4] = 6  # flickers on and off every frame
    assert occupied_fraction(occ).tolist() == [0.0, 0.5, 0.25]
    assert flicker(occ).tolist() == [0.0, 0.0, 1.0]
    assert js_divergence([1, 0], [1, 0]) == 0.0 and js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_calibration_is_deterministic_and_keeps_explicit_thresholds():
    g = np.random.default_rng(1)
    clips = RealClips(g.integers(0, 100, (40, 11)), g.uniform(0.2, 0.4, 40), g.uniform(0.05, 0.1, 40))
    config = GateConfig(reference_data="real.zarr", thresholds={"flicker": 0.5}, draws=50)
    a = calibrate(config, clips, None, 8, seed=3)
    assert a == calibrate(config, clips, None, 8, seed=3)
    t = a["thresholds"]
    assert t["flicker"] == 0.5 and a["explicit"] == ["flicker"]
    assert t["min_occupied"] == pytest.approx(a["real_quantiles"]["min_occupied"] / 1.5)
    assert t["class_distance"] == pytest.approx(a["real_quantiles"]["class_distance"] * 1.5)
    with pytest.raises(ValueError, match="holds 10 clips; calibrating gates for batches of 8 needs at least 16"):
        calibrate(config, RealClips(clips.class_counts_NK[:10], clips.occupied_N[:10], clips.flicker_N[:10]), None,
                  8, seed=3)


# ---- the job ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layout_run(ray_local, ckpts, debug_city, tmp_path_factory):
    """12 layout-conditioned scenes (blocks of 8: the last one partial) by 2 workers, through the CLI."""
    out = tmp_path_factory.mktemp("layout") / "layout.zarr"
    result, text = _invoke(_synth(ckpts, out, "--n", "12", "--cond", "layout", "--source", debug_city,
                                  "--workers", "2"))
    assert result.exit_code == 0, text
    return out, text


def test_exactly_n_scenes_with_the_requested_conditions(layout_run, ckpts, debug_city):
    out, text = layout_run
    assert "12/12 scenes" in text and "gates: off" in text
    store = SceneStore.open(str(out))
    table = store.manifest().to_pylist()
    assert [r["index"] for r in table] == list(range(12)) and store.meta["num_clips"] == 12
    assert store.capacity == 12
    src = SceneStore.open(debug_city)
    idx = np.asarray(store.array("cond_source_index")[:])
    assert set(idx.tolist()) <= set(src.indices().tolist()) and len(set(idx.tolist())) == 12  # a permutation
    want = src.read(idx, ("layout",))["layout"]
    assert np.array_equal(np.asarray(store.array("cond_layout")[:]), want)
    assert all(r["conditions"] == "layout" and r["attempt"] == 0 and r["seed"] == scene_seed(0, r["index"])
               and r["source_index"] == idx[r["index"]] for r in table)
    # no trajectory requested and none estimated: unknown, said so
    assert all(r["trajectory_origin"] == "none" and r["command_origin"] == "none" for r in table)
    assert not np.asarray(store.array("trajectory")[:]).any()
    job = store.meta["provenance"]["job"]
    assert job["n"] == 12 and job["cond"] == "layout" and job["source"] == str(Path(debug_city).resolve())
    assert job["sampler"] == "dpm++" and job["steps"] == 2  # the default sampler, at the steps asked for
    assert job["trajectory_degree"] is None  # an ego-frame VAE: no trajectory slot, no ego-motion prior applied
    assert store.meta["provenance"]["checkpoints"]["dit"].startswith("dit-0-")
    assert set(store.array_names) >= {"occupancy", "cond_layout", "cond_source_index", "cond_guidance"}
    assert len({o.tobytes() for o in store.read(slice(0, 12), ("occupancy",))["occupancy"]}) == 12
    import jsonschema

    jsonschema.validate(store.meta, json.loads((ROOT / "schemas" / "scene-store.schema.json").read_text()))
    row_schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    for row in table:
        jsonschema.validate(row, row_schema)

    # the same command again: nothing to do; another command on the store: an error naming the difference
    result, text = _invoke(_synth(ckpts, out, "--n", "12", "--cond", "layout", "--source", debug_city))
    assert result.exit_code == 0 and "(0 new, 2 blocks already done)" in text, text
    result, text = _invoke(_synth(ckpts, out, "--n", "12", "--cond", "layout", "--source", debug_city,
                                  "--seed", "1"))
    assert result.exit_code == 2 and "holds another synth job (differs in seed: 0 -> 1)" in text, text


def test_a_vae_calibrated_since_is_named_as_why_the_store_cannot_be_continued(layout_run, ckpts, debug_city,
                                                                              tmp_path):
    from dcgen import checkpoint
    from dcgen.train.calibrate import calibrate_vae

    out, _ = layout_run
    vae, dit = ckpts
    calibrated = tmp_path / "vae-calibrated"
    calibrate_vae(vae, debug_city, calibrated, clips=4, voxels=1024)
    before = SceneStore.open(str(out)).read(slice(0, 12))
    argv = ("--n", "12", "--cond", "layout", "--source", debug_city)
    result, text = _invoke(_synth((calibrated, dit), out, *argv))
    text = " ".join(text.split())  # the error box wraps lines
    assert result.exit_code == 2 and "holds another synth job (differs in checkpoints" in text, text
    assert f"is the store's VAE {checkpoint.checkpoint_id(vae)} calibrated since" in text, text
    assert "--overwrite regenerates the store with it" in text, text
    after = SceneStore.open(str(out)).read(slice(0, 12))
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing written
    # another difference is not blamed on a calibration
    result, text = _invoke(_synth(ckpts, out, *argv, "--seed", "1"))
    assert result.exit_code == 2 and "calibrated since" not in text, text


def test_same_seed_gives_identical_bytes_with_different_batch_sizes(layout_run, ckpts, debug_city, tmp_path):
    out16 = tmp_path / "b16.zarr"
    result, text = _invoke(_synth(ckpts, out16, "--n", "16", "--cond", "layout", "--source", debug_city,
                                  "--batch-size", "16"))
    assert result.exit_code == 0, text
    a = SceneStore.open(str(layout_run[0])).read(slice(0, 12))
    b = SceneStore.open(str(out16)).read(slice(0, 12))
    for name in a:
        assert np.array_equal(a[name], b[name]), name

    # scene k is what the pipeline makes from scene_seed(seed, k), as 'dcgen sample' and the Serve endpoint do
    from dcgen.generate.pipeline import GenerationPipeline

    pipe = GenerationPipeline.from_checkpoints(*ckpts, device="cpu", micro_batch=8)
    k = 13
    req = SceneRequest(layout=np.asarray(SceneStore.open(str(out16)).array("cond_layout")[k]), guidance=1.0)
    alone = pipe.generate([req], [scene_seed(0, k)], steps=int(STEPS))
    assert np.array_equal(alone[0], SceneStore.open(str(out16)).read([k], ("occupancy",))["occupancy"][0])


def test_command_without_source_cycles_and_conditions_follow_the_scenario(debug_city):
    from dcgen.generate.job import SynthJob
    from dcgen.generate.synth_block import block_conditions, requests_from_conditions

    job = SynthJob(n=12, checkpoints={}, scenario=scenario_for_kind("command", DEBUG, False), batch_size=8,
                   grid=DEBUG.to_dict())
    cond = block_conditions(job, 1, None)
    assert cond["k"].tolist() == [8, 9, 10, 11] and cond["command"].tolist() == [0, 1, 2, 3]
    assert [r.command for r in requests_from_conditions(job, cond)] == [0, 1, 2, 3]
    src = SceneStore.open(debug_city)
    job = SynthJob(n=8, checkpoints={}, scenario=scenario_for_kind("extend", DEBUG, True), batch_size=8,
                   grid=DEBUG.to_dict(), source=debug_city, source_clips=src.num_clips, seed=4)
    cond = block_conditions(job, 0, src)
    pool = src.indices()
    assert cond["source_index"].tolist() == pool[job.source_permutation()[:8]].tolist()
    reqs = requests_from_conditions(job, cond)
    assert np.array_equal(reqs[3].prev_clip, src.read([cond["source_index"][3]], ("occupancy",))["occupancy"][0])
    assert reqs[3].command is None and reqs[3].source is None


def test_the_job_checks_steps_per_sampler():
    from dcgen.diffusion.samplers import DPMPP_STEPS
    from dcgen.generate.job import SynthJob

    base = {"n": 8, "checkpoints": {}, "scenario": scenario_for_kind("command", DEBUG, False), "grid": DEBUG.to_dict()}
    assert SynthJob(**base, sampler="dpm++", steps=10).steps == 10
    # a job that names no steps runs its sampler's usual number, and records it
    assert [SynthJob(**base, sampler=s).steps for s in ("dpm++", "ddim", "ddpm")] == [DPMPP_STEPS, 50, 50]
    assert SynthJob(**base).sampler == "dpm++" and SynthJob(**base).identity()["steps"] == 10
    assert SynthJob(**base, sampler="ddim", steps=1000).steps == 1000
    for steps in (1, 1000):  # DPM-Solver++ is multistep and needs a timestep past its last
        with pytest.raises(ValueError, match=rf"--steps {steps}: expected an integer in 2\.\.999 for --sampler "
                                             r"dpm\+\+"):
            SynthJob(**base, sampler="dpm++", steps=steps)
    with pytest.raises(ValueError, match=r"--steps 0: expected an integer in 1\.\.1000$"):
        SynthJob(**base, sampler="ddpm", steps=0)


def test_the_job_checks_and_keeps_the_trajectory_degree():
    from dcgen.generate.job import SynthJob, identity_difference

    base = {"n": 8, "checkpoints": {}, "scenario": scenario_for_kind("command", DEBUG, False), "grid": DEBUG.to_dict()}
    job = SynthJob(**base, trajectory_degree=2)
    assert SynthJob.from_dict(job.to_dict()).trajectory_degree == 2 and job.identity()["trajectory_degree"] == 2
    # the degree decides a scene's bytes: another one is another job
    assert identity_difference(job.to_dict(), SynthJob(**base, trajectory_degree=0).to_dict()) == [
        "trajectory_degree: 2 -> 0"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError) as e:
            SynthJob(**base, trajectory_degree=bad)
        assert str(e.value) == f"--trajectory-degree {bad!r}: expected 0 (off) or a polynomial degree >= 1"


def test_an_impossible_gate_rejects_records_and_continues_its_attempts(ray_local, ckpts, debug_city, tmp_path):
    out = tmp_path / "gated.zarr"
    argv = _synth(ckpts, out, "--n", "8", "--reference-data", debug_city, "--gate-min-occupied", "1.0")
    result, text = _invoke(argv + ["--max-attempts", "2"])
    assert result.exit_code == 1, text
    assert "0/8 scenes" in text and "blocks [0] failed their gates 2 times" in text
    assert SceneStore.open(str(out)).num_clips == 0
    rejected = SceneStore.open(rejected_path(str(out)))
    rows = rejected.manifest().to_pylist()
    assert [r["attempt"] for r in rows] == [0] * 8 + [1] * 8
    assert [r["index"] for r in rows] == list(range(8)) + list(range(8, 16))
    assert all(r["rejected_by"].split(",")[0] == "min_occupied" for r in rows)
    gate = json.loads(rows[0]["gate"])
    assert gate["thresholds"]["min_occupied"] == 1.0 and not gate["passed"] and "flicker" in gate["values"]
    assert rows[0]["seed"] != rows[8]["seed"] and rows[8]["seed"] == attempt_seed(0, 0, 1)
    assert not np.array_equal(rejected.read(slice(0, 1))["occupancy"], rejected.read(slice(8, 9))["occupancy"])

    # gates and the attempt limit are policy: the same job continues with a third attempt
    result, text = _invoke(argv + ["--max-attempts", "3"])
    assert result.exit_code == 1, text
    assert [r["attempt"] for r in SceneStore.open(rejected_path(str(out))).manifest().to_pylist()][-8:] == [2] * 8


@pytest.mark.slow
def test_killed_driver_resumes_to_exactly_n_without_duplicates(ray_local, ckpts, tmp_path):
    out = tmp_path / "killed.zarr"
    argv = _synth(ckpts, out, "--n", "40", "--cond", "command", "--seed", "3")
    env = {**os.environ, "TYPER_USE_RICH": "0"}
    proc = subprocess.Popen([sys.executable, "-c", "from dcgen.cli import app; app()", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out / "manifest"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed; make the job longer"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = sorted(parts.glob("part-*.parquet"))
    assert 1 <= len(before) < 5
    stamps = {p.name: p.stat().st_mtime_ns for p in before}
    result, text = _invoke(argv)
    assert result.exit_code == 0, text
    assert "blocks already done" in text
    store = SceneStore.open(str(out))
    idx = [r["index"] for r in store.manifest().to_pylist()]
    assert idx == list(range(40)) and store.meta["num_clips"] == 40
    assert all((parts / name).stat().st_mtime_ns == t for name, t in stamps.items()), "done blocks were rewritten"
    from dcgen.generate.pipeline import GenerationPipeline

    pipe = GenerationPipeline.from_checkpoints(*ckpts, device="cpu", micro_batch=8)
    ks = [0, 39]
    again = pipe.generate([SceneRequest(command=k % 4, guidance=1.0) for k in ks], [scene_seed(3, k) for k in ks],
                          steps=int(STEPS))
    assert np.array_equal(again, store.read(ks, ("occupancy",))["occupancy"])


def _feature_checkpoint(path) -> str:
    import torch

    from dcgen import checkpoint
    from dcgen.metrics.feature_nets import FeatureNetsConfig, build_feature_nets, model_state
    from dcgen.metrics.proxy_task import ProxyTask

    torch.manual_seed(0)
    cfg = FeatureNetsConfig.for_grid(DEBUG, ProxyTask(), render_size=32,
                                     image={"width": 8, "aux_size": 4},
                                     voxel={"widths": (8, 16), "bottleneck_dim": 8})
    nets = build_feature_nets(cfg)
    return str(checkpoint.save(path, kind="features", config=cfg.to_dict(), state={"model": model_state(nets)},
                               step=0))


def test_fid_kid_gates_record_their_numbers(ray_local, ckpts, debug_city, tmp_path):
    from dcgen.metrics.reference import make_reference

    features = _feature_checkpoint(tmp_path / "features")
    ref = tmp_path / "ref.npz"
    make_reference(debug_city, features, ref, device="cpu")
    out = tmp_path / "fid.zarr"
    loose = ["--gate-fid", "1e12", "--gate-kid", "1e12", "--gate-min-occupied", "0", "--gate-class-distance", "1",
             "--gate-flicker", "1"]
    result, text = _invoke(_synth(ckpts, out, "--n", "8", "--reference", ref, "--features", features, *loose))
    assert result.exit_code == 0, text
    rows = SceneStore.open(str(out)).manifest().to_pylist()
    gate = json.loads(rows[0]["gate"])
    assert gate["passed"] and set(gate["values"]) == {"fid_3d", "kid_3d", "min_occupied", "class_distance", "flicker"}
    assert gate["values"]["fid_3d"] > 0 and gate["thresholds"]["fid_3d"] == 1e12
    calibration = SceneStore.open(str(out)).meta["provenance"]["gates"]
    assert calibration["real_quantiles"]["fid_3d"] > 0 and calibration["explicit"] == sorted(
        ["class_distance", "fid_3d", "flicker", "kid_3d", "min_occupied"])

    # another feature network than the reference's: refused before generation
    other = _feature_checkpoint(tmp_path / "features2")
    from dcgen import checkpoint

    meta, state = checkpoint.load(other)
    state["model"]["voxel"] = {k: v + 1 for k, v in state["model"]["voxel"].items()}
    checkpoint.save(tmp_path / "features2", kind="features", config=meta["config"], state=state, step=0)
    result, text = _invoke(_synth(ckpts, tmp_path / "no.zarr", "--n", "8", "--reference", ref, "--features",
                                  tmp_path / "features2"))
    assert result.exit_code == 2 and "the reference was made with feature network" in text, text
    assert not (tmp_path / "no.zarr").exists()


# ---- bad input: errors before any generation ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.zarr"
    SceneStore.create(str(path), GRIDS["small"], source="test")
    return str(path)


@pytest.fixture(scope="module")
def command_only(tmp_path_factory):
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("cmd-ckpt"), conditions=("command",))


def _scenario(tmp_path, text: str, suffix: str = ".json") -> str:
    path = tmp_path / f"scenario-{len(list(tmp_path.glob('scenario-*')))}{suffix}"
    path.write_text(text)
    return str(path)


def test_bad_inputs_fail_before_any_generation(ckpts, command_only, debug_city, small_store, tmp_path):
    out = tmp_path / "never.zarr"
    cases = [
        (["--n", "8", "--cond", "sideways"], "unknown condition kind 'sideways'; expected one of none, command"),
        (["--n", "8", "--cond", "layout"], "--cond layout takes its conditions from a source clip; pass --source"),
        (["--n", "8", "--cond", "bev", "--source", small_store], f"--source {small_store}: its grid (T=16, "
                                                                 "XYZ=[64, 64, 8], K=11) is not the model's (T=4"),
        (["--n", "8", "--scenario", _scenario(tmp_path, '{"entries": [{"command": 1}, {"bev": "yes"}]}')],
         "entries[1].bev: 'source' was expected"),
        (["--n", "8", "--scenario", _scenario(tmp_path, "entries:\n  - command: left\n    weight: 0\n", ".yaml")],
         "entries[0].weight: 0 is less than the minimum of 1"),
        (["--n", "8", "--scenario", _scenario(tmp_path, "{not json")], "not valid JSON"),
        (["--n", "8", "--scenario", _scenario(tmp_path, '{"entries": [{"outpaint": {"shift": 3}}]}'),
          "--source", debug_city], "entries[0].outpaint.shift: 3 voxels; expected a multiple of 2"),
        (["--n", "8", "--gate-flicker", "0.5"], "quality gates need reference statistics"),
        (["--n", "8", "--reference", tmp_path / "missing.npz"], "FID/KID gates also need the feature network"),
        (["--n", "8", "--reference", tmp_path / "missing.npz", "--features", ckpts[0]],
         "missing.npz' does not exist"),
        (["--n", "8", "--batch-size", "12"], "--batch-size 12: expected a multiple of 8"),
        (["--n", "0"], "--n 0: expected an integer >= 1"),
        (["--n", "8", "--sampler", "euler"], "unknown sampler 'euler'"),
        (["--n", "8", "--sampler", "dpm++", "--steps", "1"], "--steps 1: expected an integer in 2..999 for --sampler "
         "dpm++"),
        (["--n", "8", "--trajectory-degree", "-1"], "--trajectory-degree -1: expected 0 (off) or a polynomial degree "
         ">= 1"),
        (["--n", "8", "--reference-data", debug_city, "--gate-min-occupied", "2"], "a fraction; expected a value"),
    ]
    for args, message in cases:
        result, text = _invoke(_synth(ckpts, out, *args))
        assert result.exit_code == 2 and message in text, (args, text)
        assert not out.exists(), args
    # a condition the DiT was not trained with, named by --cond or by the scenario entry
    vae, dit = command_only
    result, text = _invoke(["synth", "--vae", vae, "--dit", dit, "--out", out, "--n", "8", "--cond", "layout",
                            "--source", debug_city])
    assert result.exit_code == 2 and "--cond layout: layout: the DiT was not trained with the 'layout'" in text, text
    path = _scenario(tmp_path, '{"entries": [{"command": 1}, {"command": 2, "extend": true}]}')
    result, text = _invoke(["synth", "--vae", vae, "--dit", dit, "--out", out, "--n", "8", "--scenario", path,
                            "--source", debug_city])
    assert result.exit_code == 2 and "entries[1].extend: the DiT was not trained with the 'prev_clip'" in text, text
    assert not out.exists()


def test_without_guidance_each_scene_takes_its_conditions_default(ray_local, ckpts, debug_city, tmp_path):
    path = _scenario(tmp_path, json.dumps({"entries": [
        {"name": "layout", "layout": "source"},
        {"name": "layout+command", "layout": "source", "command": "left"},
        {"name": "command", "command": "left"},
        {"name": "own", "layout": "source", "guidance": 2.5},
    ]}))
    out = tmp_path / "auto.zarr"
    argv = [a for a in _synth(ckpts, out, "--n", "8", "--scenario", path, "--source", debug_city)]
    i = argv.index("--guidance")
    result, text = _invoke(argv[:i] + argv[i + 2:])  # no --guidance
    assert result.exit_code == 0, text
    store = SceneStore.open(str(out))
    rows = store.manifest().to_pylist()
    # a layout samples without guidance (1: one pass), the smallest scale of a request's conditions wins, a
    # command keeps SPEC's 4, an entry's own scale beats the default; each scene records the scale it used
    assert [r["guidance"] for r in rows[:4]] == [1.0, 1.0, 4.0, 2.5]
    assert np.asarray(store.array("cond_guidance")[:4]).tolist() == [1.0, 1.0, 4.0, 2.5]
    assert store.meta["provenance"]["job"]["guidance"] is None


def test_scenario_mixes_kinds_and_guidance(ray_local, ckpts, debug_city, tmp_path):
    path = _scenario(tmp_path, json.dumps({"entries": [
        {"name": "left", "command": "left", "guidance": 2.0, "weight": 2},
        {"name": "replay", "trajectory": "source", "bev": "source"},
        {"name": "edit", "inpaint": {"x": [16, 32], "y": [0, 32]}},
        {"name": "grow", "extend": True, "outpaint": {"shift": 8}},
    ]}))
    out = tmp_path / "mixed.zarr"
    result, text = _invoke(_synth(ckpts, out, "--n", "10", "--scenario", path, "--source", debug_city,
                                  "--estimate-trajectory"))
    assert result.exit_code == 0, text
    store = SceneStore.open(str(out))
    rows = store.manifest().to_pylist()
    assert [r["entry_name"] for r in rows[:5]] == ["left", "left", "replay", "edit", "grow"]
    assert [r["conditions"] for r in rows[:5]] == ["command", "command", "trajectory,bev", "inpaint",
                                                   "prev_clip,outpaint"]
    assert [r["guidance"] for r in rows[:3]] == [2.0, 2.0, 1.0]
    assert [r["trajectory_origin"] for r in rows[:4]] == ["estimated", "estimated", "requested", "estimated"]
    assert [r["command_origin"] for r in rows[:4]] == ["requested", "requested", "derived", "derived"]
    src = SceneStore.open(debug_city)
    k = 2
    clip = src.read([rows[k]["source_index"]], ("trajectory", "bev"))
    assert np.array_equal(store.array("cond_trajectory")[k], clip["trajectory"][0])
    assert np.array_equal(store.array("trajectory")[k], clip["trajectory"][0])  # the requested trajectory is kept
    assert np.array_equal(store.array("cond_bev")[k], clip["bev"][0])
    mask = np.asarray(store.array("cond_inpaint_mask")[3])
    assert mask[16:].all() and not mask[:16].any()
    assert int(store.array("cond_outpaint_shift")[4]) == 8 and rows[0]["source_index"] == -1
    occ = store.read([3], ("occupancy",))["occupancy"][0]
    source_occ = src.read([rows[3]["source_index"]], ("occupancy",))["occupancy"][0]
    assert occ.shape == source_occ.shape


# ---- export -------------------------------------------------------------------------------------------------------

def test_unified_ids_map_to_occ3d_and_back():
    from dcgen.data.classes import NUSCENES_TO_UNIFIED
    from dcgen.data.export import UNIFIED_TO_NUSCENES, quaternion_wxyz

    assert np.array_equal(NUSCENES_TO_UNIFIED[UNIFIED_TO_NUSCENES], np.arange(12))
    from dcgen.data.importers.source_format import pose_from_quaternion

    for yaw in (0.0, 0.7, -2.9, np.pi):
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        pose = pose_from_quaternion([1.0, 2.0, 0.0], quaternion_wxyz(rot), "pose")
        assert np.allclose(pose[:3, :3], rot, atol=1e-9)


def test_export_writes_per_frame_files(debug_city, tmp_path):
    src = SceneStore.open(debug_city)
    out = tmp_path / "occ3d"
    result, text = _invoke(["export", debug_city, "--format", "occ3d-npz", "--out", out, "--split", "val"])
    assert result.exit_code == 0, text
    ann = json.loads((out / "annotations.json").read_text())
    val = src.indices("val")
    assert ann["val_split"] == [f"clip-{i:09d}" for i in val] and ann["train_split"] == []
    i = int(val[0])
    clip = src.read([i], ("occupancy", "mask", "ego_pose"))
    token = f"{i:09d}-002"
    with np.load(out / "gts" / f"clip-{i:09d}" / token / "labels.npz") as f:
        from dcgen.data.classes import NUSCENES_TO_UNIFIED

        assert np.array_equal(NUSCENES_TO_UNIFIED[f["semantics"]], clip["occupancy"][0, 2])
        assert np.array_equal(f["mask_lidar"], clip["mask"][0, 2].astype(np.uint8))
    pose = ann["scene_infos"][f"clip-{i:09d}"][token]["ego_pose"]
    assert np.allclose(pose["translation"], clip["ego_pose"][0, 2, :3, 3], atol=1e-5)

    out2 = tmp_path / "npy"
    result, text = _invoke(["export", debug_city, "--format", "npy", "--out", out2])
    assert result.exit_code == 0 and f"exported {src.num_clips} clips" in text, text
    index = json.loads((out2 / "index.json").read_text())
    assert len(index["clips"]) == src.num_clips and json.loads((out2 / "classes.json").read_text())[6]["name"] == "road"
    row = index["clips"][3]
    frame = np.load(out2 / row["dir"] / "001.npy")
    assert np.array_equal(frame, src.read([row["index"]], ("occupancy",))["occupancy"][0, 1])

    result, text = _invoke(["export", debug_city, "--format", "npy", "--out", out2])
    assert result.exit_code == 2 and "exists and is not empty; pass --overwrite" in text
    result, text = _invoke(["export", debug_city, "--format", "ply", "--out", tmp_path / "x"])
    assert result.exit_code == 2 and "unknown export format 'ply'; expected one of occ3d-npz, npy" in text
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    result, text = _invoke(["export", debug_city, "--format", "npy", "--out", tmp_path / "home", "--overwrite"])
    assert result.exit_code == 2 and "not an earlier dcgen export" in text
    assert (tmp_path / "home" / "notes.txt").exists()


# ---- the ego-motion prior of a reference-frame VAE ------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_ckpts(tmp_path_factory):
    """Debug networks whose VAE works in the reference frame (the small preset's): it has a trajectory slot."""
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("synth-ref-ckpt"), frame="reference")


def test_trajectory_degree_is_applied_recorded_and_part_of_the_job(ray_local, reference_ckpts, tmp_path):
    import torch
    from dataclasses import replace

    from dcgen.generate.pipeline import GenerationPipeline

    out = tmp_path / "degree.zarr"
    argv = _synth(reference_ckpts, out, "--n", "8", "--cond", "command", "--seed", "5")
    result, text = _invoke(argv + ["--trajectory-degree", "1"])
    assert result.exit_code == 0, text
    store = SceneStore.open(str(out))
    job = store.meta["provenance"]["job"]
    assert job["trajectory_degree"] == 1 and job["sampler"] == "dpm++" and job["steps"] == 2
    got = store.read(slice(0, 8), ("occupancy",))["occupancy"]
    # the workers' scenes are the pipeline's at degree 1 (one thread, as Ray's workers run), not at the default's
    pipe = GenerationPipeline.from_checkpoints(*reference_ckpts, device="cpu", micro_batch=8)
    requests = [SceneRequest(command=k % 4, guidance=1.0) for k in range(8)]
    seeds = [scene_seed(5, k) for k in range(8)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        default = pipe.generate(requests, seeds, steps=int(STEPS))
        pipe.defaults = replace(pipe.defaults, trajectory_degree=1)
        linear = pipe.generate(requests, seeds, steps=int(STEPS))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(got, linear)
    assert all((a != b).any() for a, b in zip(linear, default))  # the degree shaped every scene's ego motion

    # the degree decides the bytes: continuing with another one (or the default) is refused, and a bad one is named
    # before anything is touched; the finished store stays as it was
    before = _tree(out)
    for extra, message in ((["--trajectory-degree", "2"], "differs in trajectory_degree: 1 -> 2"),
                           ([], "differs in trajectory_degree: 1 -> 3"),
                           (["--trajectory-degree", "-1"], "--trajectory-degree -1: expected 0 (off) or a polynomial "
                                                           "degree >= 1")):
        result, text = _invoke(argv + extra)
        assert result.exit_code == 2 and message in text, (extra, text)
    assert _tree(out) == before
    result, text = _invoke(argv + ["--trajectory-degree", "1"])  # the same job: nothing left to do
    assert result.exit_code == 0 and "(0 new, 1 blocks already done)" in text, text


# ---- --serve: the same bytes through a running Serve deployment ---------------------------------------------------

@pytest.mark.slow
def test_serve_mode_gives_the_same_scenes(ray_local, ckpts, tmp_path):
    from dcgen.bench.serve import free_port
    from ray import serve

    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.serve.app import start
    from dcgen.serve.config import ServeConfig

    vae, dit = ckpts
    start(ServeConfig(vae=vae, dit=dit, port=free_port(), micro_batch=8, max_batch_size=8, batch_wait_s=0.05,
                      app_name="dcgen-synth-test"))
    try:
        out = tmp_path / "served.zarr"
        result, text = _invoke(_synth(ckpts, out, "--n", "8", "--cond", "command", "--seed", "9", "--serve",
                                      "dcgen-synth-test"))
        assert result.exit_code == 0, text
        served = SceneStore.open(str(out)).read(slice(0, 8), ("occupancy",))["occupancy"]
        assert SceneStore.open(str(out)).meta["provenance"]["job"]["serve_app"] == "dcgen-synth-test"
        result, text = _invoke(_synth(ckpts, tmp_path / "x.zarr", "--n", "8", "--micro-batch", "4", "--serve",
                                      "dcgen-synth-test"))
        assert result.exit_code == 2 and "runs micro-batch 8 but the job asks for --micro-batch 4" in text, text
        result, text = _invoke(_synth(ckpts, tmp_path / "y.zarr", "--n", "8", "--serve", "no-such-app"))
        assert result.exit_code == 2 and "--serve no-such-app: no running Serve application" in text, text
    finally:
        serve.shutdown()
    # the deployment pads each batch to its bucket (1, 2, 4, 8 scenes, by what is queued), and CPU kernels may round
    # differently at another batch shape: classes must equal synth's wherever its top two logits are clearly apart
    # (every byte was equal on the CPU measured; tests/generate/test_buckets.py)
    pipe = GenerationPipeline.from_checkpoints(vae, dit, device="cpu", micro_batch=8)
    requests = [SceneRequest(command=k % 4, guidance=1.0) for k in range(8)]
    latents = pipe.sample_latents(requests, [scene_seed(9, k) for k in range(8)], steps=int(STEPS))
    logits = pipe.logits(latents, [None] * 8)
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()
    assert (~clear).mean() <= 0.05, f"{(~clear).mean():.2%} of voxels have no clear class"
    local = logits.argmax(1).numpy().astype(np.uint8)
    assert served.shape == local.shape and not ((served != local) & clear).any()


def test_perception_reader_example_reads_a_synth_store(layout_run):
    import importlib.util

    spec = importlib.util.spec_from_file_location("perception_reader", ROOT / "jobs" / "perception_reader.py")
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    path = str(layout_run[0])
    batch = next(iter(reader.torch_loader(path, batch_size=4)))
    assert tuple(batch["occupancy"].shape) == (4, *DEBUG.shape) and tuple(batch["trajectory"].shape) == (4, 4, 3)
    batch = next(iter(reader.ray_batches(path, batch_size=4, arrays=("occupancy", "cond_layout"))))
    assert tuple(batch["cond_layout"].shape) == (4, 4, 8, 8)
    assert reader.select_by_manifest(path, conditions="layout").tolist() == list(range(12))
    assert reader.select_by_manifest(path, conditions="command").size == 0


def _tree(path) -> dict:
    """Every file under ``path`` with its bytes: a store is unchanged when this is."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def test_a_damaged_source_clip_read_by_a_worker_is_named(ray_local, ckpts, debug_city, tmp_path):
    import shutil

    source = tmp_path / "source.zarr"
    shutil.copytree(debug_city, source)
    for chunk in (source / "bev" / "c").rglob("*"):  # found only by the condition reads, inside Ray Data
        if chunk.is_file():
            chunk.write_bytes(b"not a blosc chunk")
    out = tmp_path / "out.zarr"
    result, text = _invoke(_synth(ckpts, out, "--n", "8", "--cond", "bev", "--source", source))
    assert result.exit_code == 2, text
    # one error line (loggers that Ray bound to an earlier invoke's closed stream may add their own complaints)
    (line,) = [t for t in text.splitlines() if t.startswith("error:")]
    assert line.startswith(f"error: {source}: array 'bev', clip") and "stored bytes cannot be decoded" in line, text
    assert line.endswith("the 0 blocks finished in this run are kept: fix the cause and re-run the same command to "
                         "continue"), text
    assert SceneStore.open(str(out), "a").indices().size == 0  # the output store stays consistent and resumable


def test_a_checkpoint_carrying_pickled_objects_is_refused_before_any_ray_work(layout_run, ckpts, debug_city,
                                                                               tmp_path):
    from debug_models import damaged_checkpoint

    out, _ = layout_run
    before = _tree(out)
    vae, dit = ckpts
    bad_dit = damaged_checkpoint(dit, tmp_path / "dit", "pickled")
    bad_vae = damaged_checkpoint(vae, tmp_path / "vae", "pickled")
    for culprit, pair in ((bad_dit, (vae, bad_dit)), (bad_vae, (bad_vae, dit))):
        result, text = _invoke(_synth(pair, out, "--n", "12", "--cond", "layout", "--source", debug_city,
                                      "--workers", "2"))  # layout_run's command but for the checkpoint
        culprit = Path(culprit) / "state.pt"
        assert result.exit_code == 2, text
        # named in the driver: a worker's error would add "blocks finished", the changed job "holds another job"
        (line,) = [t for t in text.splitlines() if t.startswith("error:")]
        assert line == (f"error: {culprit}: checkpoint carries pickled objects (debug_models.PickledNote); "
                        "expected only tensors and plain containers (dcgen loads weights with "
                        "torch.load(weights_only=True) and never runs code from a checkpoint); re-save the "
                        "state_dicts alone"), text
    assert _tree(out) == before  # the finished store is untouched


def test_a_checkpoint_only_a_worker_can_reject_is_named_by_its_own_message(ray_local, ckpts, tmp_path):
    from debug_models import damaged_checkpoint

    bad_dit = damaged_checkpoint(ckpts[1], tmp_path / "dit", "missing_key")  # its keys are there: found in the actor
    out = tmp_path / "out.zarr"
    result, text = _invoke(["synth", "--vae", ckpts[0], "--dit", bad_dit, "--out", out, "--n", "8", "--steps", STEPS,
                            "--workers", "1"])
    assert result.exit_code == 2, text
    (line,) = [t for t in text.splitlines() if t.startswith("error:")]
    assert line.startswith(f"error: {bad_dit}: weights do not fit the model its config describes (Missing key(s) "
                           "in state_dict: "), text
    assert line.endswith("the 0 blocks finished in this run are kept: fix the cause and re-run the same command to "
                         "continue"), text
    assert SceneStore.open(str(out), "a").indices().size == 0


@pytest.mark.slow
def test_bench_synth_cli(ray_local, tmp_path):
    out = tmp_path / "bench-synth.json"
    result, text = _invoke(["bench", "synth", "--preset", "debug", "--n", "8", "--steps", "1", "--workers", "1",
                            "--workers", "2", "--out", out])
    assert result.exit_code == 0, text
    report = json.loads(out.read_text())
    assert [r["workers"] for r in report["runs"]] == [1, 2] and all(r["accepted"] == 8 for r in report["runs"])
    assert set(report["targets"]) == {"scaling_2_workers", "gate_share"}
    assert 0 < report["runs"][0]["gate_share"] < 1 and report["runs"][0]["bytes_per_scene"] > 0
    assert "target gate_share" in text
