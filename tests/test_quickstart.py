"""The quickstart's sizes and its refusals (the full run is the README's first command, minutes long)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.quickstart import QUICKSTART_SIZES, QuickstartConfig


def test_sizes_follow_the_preset_and_the_overrides():
    assert QuickstartConfig().sizes() == QUICKSTART_SIZES["debug"]
    clips, *_, scenes, _ = QuickstartConfig(clips=64, scenes=24).sizes()
    assert (clips, scenes) == (64, 24)


@pytest.mark.parametrize("options, message", [
    ({"preset": "huge"}, "quickstart preset 'huge'; expected one of debug, small"),
    ({"clips": 10}, "--clips 10: the quickstart needs at least 32 clips"),
    ({"scenes": 12}, "--scenes 12: expected a positive multiple of 8"),
])
def test_bad_sizes_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        QuickstartConfig(**options).sizes()


def test_cli_refuses_bad_sizes_before_writing_anything(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--scenes", "5"])
    assert result.exit_code == 2 and "--scenes 5: expected a positive multiple of 8" in result.output
    assert not out.exists()


def test_fidelity_stage_scores_layout_and_unconditional_scenes_on_a_city_never_seen(debug_city, debug_vae, debug_dit,
                                                                                     debug_features, tmp_path,
                                                                                     monkeypatch):
    import json

    from dcgen.data.store import SceneStore
    from dcgen.generate.sample_store import sample_to_store
    from dcgen.quickstart import HELDOUT_CLIPS, fidelity_stage

    layout = tmp_path / "scenes.zarr"  # stands in for synth's gated layout-conditioned scenes
    sample_to_store(debug_vae, debug_dit, str(layout), n=8, cond={}, sources={"layout": debug_city}, split="train",
                    sampler="ddim", steps=2)
    cfg = QuickstartConfig(out=str(tmp_path), seed=3)
    result = fidelity_stage(tmp_path, cfg, {"vae": debug_vae, "dit": debug_dit}, debug_features, layout, scenes=8,
                            steps=2)
    heldout = SceneStore.open(result["heldout"])
    assert heldout.num_clips == HELDOUT_CLIPS and heldout.meta["provenance"]["seed"] == 4  # another city: seed + 1
    uncond = SceneStore.open(result["uncond"])
    assert uncond.num_clips == 8 and set(uncond.manifest().column("conditions").to_pylist()) == {""}
    reports = {name: json.loads((Path(result[name]) / "report.json").read_text())
               for name in ("layout", "unconditional")}
    for report in reports.values():
        assert report["real"]["split"] == "val" and report["num_clips"] == 8
        assert report["fake"]["pure_noise_clips"] == 8
    assert "reconstruction" in reports["layout"]["objects"]  # the VAE's ceiling, once
    table = Path(result["table"]).read_text()
    rows = [line[:24].strip() for line in table.splitlines()]
    for label in ("real A (reference)", "real B (real-vs-real)", "generated, layout", "generated, uncond",
                  "VAE reconstruction"):
        assert label in rows, label
    # a second run keeps the unconditional scenes of the same checkpoints and sampler, and makes anew those of
    # another sampler (an earlier quickstart's)
    from dcgen.generate import sample_store

    def no_sampling(*args, **kwargs):
        raise AssertionError("the unconditional scenes of these checkpoints and this sampler were sampled again")

    with monkeypatch.context() as patch:
        patch.setattr(sample_store, "sample_to_store", no_sampling)
        fidelity_stage(tmp_path, cfg, {"vae": debug_vae, "dit": debug_dit}, debug_features, layout, scenes=8,
                       steps=2)
    fidelity_stage(tmp_path, cfg, {"vae": debug_vae, "dit": debug_dit}, debug_features, layout, scenes=8, steps=3)
    assert SceneStore.open(result["uncond"]).meta["provenance"]["steps"] == 3
    # a store there that 'dcgen sample' did not make is refused, and left whole
    import shutil

    shutil.rmtree(result["uncond"])
    shutil.copytree(debug_city, result["uncond"])
    with pytest.raises(ValueError, match="holds a scene store not made by 'dcgen sample'"):
        fidelity_stage(tmp_path, cfg, {"vae": debug_vae, "dit": debug_dit}, debug_features, layout, scenes=8,
                       steps=2)
    assert SceneStore.open(result["uncond"]).num_clips == SceneStore.open(debug_city).num_clips


def test_a_synth_store_of_another_job_is_stale_and_one_of_the_same_job_is_continued(ray_local, debug_city, debug_vae,
                                                                                    debug_dit, tmp_path):
    import shutil

    from dcgen.generate.batch import run_synth
    from dcgen.generate.job import build_job
    from dcgen.quickstart import stale_synth

    job = build_job(vae=debug_vae, dit=debug_dit, n=8, cond="layout", source=debug_city, steps=2, workers=1)
    scenes = tmp_path / "scenes.zarr"
    assert stale_synth(scenes, job) == ""  # nothing there yet
    run_synth(job, str(scenes), overwrite=False)
    assert stale_synth(scenes, job) == ""  # the same job: run_synth continues it
    other = build_job(vae=debug_vae, dit=debug_dit, n=8, cond="layout", source=debug_city, sampler="ddim", steps=2,
                      workers=1)
    assert stale_synth(scenes, other) == 'sampler: "dpm++" -> "ddim"'
    city = shutil.copytree(debug_city, tmp_path / "city.zarr")  # not a synth store: left to run_synth to refuse
    assert stale_synth(city, other) == ""
    with pytest.raises(ValueError, match="was not made by 'dcgen synth'"):
        run_synth(other, str(city), overwrite=False)
