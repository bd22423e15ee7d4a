"""--dry-run prints a training command's resolved options and run without writing anything; --config reads such
a printout (or any JSON/YAML mapping of option names) back, options on the command line winning."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dcgen.cli import app

runner = CliRunner()


def test_dry_run_then_config_round_trip(debug_city, tmp_path):
    out = tmp_path / "vae-run"
    result = runner.invoke(app, ["train", "vae", "--data", debug_city, "--preset", "debug", "--out", str(out),
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["dry_run"] and printed["run"]["epochs"] == 2 and printed["options"]["preset"] == "debug"
    assert printed["run"]["model"]["size"] == [32, 32, 4] and not out.exists()  # nothing written
    printed["options"]["epochs"] = 5
    saved = tmp_path / "vae.json"
    saved.write_text(json.dumps(printed))
    again = json.loads(runner.invoke(app, ["train", "vae", "--config", str(saved), "--dry-run"]).output)
    assert again["run"]["epochs"] == 5 and again["options"]["data"] == debug_city
    flag_wins = runner.invoke(app, ["train", "vae", "--config", str(saved), "--epochs", "7", "--dry-run"])
    assert json.loads(flag_wins.output)["run"]["epochs"] == 7
    yaml_file = tmp_path / "vae.yaml"
    yaml_file.write_text(f"data: {debug_city}\npreset: debug\nout: {out}\nbatch-size: 3\n")
    from_yaml = json.loads(runner.invoke(app, ["train", "vae", "--config", str(yaml_file), "--dry-run"]).output)
    assert from_yaml["run"]["batch_size"] == 3 and not out.exists()


def test_bad_config_files_name_the_key_or_the_file(debug_city, tmp_path):
    bad_key = tmp_path / "bad.json"
    bad_key.write_text(json.dumps({"data": debug_city, "epoch": 3}))
    result = runner.invoke(app, ["train", "vae", "--config", str(bad_key), "--dry-run"])
    assert result.exit_code == 2 and "unknown options ['epoch']" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text("{epochs: ")
    result = runner.invoke(app, ["train", "dit", "--config", str(broken), "--dry-run"])
    assert result.exit_code == 2 and "broken.json: not valid JSON" in result.output
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    result = runner.invoke(app, ["train", "features", "--config", str(listed), "--dry-run"])
    assert result.exit_code == 2 and "expected a mapping of option names to values" in result.output
    result = runner.invoke(app, ["train", "vae", "--data", debug_city, "--preset", "small", "--dry-run"])
    assert result.exit_code == 2 and "does not match the model preset 'small'" in result.output
