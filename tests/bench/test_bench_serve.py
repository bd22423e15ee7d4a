"""``dcgen bench serve``'s report arithmetic: a level pooled from its ABBA halves, batched/unbatched ratios by
concurrency, issue 25's two targets (p50 latency at the lowest concurrency, throughput at the highest) and the
printed table. The benchmark itself needs a Serve and minutes; its options are checked in
tests/serve/test_serve_cli.py."""

from __future__ import annotations

import pytest

from dcgen.bench.serve import MAX_P50_RATIO, MIN_THROUGHPUT_RATIO, level_summary, ratios, table, targets


def _level(rps: float, p50: float, p99: float, batch: float = 1.0) -> dict:
    return {"requests_per_s": rps, "p50_latency_s": p50, "p99_latency_s": p99, "mean_batch_size": batch}


def test_ratios_targets_and_table():
    off = {"1": _level(4.0, 0.25, 0.30), "8": _level(4.0, 2.0, 2.5), "32": _level(4.0, 8.0, 9.0)}
    on = {"1": _level(3.6, 0.275, 0.33), "8": _level(6.0, 1.2, 1.5, 7.5), "32": _level(10.0, 3.0, 3.6, 30.0)}
    r = ratios(on, off)
    assert r["1"] == pytest.approx({"throughput": 0.9, "p50_latency": 1.1, "p99_latency": 1.1})
    assert r["32"] == pytest.approx({"throughput": 2.5, "p50_latency": 0.375, "p99_latency": 0.4})
    t = targets(r)
    assert t["p50_latency"] == {"concurrency": 1, "ratio": pytest.approx(1.1), "max": MAX_P50_RATIO, "met": True}
    assert t["throughput"] == {"concurrency": 32, "ratio": pytest.approx(2.5), "min": MIN_THROUGHPUT_RATIO,
                               "met": True}
    slow_alone = ratios({**on, "1": _level(1.0, 1.0, 1.2)}, off)
    assert not targets(slow_alone)["p50_latency"]["met"]
    text = table({"batched": {"levels": on}, "unbatched": {"levels": off}, "ratios": r, "targets": t})
    rows = text.splitlines()
    assert [row.split()[0] for row in rows[1:4]] == ["1", "8", "32"]
    assert rows[3].split()[-3:] == ["2.50", "0.38", "0.40"]
    assert rows[4] == "target: batched/unbatched p50 latency at c=1: 1.10x <= 1.2x: met"
    assert rows[5] == "target: batched/unbatched throughput at c=32: 2.50x >= 1x: met"


def test_a_level_pools_its_halves():
    first = {"latencies": [0.1, 0.2, 0.3, 0.4], "batch_sizes": [1, 1, 2, 2], "seconds": 1.0}
    second = {"latencies": [0.5, 0.6, 0.7, 0.8], "batch_sizes": [4, 4, 4, 4], "seconds": 3.0}
    got = level_summary(8, [first, second])
    assert got["requests"] == 8 and got["seconds"] == 4.0 and got["requests_per_s"] == 2.0
    assert got["p50_latency_s"] == pytest.approx(0.45) and got["mean_batch_size"] == 2.75
    assert 0.79 < got["p99_latency_s"] <= 0.8
