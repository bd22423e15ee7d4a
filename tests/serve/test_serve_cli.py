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


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from dcgen.bench.serve import write_untrained_checkpoints

    return write_untrained_checkpoints("debug", tmp_path_factory.mktemp("serve-cli-ckpt"))


def test_serve_refuses_a_checkpoint_carrying_pickled_objects_before_starting(ckpts, tmp_path):
    from debug_models import damaged_checkpoint

    vae, dit = ckpts
    bad = damaged_checkpoint(dit, tmp_path / "dit", "pickled")
    result = runner.invoke(app, ["serve", "--vae", vae, "--dit", bad])  # never reaches Ray: no session needed
    assert result.exit_code == 2, result.output
    (line,) = [t for t in result.output.splitlines() if t.startswith("error:")]
    assert line == (f"error: {bad}/state.pt: checkpoint carries pickled objects (debug_models.PickledNote); expected "
                    "only tensors and plain containers (dcgen loads weights with torch.load(weights_only=True) and "
                    "never runs code from a checkpoint); re-save the state_dicts alone")


def test_serve_names_the_checkpoint_a_model_replica_could_not_load(ray_local, ckpts, tmp_path):
    from dcgen.bench.serve import free_port
    from debug_models import damaged_checkpoint
    from ray import serve

    vae, dit = ckpts
    bad = damaged_checkpoint(dit, tmp_path / "dit", "missing_key")  # its keys are there: found in the replica
    try:
        result = runner.invoke(app, ["serve", "--vae", vae, "--dit", bad, "--port", str(free_port())])
    finally:
        serve.shutdown()
    assert result.exit_code == 2, result.output
    # one error line (loggers that Ray bound to an earlier invoke's closed stream may add their own complaints)
    (line,) = [t for t in result.output.splitlines() if t.startswith("error:")]
    assert line.startswith(f"error: the SceneModel deployment could not start: {bad}: weights do not fit the model "
                           "its config describes (Missing key(s) in state_dict: "), line
