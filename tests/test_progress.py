"""Progress of long stages (``dcgen.progress``): plain lines outside a terminal, rate-limited, with rate and ETA
from the pace since the count first moved; and what a user sees of a Ray Train + Ray Data command: its progress,
and none of Ray's own log lines."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dcgen.progress import Progress, format_duration, interval_from_env


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_plain_lines_are_rate_limited_and_the_last_line_is_printed_at_the_end():
    clock, out = Clock(), io.StringIO()
    bar = Progress("train vae", total=30, stream=out, interval=10, live=False, clock=clock)
    for step in range(1, 26):  # one step a second
        clock.now = float(step)
        bar.update(step, epoch=f"{step // 10 + 1}/3")
    # the first update, then one line per 10 s: at steps 1, 11, 21
    assert [re.match(r"\[train vae\] step (\d+)/30", line).group(1) for line in lines(out)] == ["1", "11", "21"]
    bar.close()
    bar.update(26)  # after close: ignored
    final = lines(out)[-1]
    assert len(lines(out)) == 4
    assert final.startswith("[train vae] step 25/30 (83%) · epoch 3/3 · 1.00 step/s")
    assert final.endswith("stopped after 25s")  # short of its total: not "done"


def test_rate_and_eta_count_only_what_this_run_did():
    clock, out = Clock(), io.StringIO()
    bar = Progress("train dit", total=1000, done=600, stream=out, interval=0, live=False, clock=clock)
    clock.now = 30.0  # workers starting: no step yet, no pace
    bar.update(workers="starting")
    assert lines(out)[-1] == "[train dit] step 600/1000 (60%) · workers starting · ETA ?"
    clock.now = 40.0
    bar.update(601, workers=None)  # a resumed run's first step: the pace starts here, not at 600 steps in 40 s
    assert "ETA ?" in lines(out)[-1] and "workers" not in lines(out)[-1]
    clock.now = 60.0
    bar.update(641, loss=0.123456)
    assert lines(out)[-1] == "[train dit] step 641/1000 (64%) · loss 0.1235 · 2.00 step/s · ETA 3m00s"
    assert bar.eta() == pytest.approx(359 / 2.0)
    clock.now = 240.0
    bar.update(1000)
    bar.close()
    assert lines(out)[-1].endswith("· done in 4m00s")


def test_slow_stages_show_seconds_per_unit_and_unknown_totals_count_up():
    clock, out = Clock(), io.StringIO()
    with Progress("synth", unit="scene", stream=out, interval=0, live=False, clock=clock) as bar:
        bar.update(advance=8)
        clock.now = 24.0
        bar.update(advance=8, rejected=3)
    assert lines(out)[1] == "[synth] 16 scenes · rejected 3 · 3.0 s/scene"
    # the last line gives the whole stage's pace: 16 scenes in 24 s
    assert lines(out)[-1] == "[synth] 16 scenes · rejected 3 · 1.5 s/scene · done in 24s"


def test_the_last_line_is_not_fooled_by_blocks_that_finish_together():
    clock, out = Clock(), io.StringIO()
    with Progress("synth", total=16, unit="scene", stream=out, interval=0, live=False, clock=clock) as bar:
        clock.now = 10.99
        bar.update(advance=8)  # two parallel blocks of 8 land 10 ms apart after 11 s of work
        clock.now = 11.0
        bar.update(advance=8)
    assert lines(out)[-1] == "[synth] scene 16/16 (100%) · 1.45 scene/s · done in 11s"


def test_on_a_terminal_rich_draws_the_bar_and_leaves_its_last_state():
    out = io.StringIO()
    with Progress("encode", total=5, unit="clip", stream=out, live=True) as bar:
        for k in range(5):
            bar.update(k + 1)
    assert "[encode]" in out.getvalue() and "clip 5/5 (100%)" in out.getvalue() and "done in" in out.getvalue()


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 240)] == ["0s", "59s", "1m01s", "59m59s",
                                                                                 "2h04m"]
    assert format_duration(float("nan")) == "?"


@pytest.mark.parametrize("text", ["abc", "-1", "inf"])
def test_a_bad_interval_is_refused_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv("DCGEN_PROGRESS_INTERVAL", text)
    with pytest.raises(ValueError, match=f"DCGEN_PROGRESS_INTERVAL='{text}': expected the seconds between two"):
        interval_from_env()
    monkeypatch.setenv("DCGEN_PROGRESS_INTERVAL", "0.5")
    assert interval_from_env() == 0.5


def test_the_command_line_refuses_a_bad_interval_before_writing_anything(monkeypatch, tmp_path):
    from dcgen.cli import app

    monkeypatch.setenv("DCGEN_PROGRESS_INTERVAL", "ten")
    out = tmp_path / "city.zarr"
    res = CliRunner().invoke(app, ["data", "synth-city", "--clips", "8", "--preset", "debug", "--out", str(out)])
    assert res.exit_code == 2
    assert "error: DCGEN_PROGRESS_INTERVAL='ten': expected the seconds between two progress lines" in res.output
    assert not out.exists()


def test_a_local_training_context_shows_the_loops_progress_on_its_bar():
    from dcgen.train.context import LocalContext

    out = io.StringIO()
    with Progress("eval downstream", stream=out, interval=0, live=False) as bar:
        LocalContext(progress=bar).progress(3, 10, run="1/2", loss=0.5)
        LocalContext().progress(4, 10)  # no bar: nothing shown
    assert lines(out)[0] == "[eval downstream] step 3/10 (30%) · run 1/2 · loss 0.5 · ETA ?"


# ---- a real command: Ray Train + Ray Data, as a user runs it ---------------------------------------------------

RAY_LINES = re.compile(r"core_worker\.cc|\(raylet\)|\[repeated|INFO worker\.py|WARNING \w+\.py:\d+ --|"
                       r"ERROR \w+\.py:\d+ --|Traceback|pid=\d+\)|ray\.data|ray_remote_args")


@pytest.mark.slow
def test_training_and_encoding_show_progress_and_no_ray_log_line(tmp_path):
    """``dcgen data synth-city`` (Ray tasks), ``dcgen train vae`` (Ray Train over a Ray Data read) and ``dcgen encode``
    (a Ray Data actor pool), with stderr a pipe as in CI: the stages' progress lines are there, Ray's own log lines
    are not."""
    from debug_models import write_city_store

    city = write_city_store(tmp_path / "city.zarr", num_scenes=5)  # 8 train clips (2 steps of 4), 2 val
    commands = [["data", "synth-city", "--clips", "8", "--preset", "debug", "--out", str(tmp_path / "city2.zarr")],
                ["train", "vae", "--data", city, "--preset", "debug", "--epochs", "1", "--out", str(tmp_path / "vae")],
                ["encode", "--vae", str(tmp_path / "vae" / "best"), "--data", city, "--out",
                 str(tmp_path / "latents.zarr"), "--batch-size", "4"]]
    # both commands in one process, one Ray start (as the quickstart runs its stages)
    script = ("import json, sys\nfrom dcgen.cli import app\nfor args in json.loads(sys.argv[1]):\n"
              "    try:\n        app(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n")
    env = {**os.environ, "DCGEN_PROGRESS_INTERVAL": "0", "TYPER_USE_RICH": "0"}
    env.pop("DCGEN_VERBOSE", None)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], env=env, capture_output=True,
                         text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "VAE trained" in run.stdout and "encoded 10 clips" in run.stdout, run.stdout
    err = run.stderr.splitlines()
    noise = [line for line in err if RAY_LINES.search(line)]
    assert not noise, "Ray's own log lines reached stderr:\n" + "\n".join(noise[:20])
    train = [line for line in err if line.startswith("[train vae] ")]
    assert any(re.match(r"\[train vae\] step 1/2 \(50%\) · epoch 1/1 · loss \d", line) for line in train), train
    assert re.match(r"\[train vae\] step 2/2 \(100%\) · epoch 1/1 · loss [\d.]+ · val miou [\d.]+ · .*done in",
                    train[-1]), train[-1]
    encode = [line for line in err if line.startswith("[encode] ")]
    assert encode and re.match(r"\[encode\] clip 10/10 \(100%\) · .*done in", encode[-1]), encode
    city_lines = [line for line in err if line.startswith("[synth-city] ")]
    assert city_lines and "done in" in city_lines[-1], city_lines
    assert set(err) == set(train) | set(encode) | set(city_lines), \
        [line for line in err if line not in train + encode + city_lines]

