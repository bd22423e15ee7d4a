"""`dcgen serve` and `dcgen bench serve` refuse bad options with one-line errors before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dcgen.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["--host", "example.org"], "host 'example.org' is not an IP address"),
    (["--port", "70000"], "port: 70000; expected an integer 1..65535"),
    (["--max-batch-size", "0"], "max_batch_size: 0"),
    (["--token-env", "DCGEN_CLI_TEST_UNSET"], "DCGEN_CLI_TEST_UNSET is not set or empty"),
    ([], "not a dcgen checkpoint"),
])
def test_serve_rejects_bad_options(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("DCGEN_CLI_TEST_UNSET", raising=False)
    result = runner.invoke(app, ["serve", "--vae", str(tmp_path / "vae"), "--dit", str(tmp_path / "dit"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bench_serve_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["bench", "serve", "--concurrency", "1,x"])
    assert result.exit_code == 2 and "expected comma-separated integers" in result.output
    result = runner.invoke(app, ["bench", "serve", "--vae", str(tmp_path), "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "give both --vae and --dit" in result.output
