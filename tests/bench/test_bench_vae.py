"""``dcgen bench vae``: every variant measured in one run with ratios to Projection+ESS, codec throughput, JSON
from the CLI, and bad options refused before any process starts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dcgen.bench.vae import VARIANTS, bench_vae, variant_name
from dcgen.cli import app


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        bench_vae("huge")
    with pytest.raises(ValueError, match="need batch size >= 1, iters >= 1, warmup >= 0; got 0, 6, 2"):
        bench_vae("debug", batch_size=0)
    with pytest.raises(ValueError, match="unknown preset 'wide'"):
        bench_vae("debug", widths="wide")


def test_cpu_bf16_is_refused_on_a_cpu_without_bf16_kernels(monkeypatch):
    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: False)
    with pytest.raises(ValueError, match="--cpu-bf16: this CPU .* has no bf16 kernels"):
        bench_vae("debug", device="cpu", cpu_bf16=True)


def test_widths_of_another_preset_keep_the_grid():
    from dcgen.bench.vae import bench_config
    from dcgen.presets import get_preset

    cfg = bench_config("small", "carlasc", decoder="query")
    assert cfg.shape == get_preset("small").vae.shape and cfg.decoder == "query"
    assert (cfg.decoder_hidden, cfg.query_hidden) == (get_preset("carlasc").vae.decoder_hidden,
                                                      get_preset("carlasc").vae.query_hidden)
    # the SPEC's architecture at those widths: two heads, no lift norm (the small preset has one head and the norm)
    assert (cfg.projection_heads, cfg.lift_norm) == (2, False)


def test_cpu_tensor_peak_counts_what_is_live_at_once():
    import torch

    from dcgen.bench.vae import cpu_tensor_peak

    kept = torch.zeros(1 << 20)  # live before: not counted, and its free inside counts as never freed

    def step():
        nonlocal kept
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(2 << 20)  # 8 MiB, with a: 12 MiB at once
        del a, b
        c = torch.ones(2 << 20)  # 8 MiB, after they are freed
        kept = None
        del c

    peak = cpu_tensor_peak(step)
    assert 12 << 20 <= peak < (12 << 20) + (64 << 10)


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_training_step_runs_in_the_precision_asked(cpu_bf16, monkeypatch):
    import torch

    monkeypatch.setattr("dcgen.train.context.cpu_runs_bf16", lambda: True)  # the bf16 path on any CI CPU

    from dcgen.bench.vae import _TrainingStep

    step = _TrainingStep("debug", None, "projection", "ess", 1, "cpu", 1, cpu_bf16=cpu_bf16)
    seen = []
    step.model.decoder.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in step.model.parameters()]
    assert step() > 0
    assert seen == [torch.bfloat16 if cpu_bf16 else torch.float32]
    assert all(p.dtype == torch.float32 for p in step.model.parameters())  # autocast, not a bf16 model
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))


def test_cli_error_is_one_line():
    res = CliRunner().invoke(app, ["bench", "vae", "--preset", "huge"])
    assert res.exit_code == 2 and res.output.strip().startswith("error: unknown preset 'huge'")


@pytest.mark.slow
def test_debug_bench_measures_every_variant(tmp_path):
    out = tmp_path / "bench-vae.json"
    res = CliRunner().invoke(app, ["bench", "vae", "--preset", "debug", "--iters", "1", "--warmup", "0",
                                   "--batch-size", "1", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {variant_name(p, d) for p, d in VARIANTS}
    ref = result["variants"]["projection+ess"]
    assert ref["time_ratio"] == 1.0 and ref["memory_ratio"] == 1.0
    for v in result["variants"].values():
        assert v["s_per_iter"] > 0 and v["peak_step_bytes"] > 0 and len(v["iter_seconds"]) == 1
    # the variants differ only in the pooling and decoder, so the parameter counts differ
    assert len({v["parameters"] for v in result["variants"].values()}) == 4
    assert result["encode_clips_per_s"] > 0 and result["decode_clips_per_s"] > 0
    assert result["ess_vs_query"]["projection"]["time"] == pytest.approx(
        ref["s_per_iter"] / result["variants"]["projection+query"]["s_per_iter"])
    assert result["precision"] == "float32" and "float32" in res.output
    assert "ESS vs Query" in res.output
