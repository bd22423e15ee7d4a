"""The project file (issue 26): ``dcgen init`` writes ``dcgen.yaml``; with it, ``dcgen train`` and ``dcgen synth``
run with no path options on the session's local Ray (debug preset), flags and ``--config`` win over it, a run on a
cluster gets its values as the file writes them, a bad file is refused naming its key, and a missing option without
a file says how to create one."""

from __future__ import annotations

import json
import re
import shutil
from itertools import pairwise
from pathlib import Path

import jsonschema
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from dcgen import checkpoint, jobs_client
from dcgen.cli import app
from dcgen.data.grid import PRESET_NAMES
from dcgen.data.store import SceneStore
from dcgen.project import COMMAND_OPTIONS, FILE_NAME, SCHEMA_FILE, load_project, write_project

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output  # stdout and stderr together


# ---- the file -------------------------------------------------------------------------------------------------

def test_init_writes_a_schema_valid_file_and_refuses_to_overwrite_it(tmp_path):
    proj = tmp_path / "proj"
    result, text = _invoke("init", proj, "--data", "stores/city.zarr", "--preset", "debug")
    assert result.exit_code == 0, text
    path = proj / FILE_NAME
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["properties"]["preset"]["enum"] == list(PRESET_NAMES)
    project = load_project(path)
    jsonschema.validate(project.keys, schema)
    assert project.keys == {"version": 1, "data": "stores/city.zarr", "preset": "debug", "runs": "runs",
                            "reference": "reference.npz", "outputs": {"synth": "synth.zarr", "sample": "samples.zarr"}}
    # paths relative to the file's directory; checkpoints under runs unless named
    assert project.local("data") == str(proj.resolve() / "stores" / "city.zarr")
    assert project.local("vae") == str(proj.resolve() / "runs" / "vae" / "best")
    assert project.written("features") == "runs/features/best" and project.local("preset") == "debug"
    # generation decodes with what `dcgen train` writes last into runs: its fine-tuned decoder
    assert project.local("decoder") == str(proj.resolve() / "runs" / "decoder" / "best")

    before = path.read_bytes()
    result, text = _invoke("init", proj, "--preset", "small")
    assert result.exit_code == 2 and f"{path} exists; pass --force to replace it" in text, text
    assert path.read_bytes() == before
    result, text = _invoke("init", proj, "--preset", "small", "--force")
    assert result.exit_code == 0, text
    assert load_project(path).keys["preset"] == "small"

    result, text = _invoke("init", tmp_path / "other", "--preset", "tiny")
    assert result.exit_code == 2, text
    assert "'preset': 'tiny' is not one of ['debug', 'small', 'carlasc', 'occ3d']" in text
    assert not (tmp_path / "other" / FILE_NAME).exists()


def test_every_filled_option_is_an_option_of_its_command():
    root = get_command(app)
    for command, options in COMMAND_OPTIONS.items():
        cmd = root
        for word in command.split():
            cmd = cmd.commands[word]
        takes = {p.name for p in cmd.params if p.param_type_name == "option"}
        assert set(options) <= takes, (command, set(options) - takes)


GOOD = 'version: 1\ndata: city.zarr\npreset: debug\nruns: runs\noutputs: {synth: synth.zarr}\n'


@pytest.mark.parametrize("text, message", [
    ("version: 1\ndata: [city.zarr\n", "not valid YAML"),
    ("- version: 1\n", "expected a mapping of keys (version: 1, data, preset, runs, ...), found a list"),
    ("data: city.zarr\n", "'version' is a required property (write 'version: 1' as its first line)"),
    (GOOD + "dataa: x\n", "unknown key 'dataa'; expected keys: data, decoder, description, dit, features, latents"),
    (GOOD + "outputs: {synt: x.zarr}\n", "unknown key 'outputs.synt'; expected keys of outputs: sample, synth"),
    ("version: 1\nruns: 3\n", "'runs': 3 is not of type 'string'"),
    ("version: 1\npreset: tiny\n", "'preset': 'tiny' is not one of ['debug', 'small', 'carlasc', 'occ3d']"),
    ("version: 2\n", "'version': 1 was expected"),
    (GOOD + "options: {synth: {steps: {a: 1}}}\n", "'options.synth.steps': {'a': 1} is not valid; expected a "
     "string, number, boolean or a list of them"),
    (GOOD + "options: {synt: {steps: 2}}\n", "options: 'synt' is not a dcgen command"),
    (GOOD + "options: {synth: {stepz: 2}}\n", "options.synth.stepz: 'dcgen synth' takes no such option here; "
     "expected one of batch_size, cond, estimate_trajectory"),
    (GOOD + "options: {synth: {overwrite: true}}\n", "options.synth.overwrite: 'dcgen synth' takes no such option"),
    (GOOD + "options: {synth: {vae: x}}\n", "options.synth.vae: 'dcgen synth --vae' comes from the project key "
     "'decoder'; set it there"),
    ("version: 1\ndecoder: ''\n", "'decoder': '' should be non-empty"),
    (GOOD + "options: {synth: {steps: many}}\n", "(from 'options.synth.steps' in the project file"),
])
def test_a_bad_project_file_is_refused_naming_the_key(tmp_path, monkeypatch, text, message):
    path = tmp_path / FILE_NAME
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    result, output = _invoke("synth", "--n", "8", "--cond", "layout")
    assert result.exit_code == 2, output
    assert message in " ".join(output.split()), output
    assert path.read_text() == text and not (tmp_path / "synth.zarr").exists()  # nothing written, nothing lost
    if "Invalid value" not in message:
        assert f"project file {path}" in output
    # `dcgen init` never reads the file it may replace
    result, output = _invoke("init", "--force")
    assert result.exit_code == 0 and load_project(path).keys["preset"] == "small", output


def test_a_missing_option_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dcgen.yaml here nor above
    result, text = _invoke("synth", "--n", "10000", "--cond", "layout")
    assert result.exit_code == 2, text
    flat = " ".join(text.split())
    assert "Missing option '--vae'. No project file names it (no dcgen.yaml in" in flat
    assert "create one with 'dcgen init --data STORE --preset PRESET', or pass --vae." in flat
    result, text = _invoke("train", "--cluster", "cluster.yaml")
    assert result.exit_code == 2, text
    assert "error: give --data STORE to run the whole pipeline, or a subcommand (vae, dit, ...). No project file " \
           "names it" in text and "or pass --data." in text
    result, text = _invoke("--project", tmp_path / "nope.yaml", "synth", "--n", "8")
    assert result.exit_code == 2 and "project file " in text and "nope.yaml: no such file" in text, text

    (tmp_path / FILE_NAME).write_text("version: 1\ndata: city.zarr\n")  # no runs, so no checkpoints
    result, text = _invoke("synth", "--n", "8", "--cond", "layout")
    assert result.exit_code == 2, text
    assert (f"Missing option '--vae'. The project file {tmp_path.resolve() / FILE_NAME} sets no 'decoder' (nor "
            "'runs' or 'vae', from which it defaults): add it there or pass --vae.") in " ".join(text.split())
    result, text = _invoke("encode")  # the training side takes 'vae', which has no third source
    assert result.exit_code == 2, text
    assert (f"Missing option '--vae'. The project file {tmp_path.resolve() / FILE_NAME} sets no 'vae' (nor 'runs', "
            "from which it defaults): add it there or pass --vae.") in " ".join(text.split())
    # a named input nothing has written yet says which command writes it, before any work
    (tmp_path / FILE_NAME).write_text("version: 1\ndata: city.zarr\nruns: runs\noutputs: {synth: s.zarr}\n")
    result, text = _invoke("synth", "--n", "8", "--cond", "layout")
    assert result.exit_code == 2, text
    flat = " ".join(text.split())
    assert (f"error: --vae {tmp_path.resolve() / 'runs' / 'decoder' / 'best'} (from 'decoder' in the project file "
            f"{tmp_path.resolve() / FILE_NAME}) is not there yet: 'dcgen train' (its decoder stage; a run with "
            "--decoder-epochs 0 has none: set 'decoder' to its VAE) writes it; or pass --vae") in flat
    # a value given on the command line is the user's, never blamed on the file (nor checked as its key)
    result, text = _invoke("eval", "fidelity", "--real", "elsewhere.zarr:val", "--fake", "gen.zarr",
                           "--features", "feats", "--out", "fid")
    assert "project file" not in text and "is not there yet" not in text, text

    assert not (tmp_path / "s.zarr").exists()
    # --project none reads no file
    result, text = _invoke("--project", "none", "train", "vae", "--dry-run")
    assert result.exit_code == 2 and "Missing option '--data'. No project file names it (--project none)" in text, text


# ---- a cluster gets the values as the file writes them ----------------------------------------------------------

def _context(words: str, args: list[str], project: Path):
    """The parsed context of ``dcgen --project PROJECT WORDS ARGS`` (nothing runs)."""
    cmd = get_command(app)
    ctx = cmd.make_context("dcgen", ["--project", str(project)])
    names = words.split()
    for name, sub in pairwise(names):
        cmd = cmd.commands[name]
        ctx = cmd.make_context(name, [sub], parent=ctx)  # a group given no subcommand may only print its help
    return cmd.commands[names[-1]].make_context(names[-1], args, parent=ctx)


def test_remote_runs_send_project_values_as_written(tmp_path):
    proj = tmp_path / "proj"
    write_project(proj, data="city.zarr", preset="debug", runs="runs",
                  options={"train": {"workers": 8, "gpus_per_worker": 1}, "synth": {"gate_slack": 4}})
    path = proj / FILE_NAME

    ctx = _context("train", ["--cluster", "cluster.yaml"], path)
    assert ctx.params["data"] == str(proj / "city.zarr") and ctx.params["out"] == str(proj / "runs")  # local
    assert jobs_client.command_line(ctx) == ["train", "--data", "city.zarr", "--preset", "debug", "--out", "runs",
                                             "--workers", "8", "--gpus-per-worker", "1"]

    ctx = _context("synth", ["--n", "10000", "--cond", "layout", "--dit", "/abs/dit", "--address", "http://h:8265"],
                   path)
    assert ctx.params["vae"] == str(proj / "runs" / "decoder" / "best")
    assert jobs_client.command_line(ctx) == [
        "synth", "--vae", "runs/decoder/best", "--dit", "/abs/dit", "--n", "10000", "--out", "synth.zarr", "--cond",
        "layout", "--source", "city.zarr", "--reference", "reference.npz", "--features", "runs/features/best",
        "--gate-slack", "4"]

    # a --config value wins over the project's and travels in its file, not as the project's flag
    config = tmp_path / "vae.yaml"
    config.write_text("data: other.zarr\n")
    ctx = _context("train vae", ["--config", str(config), "--cluster", "c.yaml"], path)
    assert ctx.params["data"] == "other.zarr"
    assert jobs_client.command_line(ctx) == ["train", "vae", "--preset", "debug", "--out", "runs/vae", "--config",
                                             str(config)]

    # object-storage URIs are sent and used as they are
    uri = tmp_path / "uri"
    write_project(uri, data="s3://bucket/city.zarr", preset="small", runs="s3://bucket/runs")
    ctx = _context("encode", ["--address", "http://h:8265"], uri / FILE_NAME)
    assert ctx.params["vae"] == "s3://bucket/runs/vae/best"
    assert jobs_client.command_line(ctx) == ["encode", "--vae", "s3://bucket/runs/vae/best", "--data",
                                             "s3://bucket/city.zarr", "--out", "s3://bucket/runs/latents.zarr"]


def test_generation_decodes_with_the_decoder_and_training_uses_the_vae(tmp_path):
    """sample, synth and serve fill --vae from 'decoder' (default RUNS/decoder/best, the pipeline's fine-tuned
    decoder); train dit, train decoder, encode and eval recon from 'vae'. A file that names its VAE but neither a
    decoder nor runs decodes with that VAE. The rule reads the file, never which checkpoints exist (none do here)."""
    proj = tmp_path / "proj"
    path = write_project(proj, data="city.zarr", preset="debug", runs="runs")
    generation = {"sample": ["--n", "4"], "synth": ["--n", "8", "--cond", "layout"], "serve": []}
    training = {"train dit": [], "train decoder": [], "encode": [], "eval recon": ["--out", "recon"]}

    def filled(text: str) -> dict[str, str]:
        # the commands' other inputs and outputs
        path.write_text(text + "data: c.zarr\nlatents: l.zarr\ndit: d\noutputs: {sample: s.zarr, synth: x.zarr}\n")
        # Click parses a list of arguments in place: each call gets its own copy
        return {w: _context(w, list(args), path).params["vae"] for w, args in {**generation, **training}.items()}

    def expect(decodes: str, trains: str) -> dict[str, str]:
        return {**{w: str(proj / decodes) for w in generation}, **{w: str(proj / trains) for w in training}}

    assert filled(path.read_text()) == expect("runs/decoder/best", "runs/vae/best")
    # the explicit-VAE rule: a project that names its VAE decodes with it unless it names a decoder
    assert filled("version: 1\nvae: models/vae/best\n") == expect("models/vae/best", "models/vae/best")
    assert load_project(path).written("decoder") == "models/vae/best"
    assert filled("version: 1\nvae: models/vae/best\ndecoder: models/dec/best\n") == expect("models/dec/best",
                                                                                            "models/vae/best")
    # with runs the decoder is the pipeline's, whichever VAE the file names (that VAE's 'train decoder' writes it)
    assert filled("version: 1\nruns: r\nvae: models/vae/best\n") == expect("r/decoder/best", "models/vae/best")
    assert _context("train decoder", [], path).params["out"] == str(proj / "r" / "decoder")
    # a cluster gets the decoder as the file writes it
    filled("version: 1\nvae: models/vae/best\ndecoder: models/dec/best\n")
    ctx = _context("sample", ["--n", "4", "--address", "http://h:8265"], path)
    assert jobs_client.command_line(ctx)[:5] == ["sample", "--vae", "models/dec/best", "--dit", "d"]
    assert load_project(path).written("decoder") == "models/dec/best"
    assert load_project(path).missing("decoder") == "sets no 'decoder' (nor 'runs' or 'vae', from which it defaults)"


# ---- a project on the local Ray -------------------------------------------------------------------------------

def test_a_project_file_drives_train_and_synth(ray_local, tmp_path, monkeypatch, debug_city, debug_vae,
                                               debug_latents, debug_features):
    """`dcgen train`, `dcgen eval reference` and `dcgen synth --n 8 --cond layout` with no path options: the VAE,
    latents and feature networks are in the project's runs already (their stages skip), the DiT trains one epoch and
    the decoder stage fine-tunes the VAE's decoder one epoch on Ray Train; synth decodes with that decoder."""
    from dcgen.train.calibrate import is_calibrated
    from dcgen.train.pipeline import train_pipeline

    proj = tmp_path / "proj"
    runs = proj / "runs"
    shutil.copytree(debug_vae, runs / "vae" / "best")
    shutil.copytree(debug_latents, runs / "latents.zarr")
    shutil.copytree(debug_features, runs / "features" / "best")
    loose = {"gate_fid": 1e12, "gate_kid": 1e12, "gate_min_occupied": 0, "gate_class_distance": 1,
             "gate_flicker": 1}
    write_project(proj, data=debug_city, preset="debug", options={
        "train": {"dit_epochs": 1, "decoder_epochs": 1}, "synth": {"steps": 2, "guidance": 1, "workers": 1, **loose}})
    (proj / "work").mkdir()
    monkeypatch.chdir(proj / "work")  # the file is found in a parent directory

    # flags win: a dry run shows the project's values, and the flag where one is given
    result, text = _invoke("train", "vae", "--dry-run")
    assert result.exit_code == 0, text
    options = json.loads(text)["options"]
    assert (options["data"], options["preset"], options["out"]) == (debug_city, "debug", str(runs / "vae"))
    result, text = _invoke("train", "vae", "--dry-run", "--out", "elsewhere", "--epochs", "3")
    assert result.exit_code == 0, text
    assert json.loads(text)["options"]["out"] == "elsewhere" and json.loads(text)["run"]["epochs"] == 3

    result, text = _invoke("train")
    assert result.exit_code == 0, text
    assert f"vae: {runs / 'vae' / 'best'} exists, skipping" in text
    assert f"encode: {runs / 'latents.zarr'} is complete, skipping" in text
    assert f"pipeline done in {runs}" in text
    assert json.loads((runs / "dit" / "best" / "meta.json").read_text())["kind"] == "dit"
    decoder = runs / "decoder" / "best"
    assert f"decoder: fine-tuning {runs / 'vae' / 'best'}'s decoder into {runs / 'decoder'} (epochs: 1)" in text
    meta = checkpoint.read_meta(decoder, kind="vae")  # a decoder checkpoint is a VAE's, its encoder kept
    assert meta["train"]["freeze_encoder"] and meta["train"]["epochs"] == 1
    # the VAE trained before decode calibration is calibrated where it is (its latent space kept), and so is the
    # fine-tuned decoder when its stage ends
    assert f"calibrated {runs / 'vae' / 'best'} -> {runs / 'vae' / 'best'}" in text
    assert is_calibrated(runs / "vae" / "best") and is_calibrated(decoder)
    assert re.search(r"decoder: done \(.*\); decode calibrated: largest class-share error \d+% -> [\d.]+%",
                     " ".join(text.split()))
    assert checkpoint.latent_space_id(runs / "vae" / "best") == checkpoint.checkpoint_id(debug_vae)
    assert checkpoint.latent_space_id(decoder) == checkpoint.checkpoint_id(debug_vae)
    assert checkpoint.checkpoint_id(decoder) != checkpoint.checkpoint_id(runs / "vae" / "best")
    assert f"generate with --vae {decoder} --dit {runs / 'dit' / 'best'}" in " ".join(text.split())

    # a second run finds every stage done, the decoder's included, and trains nothing
    decoder_id = checkpoint.checkpoint_id(decoder)
    lines: list[str] = []
    summary = train_pipeline(debug_city, "debug", runs, log=lines.append)
    assert f"decoder: {decoder} exists, skipping" in lines and not any("training into" in line for line in lines)
    assert summary["decoder"] == summary["sampling_vae"] == str(decoder)
    assert summary["stages"]["decoder"] == {"skipped": True, "best": str(decoder)}
    assert checkpoint.checkpoint_id(decoder) == decoder_id

    result, text = _invoke("eval", "reference")
    assert result.exit_code == 0, text
    assert (proj / "reference.npz").is_file()

    result, text = _invoke("synth", "--n", "8", "--cond", "layout", "--steps", "2")
    assert result.exit_code == 0, text
    store = SceneStore.open(str(proj / "synth.zarr"))
    job = store.meta["provenance"]["job"]
    assert store.num_clips == 8 and job["steps"] == 2 and job["guidance"] == 1  # the flag beat the file's 2
    assert job["source"] == debug_city and job["vae"] == str(decoder)  # generation decodes with the decoder
    assert job["checkpoints"]["vae"] == decoder_id
    assert job["dit"] == str(runs / "dit" / "best") and job["gates"]["reference"] == str(proj / "reference.npz")
    assert checkpoint.checkpoint_id(runs / "dit" / "best") == job["checkpoints"]["dit"]
    assert json.loads(store.manifest().to_pylist()[0]["gate"])["passed"]
