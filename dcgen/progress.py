"""Progress of a long stage on stderr: a live bar on a terminal, a plain line every ~10 s anywhere else.

Every stage that runs longer than a few seconds (training a model, encode, sample, synth, import, synth-city,
feature extraction) opens one ``Progress`` and calls ``update(done, **fields)`` as it goes: how much is done and
the numbers worth watching (epoch, loss, accepted scenes). Rate and ETA follow from the pace since the first update
that moved the count, so a resumed run's earlier steps and a stage's start-up (workers, actors) do not distort them.
On a terminal rich (already a dependency, through Typer) draws the bar; elsewhere (CI, a log file, a Ray Job's log)
a plain line is printed at the first update, then at most every ``DCGEN_PROGRESS_INTERVAL`` seconds (default 10),
and once at the end, so a log tells a run that works from one that hangs::

    [train vae] step 120/400 (30%) · epoch 2/10 · loss 0.532 · 4.10 step/s · ETA 1m08s
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, TextIO

INTERVAL_ENV = "DCGEN_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def interval_from_env() -> float:
    """Seconds between two plain progress lines: ``DCGEN_PROGRESS_INTERVAL`` or 10."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{INTERVAL_ENV}={text!r}: expected the seconds between two progress lines, a number >= 0")
    return value


def format_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h04m``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(per_second: float, unit: str) -> str:
    """``4.10 step/s`` for fast stages, ``12.3 s/step`` for slow ones (a debug CPU step takes seconds)."""
    if per_second >= 1.0:
        return f"{per_second:.2f} {unit}/s"
    return f"{1.0 / per_second:.1f} s/{unit}"


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """One stage's progress on ``stream`` (stderr): ``update`` as work is done, ``close`` (or leave the ``with``
    block) when the stage ends. ``live`` draws a bar (default: when ``stream`` is a terminal); otherwise plain lines
    every ``interval`` seconds (default: ``interval_from_env()``)."""

    def __init__(self, name: str, total: int | None = None, unit: str = "step", *, done: int = 0,
                 stream: TextIO | None = None, interval: float | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.unit, self.done = name, total, unit, done
        self.fields: dict = {}
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval_from_env() if interval is None else float(interval)
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) if live is None else live
        self._clock = clock
        self._start = clock()
        self._initial = done
        self._first: tuple[float, int] | None = None  # (time, done) of the first update that moved the count
        self._printed: float | None = None
        self.closed = False
        self._bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(),
                                     TextColumn("{task.fields[text]}", markup=False),
                                     console=Console(file=self.stream), refresh_per_second=2)
            self._task = self._bar.add_task(f"[{name}]", total=total, completed=done, text=self.text())
            self._bar.start()

    # ---- numbers ----
    def rate(self, now: float | None = None) -> float:
        """Units per second since the first update that moved the count (nan until another one moved it on)."""
        if self._first is None:
            return math.nan
        now = self._clock() if now is None else now
        t, d = self._first
        return (self.done - d) / (now - t) if now > t and self.done > d else math.nan

    def eta(self, now: float | None = None) -> float:
        """Seconds left at the current pace (nan when the total or the pace is unknown)."""
        r = self.rate(now)
        if self.total is None or not r > 0:
            return math.nan
        return max(self.total - self.done, 0) / r

    def text(self, now: float | None = None, final: bool = False) -> str:
        """The line after the name: count, fields, rate, ETA (at the end: the time taken)."""
        now = self._clock() if now is None else now
        if self.total:
            parts = [f"{self.unit} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"]
        else:
            parts = [f"{self.done} {self.unit}s"]
        parts += [f"{k.replace('_', ' ')} {_value(v)}" for k, v in self.fields.items() if v is not None]
        # at the end, the whole stage's pace: work that lands in bursts (blocks finishing together) would make the
        # pace between two late updates look hundreds of times faster than it was
        r = (self.done - self._initial) / (now - self._start) if final and now > self._start else self.rate(now)
        if r > 0:
            parts.append(format_rate(r, self.unit))
        if final:  # a stage that ends short of its total (a deadline, an error) says so
            ended = "done in" if self.total is None or self.done >= self.total else "stopped after"
            parts.append(f"{ended} {format_duration(now - self._start)}")
        elif self.total is not None:
            parts.append(f"ETA {format_duration(self.eta(now))}")
        return " · ".join(parts)

    # ---- updates ----
    def update(self, done: int | None = None, *, advance: int = 0, total: int | None = None, **fields) -> None:
        """Set the count (``done``) or move it (``advance``), the total if it changed, and fields to show (they stay
        shown until changed; ``None`` hides one)."""
        if self.closed:
            return
        now = self._clock()
        if total is not None:
            self.total = total
        if done is not None:
            self.done = int(done)
        self.done += int(advance)
        self.fields.update(fields)
        if self._first is None and self.done != self._initial:
            self._first = (now, self.done)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, text=self.text(now))
        elif self._printed is None or now - self._printed >= self.interval:
            self._line(self.text(now))
            self._printed = now

    def close(self) -> None:
        """End the stage: the bar stays drawn at its last state, or a last plain line says where it ended."""
        if self.closed:
            return
        self.closed = True
        text = self.text(final=True)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, text=text)
            self._bar.stop()
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
