"""The HTML of ``dcgen report``: one self-contained page (no request leaves it: images are ``data:`` URIs, charts are
inline SVG drawn here, the style sheet is inline), built from sections that each say which command produced them
and what is absent and how to produce it.

Every piece of text that comes from a file (paths, metric names, run configs) goes through ``html.escape``.
Charts are drawn by hand rather than with matplotlib, which is not a dependency: a training curve is a polyline
with one vertex per logged row, so a reader (or a test) can count the rows in the page.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Sequence

# curve colours: distinguishable for the common colour-vision deficiencies (Okabe-Ito)
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")
MAX_MARKED_POINTS = 40  # fewer points than this get a dot each (an epoch's validation row is worth seeing)

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d2430;
       background: #eef1f5; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 20px 40px; }
header h1 { font-size: 24px; margin: 6px 0 2px; }
header p { margin: 2px 0; color: #4a5568; }
section { background: #fff; border: 1px solid #d9dee6; border-radius: 8px; padding: 14px 18px; margin: 16px 0; }
h2 { font-size: 19px; margin: 0 0 8px; }
h3 { font-size: 16px; margin: 16px 0 6px; }
.produced { margin: 4px 0 10px; }
.produced span { color: #4a5568; font-size: 13px; }
pre.cmd { background: #1d2430; color: #e6edf5; padding: 7px 10px; border-radius: 5px; margin: 3px 0;
          white-space: pre-wrap; word-break: break-all; font: 13px/1.4 "DejaVu Sans Mono", monospace; }
pre.text { background: #f6f8fa; border: 1px solid #e1e5eb; padding: 8px 10px; border-radius: 5px;
           font: 12px/1.35 "DejaVu Sans Mono", monospace; overflow-x: auto; }
.absent { background: #fff8e6; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 8px 0;
          color: #5c4a12; }
.note { color: #4a5568; font-size: 13px; margin: 4px 0; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e5eb; border-radius: 4px; display: block; }
figcaption { font-size: 13px; color: #4a5568; margin-top: 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.figs { display: flex; gap: 12px; align-items: flex-start; }
.figs figure { flex: 1 1 0; min-width: 0; }
.row { display: flex; flex-wrap: wrap; gap: 10px 36px; align-items: flex-start; }
.charts svg { border: 1px solid #e1e5eb; border-radius: 4px; background: #fff; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e6e9ee; padding: 3px 9px; white-space: nowrap; }
th { background: #f3f5f8; }
.txt { text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.minor td { color: #6b7585; }
"""


@dataclass
class Section:
    """One block of the page: its title, the commands that produced what it shows, the HTML of its body, and
    ``(what is absent, the command that would produce it)`` lines."""

    title: str
    commands: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    absent: list[tuple[str, str | None]] = field(default_factory=list)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(mime: str, data: bytes, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri(mime, data)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def commands_html(commands: Sequence[str]) -> str:
    if not commands:
        return ""
    return ('<div class="produced"><span>produced by</span>'
            + "".join(f'<pre class="cmd">{esc(c)}</pre>' for c in commands) + "</div>")


def absent_html(what: str, command: str | None) -> str:
    how = f'<br>to produce it: <pre class="cmd">{esc(command)}</pre>' if command else ""
    return f'<div class="absent">absent: {esc(what)}{how}</div>'


def table(header: Sequence[str], rows: Sequence[Sequence], minor: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are escaped as text. ``minor`` marks rows drawn in grey (context, not results)."""
    # a column of numbers ("-" where one does not apply) is right-aligned, header included; any other is left
    kinds = ["num" if any(str(r[j]) != "-" for r in rows) and all(_numeric(r[j]) for r in rows) else "txt"
             for j in range(len(header))]
    head = "".join(f'<th class="{k}">{esc(h)}</th>' for k, h in zip(kinds, header))
    body = []
    for i, row in enumerate(rows):
        cls = ' class="minor"' if minor is not None and minor[i] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{k}">{esc(c)}</td>' for k, c in zip(kinds, row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _numeric(cell) -> bool:
    if isinstance(cell, (int, float)) or cell == "-":
        return True
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


def fmt(value, spec: str = ".4g") -> str:
    """A number as the report prints it; None (a metric that does not apply) as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, spec)


# ---- charts ----------------------------------------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (about ``count`` of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"tick range [{lo}, {hi}]: expected finite numbers with lo <= hi")
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < hi - step * 1e-9 or len(ticks) < 2:  # the last tick at or above hi: every point inside
        ticks.append(round(start + len(ticks) * step, 12))
    return ticks


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, x_label: str,
               width: int = 580, height: int = 270) -> str:
    """An inline SVG of ``(name, xs, ys)`` series: one ``<polyline>`` per series with one vertex per point.
    Non-finite points are left out and counted in the chart's caption line."""
    if not series:
        raise ValueError(f"chart {title!r}: expected at least one series, got none")
    left, right, top, bottom = 62, 16, 30, 44
    kept, dropped = [], 0
    for name, xs, ys in series:
        if len(xs) != len(ys):
            raise ValueError(f"chart {title!r}, series {name!r}: {len(xs)} x values but {len(ys)} y values")
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(x)) and math.isfinite(float(y))]
        dropped += len(xs) - len(pts)
        kept.append((name, pts))
    all_pts = [p for _, pts in kept for p in pts]
    if not all_pts:
        raise ValueError(f"chart {title!r}: no finite point in any series")
    x_ticks = nice_ticks(min(p[0] for p in all_pts), max(p[0] for p in all_pts))
    y_ticks = nice_ticks(min(p[1] for p in all_pts), max(p[1] for p in all_pts))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" class="chart">',
           f'<text x="{left}" y="18" font-size="13" font-weight="600" fill="#1d2430">{esc(title)}</text>']
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e6e9ee"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" font-size="11" text-anchor="end" '
                   f'fill="#4a5568">{esc(fmt(t, ".4g"))}</text>')
    for t in x_ticks:
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#8a94a3"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 17}" font-size="11" text-anchor="middle" '
                   f'fill="#4a5568">{esc(fmt(t, ".6g"))}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#8a94a3"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" font-size="12" text-anchor="middle" '
               f'fill="#4a5568">{esc(x_label)}</text>')
    labels = [f"{name} ({len(pts)})" for name, pts in kept]
    legend_x = left + pw - sum(7 * len(label) + 26 for label in labels)  # left to right in series order
    for i, (name, pts) in enumerate(kept):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{esc(name)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.8" points="{coords}"/>')
        if len(pts) <= MAX_MARKED_POINTS:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{colour}"/>' for x, y in pts]
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 14}" y1="14" y2="14" stroke="{colour}" '
                   f'stroke-width="2.5"/>')
        out.append(f'<text x="{legend_x + 18}" y="18" font-size="11" fill="#1d2430">{esc(labels[i])}</text>')
        legend_x += 7 * len(labels[i]) + 26
    if dropped:
        out.append(f'<text x="{left + 4}" y="{top + 14}" font-size="11" fill="#b42318">{dropped} non-finite '
                   "values not drawn</text>")
    out.append("</svg>")
    return "".join(out)


# ---- the page ----------------------------------------------------------------------------------------------------

def page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole document: a header (``intro`` lines as text), then every section in order."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>",
             f"<header><h1>{esc(title)}</h1>" + "".join(f"<p>{esc(line)}</p>" for line in intro) + "</header>"]
    for s in sections:
        parts.append(f'<section><h2>{esc(s.title)}</h2>{commands_html(s.commands)}{"".join(s.body)}'
                     + "".join(absent_html(what, cmd) for what, cmd in s.absent) + "</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
