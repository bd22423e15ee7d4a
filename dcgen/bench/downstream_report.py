"""The downstream benchmark's report: run results grouped into curves over seeds, the issue's targets and the gates'
value (paired seed by seed: every arm of a seed shares its real clips and initial weights), and for people a
one-screen table and a PNG of mIoU against real clip count.

The plot has a line per arm and ratio (real-only black, real + augmentation grey, real + generated and
generated-only in one colour per synthetic pool, the ratio told apart by the dash), error bars of one standard
deviation over seeds, and the controls as horizontal reference lines (leak: the ceiling a model reaches on clips it
trained on; shuffled targets and the input-blind prior: the no-information floor). Drawn with Pillow, a dependency
already (matplotlib is not installed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ARM_ORDER = ("real", "real+aug", "real+gen", "gen", "leak", "shuffled")
TARGET_COUNT, TARGET_RATIO = 64, 4.0  # the real(64) + generated(256)
TARGET_GEN_FRACTION, TARGET_GAIN_POINTS = 0.8, 2.0


# ---- from run results to the report's numbers -----------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def curves(results: list[dict]) -> list[dict]:
    """Results grouped by (arm, pool, ratio, count) with mean and standard deviation over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["arm"], r["pool"], r["ratio"], r["count"]), []).append(r)
    arm_rank = {a: i for i, a in enumerate(ARM_ORDER)}
    out = []
    for (arm, pool, ratio, count), rs in sorted(groups.items(), key=lambda kv: (
            arm_rank[kv[0][0]], kv[0][1] or "", kv[0][2] or 0.0, kv[0][3])):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"arm": arm, "pool": pool, "ratio": ratio, "count": count, "seeds": [r["seed"] for r in rs],
               "real_clips": rs[0]["real_clips"], "synthetic_clips": rs[0]["synthetic_clips"]}
        for key in ("miou", "completion_iou", "miou_all_voxels", "completion_iou_all_voxels"):
            row[key] = [r[key] for r in rs]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(row[key])
        row["per_class_iou"] = [r.get("per_class_iou") or {} for r in rs]
        names = dict.fromkeys(name for ious in row["per_class_iou"] for name in ious if name != "free")
        row["per_class_iou_mean"] = {name: _mean_std([ious.get(name) for ious in row["per_class_iou"]])[0]
                                     for name in names}
        out.append(row)
    return out


def class_gaps(a: dict | None, b: dict | None) -> list[dict]:
    """Per class, ``a - b`` IoU in points, seed by seed, most negative first: where one arm trails the other
    (a class not scored in both arms of a seed is left out of that seed)."""
    if a is None or b is None:
        return []
    by_seed = dict(zip(b["seeds"], b["per_class_iou"]))
    diffs: dict[str, list[float]] = {}
    for seed, ious in zip(a["seeds"], a["per_class_iou"]):
        other = by_seed.get(seed, {})
        for name, iou in ious.items():
            if name != "free" and iou is not None and other.get(name) is not None:
                diffs.setdefault(name, []).append(100 * (iou - other[name]))
    gaps = [dict(zip(("class", "points", "std"), (name, *_mean_std(v)))) for name, v in diffs.items()]
    return sorted(gaps, key=lambda g: g["points"])


def find_curve(rows: list[dict], arm: str, pool: str | None, ratio: float | None, count: int) -> dict | None:
    for row in rows:
        if (row["arm"], row["pool"], row["ratio"], row["count"]) == (arm, pool, ratio, count):
            return row
    return None


def paired_difference(a: dict | None, b: dict | None, key: str = "miou") -> dict | None:
    """``a - b`` in points, seed by seed (both arms of a seed share real clips and initial weights)."""
    if a is None or b is None:
        return None
    by_seed = dict(zip(b["seeds"], b[key]))
    diffs = [100 * (x - by_seed[s]) for s, x in zip(a["seeds"], a[key]) if s in by_seed]
    mean, std = _mean_std(diffs)
    return {"points": diffs, "mean": mean, "std": std}


def step_bound_flags(rows: list[dict]) -> list[str]:
    """Warnings where the real arm scores lower with more real clips (seed by seed, its subsets are nested): its runs
    are then too short for the data they hold, and in that regime added data of any kind (copies or generated) can
    only dilute the steps spent on the real clips, so the mixed arms' gaps say little about the data's value."""
    real = sorted((r for r in rows if r["arm"] == "real"), key=lambda r: r["count"])
    flags = []
    for small, large in zip(real, real[1:]):
        diff = paired_difference(large, small)
        if diff is not None and diff["mean"] is not None and diff["mean"] < 0:
            flags.append(f"step-bound: real-only scores lower with {large['count']} real clips than with "
                         f"{small['count']} ({100 * large['miou_mean']:.1f} against {100 * small['miou_mean']:.1f} "
                         f"mIoU %, {diff['mean']:+.1f} points seed by seed): the runs are too short for the data, so "
                         "added clips of any kind mostly dilute the real ones; raise --steps to measure their value")
    return flags


def targets(rows: list[dict], pools: list[str], counts: tuple[int, ...], ratios: tuple[float, ...],
            seeds: tuple[int, ...]) -> dict:
    """The issue's targets, at real(64) + ratio 4 when swept, else at the largest count and ratio swept."""
    n = TARGET_COUNT if TARGET_COUNT in counts else max(counts)
    r = TARGET_RATIO if TARGET_RATIO in ratios else max(ratios)
    out = {"count": n, "ratio": r, "seeds": {"value": len(seeds), "target": 2, "met": len(seeds) >= 2}, "pools": {}}
    real = find_curve(rows, "real", None, None, n)
    aug = find_curve(rows, "real+aug", None, r, n)
    for pool in pools:
        gen, mix = find_curve(rows, "gen", pool, None, n), find_curve(rows, "real+gen", pool, r, n)
        entry = {}
        if gen and real and gen["miou_mean"] is not None and real["miou_mean"]:
            frac = gen["miou_mean"] / real["miou_mean"]
            entry["gen_only_fraction"] = {"value": frac, "target": TARGET_GEN_FRACTION,
                                          "met": frac >= TARGET_GEN_FRACTION,
                                          "missed_by": max(0.0, TARGET_GEN_FRACTION - frac)}
        diff = paired_difference(mix, aug)
        if diff and diff["mean"] is not None:
            entry["gain_over_augmentation"] = {
                "points": diff["mean"], "std": diff["std"], "per_seed": diff["points"],
                "target": TARGET_GAIN_POINTS, "met": diff["mean"] >= TARGET_GAIN_POINTS,
                "missed_by": max(0.0, TARGET_GAIN_POINTS - diff["mean"]),
                "exceeds_spread": diff["std"] is not None and diff["mean"] > diff["std"],
                "by_class": class_gaps(mix, aug)}
        out["pools"][pool] = entry
    return out


def gate_value(rows: list[dict], gated: str, ungated: str, n: int, ratios: tuple[float, ...]) -> dict:
    """Gated minus ungated mIoU (points, seed by seed) for each arm that uses generated data, at count ``n``."""
    out = {"gated_pool": gated, "ungated_pool": ungated, "count": n, "arms": []}
    for arm, ratio in [("real+gen", r) for r in ratios] + [("gen", None)]:
        diff = paired_difference(find_curve(rows, arm, gated, ratio, n), find_curve(rows, arm, ungated, ratio, n))
        out["arms"].append({"arm": arm, "ratio": ratio, "gated_minus_ungated": diff})
    return out


def jsonable(x):
    """``x`` with NaN and infinities as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return jsonable(x.item())
    return x


# ---- the table --------------------------------------------------------------------------------------------------

POOL_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
DASHES = (None, (10, 5), (3, 4), (14, 4, 3, 4))


def _pct(mean, std=None, width: int = 0) -> str:
    if mean is None:
        return "n/a".rjust(width)
    text = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
    return text.rjust(width)


def scored_clips(report: dict, path_width: int | None = None) -> str:
    """Which clips every arm was scored on: ``N held-out real clips (split S of STORE)``, or ``(the first N of the M
    in split S of STORE)`` under a cap; a store path longer than ``path_width`` keeps its end, which names it."""
    ev = report["eval"]
    path = ev["path"]
    if path_width is not None and len(path) > path_width:
        path = "..." + path[len(path) - path_width + 3:]
    first = f"the first {ev['clips']} of the {ev['split_clips']} in " if ev["clips"] < ev["split_clips"] else ""
    return f"{ev['clips']} held-out real clips ({first}split {ev['split']} of {path})"


def format_table(report: dict) -> str:
    """The report's numbers on one screen (mIoU in percent, mean ± std over seeds)."""
    cfg, rows = report["config"], report["curves"]
    counts = cfg["real_counts"]
    lines = [f"downstream SSC benchmark ({report['preset']}): mIoU % on {scored_clips(report)}, mean ± std over "
             f"seeds {','.join(map(str, cfg['seeds']))}",
             f"every run {cfg['steps']} steps x batch {cfg['batch_size']}; n real clips, real+aug / real+gen add "
             f"ratio x n clips, gen trains on n generated clips only",
             "real+aug / real+gen batches: " + (
                 "every frame alike (the added clips are ratio / (1 + ratio) of a batch on average)"
                 if cfg.get("synthetic_share") is None else
                 f"{cfg['synthetic_share']:.0%} from the added clips (copies or generated), the rest real"),
             ""]
    width = 14
    head = f"{'arm':<9} {'pool':<16} {'ratio':>5} |" + "".join(f"n={n}".rjust(width) for n in counts)
    lines += [head, "-" * len(head)]
    keys = []
    for row in rows:
        key = (row["arm"], row["pool"], row["ratio"])
        if row["arm"] in ("leak", "shuffled") or key in keys:
            continue
        keys.append(key)
    for arm, pool, ratio in keys:
        cells = []
        for n in counts:
            row = next((r for r in rows if (r["arm"], r["pool"], r["ratio"], r["count"]) == (arm, pool, ratio, n)),
                       None)
            cells.append(_pct(row["miou_mean"], row["miou_std"], width) if row else "-".rjust(width))
        lines.append(f"{arm:<9} {(pool or '-')[:16]:<16} {('-' if ratio is None else f'{ratio:g}'):>5} |"
                     + "".join(cells))
    n_top = max(counts)
    completion = []
    for arm, pool, ratio in keys:
        row = next((r for r in rows if (r["arm"], r["pool"], r["ratio"], r["count"]) == (arm, pool, ratio, n_top)),
                   None)
        if row:
            label = arm + (f"[{pool}]" if pool else "") + (f" r{ratio:g}" if ratio is not None else "")
            completion.append(f"{label} {_pct(row['completion_iou_mean'])}")
    if completion:
        lines += ["", f"completion IoU % at n={n_top}: " + " · ".join(completion)]
    lines += class_table(rows, keys, n_top)
    controls = [r for r in rows if r["arm"] in ("leak", "shuffled")]
    parts = [f"leak (trained on the {r['count']} eval clips) {_pct(r['miou_mean'], r['miou_std'])}"
             if r["arm"] == "leak" else f"shuffled targets (n={r['count']}) {_pct(r['miou_mean'], r['miou_std'])}"
             for r in controls]
    parts.append(f"input-blind prior (chance) {_pct(report['chance']['miou'])}")
    lines.append("controls: " + " · ".join(parts))
    t = report["targets"]
    tl = [f"targets at n={t['count']}, ratio {t['ratio']:g}:"]
    for pool, entry in t["pools"].items():
        if "gen_only_fraction" in entry:
            g = entry["gen_only_fraction"]
            tl.append(f"  {pool}: gen-only / real-only = {g['value']:.2f} (target >= {g['target']:.2f}: "
                      + ("met)" if g["met"] else f"missed by {g['missed_by']:.2f})"))
        if "gain_over_augmentation" in entry:
            g = entry["gain_over_augmentation"]
            spread = f" ± {g['std']:.1f}" if g["std"] is not None else ""
            tl.append(f"  {pool}: real+gen - real+aug = {g['points']:+.1f}{spread} points (target >= "
                      f"+{g['target']:.0f}: " + ("met)" if g["met"] else f"missed by {g['missed_by']:.1f})"))
            worst = [c for c in g.get("by_class", []) if c["points"] < 0][:3]
            if worst:
                tl.append("    where it trails, IoU points by class: "
                          + ", ".join(f"{c['class']} {c['points']:+.1f}" for c in worst))
    tl.append(f"  seeds: {t['seeds']['value']} (target >= {t['seeds']['target']}: "
              + ("met)" if t["seeds"]["met"] else "missed)"))
    lines += [""] + tl
    gv = report.get("gate_value")
    if gv and "arms" in gv:
        parts = []
        for a in gv["arms"]:
            d = a["gated_minus_ungated"]
            label = a["arm"] + (f" r{a['ratio']:g}" if a["ratio"] is not None else "")
            if d and d["mean"] is not None:
                parts.append(f"{label} {d['mean']:+.1f}" + (f" ± {d['std']:.1f}" if d["std"] is not None else ""))
        lines.append(f"gate value at n={gv['count']} (gated - ungated mIoU points): " + " · ".join(parts))
    elif gv and gv.get("note"):
        lines.append(f"gate value: {gv['note']}")
    for flag in report["flags"]:
        lines.append(f"! {flag}")
    return "\n".join(lines)


def class_table(rows: list[dict], keys: list[tuple], n: int) -> list[str]:
    """Lines of per-class IoU % at ``n`` real clips (mean over seeds), an arm per line: which classes generated
    data teaches and which it does not (empty when the runs recorded no per-class IoU)."""
    picked = [(key, find_curve(rows, *key, n)) for key in keys]
    picked = [(key, row) for key, row in picked if row is not None and row["per_class_iou_mean"]]
    if not picked:
        return []
    names = list(dict.fromkeys(name for _, row in picked for name in row["per_class_iou_mean"]))
    width = 8  # names cut to 7 characters: ten classes fit a screen
    head = f"{'arm':<9} {'pool':<16} {'ratio':>5} |" + "".join(name[:width - 1].rjust(width) for name in names)
    lines = ["", f"per-class IoU % at n={n} (mean over seeds):", head, "-" * len(head)]
    for (arm, pool, ratio), row in picked:
        cells = "".join(_pct(row["per_class_iou_mean"].get(name), None, width) for name in names)
        lines.append(f"{arm:<9} {(pool or '-')[:16]:<16} {('-' if ratio is None else f'{ratio:g}'):>5} |" + cells)
    return lines


# ---- the plot ---------------------------------------------------------------------------------------------------

def _nice_step(span: float) -> float:
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _line(draw: ImageDraw.ImageDraw, points, colour, width: int, dash) -> None:
    """A polyline, dashed with the on/off pattern ``dash`` (pixels) when given."""
    if dash is None:
        draw.line(points, fill=colour, width=width)
        return
    pattern, k, left, on = list(dash), 0, float(dash[0]), True
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                a, b = pos / length, (pos + step) / length
                draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                          fill=colour, width=width)
            pos += step
            left -= step
            if left <= 0:
                k = (k + 1) % len(pattern)
                left, on = float(pattern[k]), not on


def plot_curves(report: dict, path: str | Path, size: tuple[int, int] = (1000, 620)) -> None:
    """mIoU (%) against real clip count (log scale), one line per arm and ratio, ± one std over seeds."""
    rows = report["curves"]
    counts = report["config"]["real_counts"]
    ratios = report["config"]["ratios"]
    pools = list(report["synthetic"])
    w, h = size
    left, right, top, bottom = 70, 300, 64, 60
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    lines = []  # (label, colour, dash, [(count, mean, std)])
    for arm, pool, ratio in dict.fromkeys((r["arm"], r["pool"], r["ratio"]) for r in rows if r["arm"] in
                                          ("real", "real+aug", "real+gen", "gen")):
        pts = [(r["count"], r["miou_mean"], r["miou_std"]) for r in rows
               if (r["arm"], r["pool"], r["ratio"]) == (arm, pool, ratio) and r["miou_mean"] is not None]
        dash = DASHES[ratios.index(ratio) % len(DASHES)] if ratio is not None else None
        if arm == "real":
            colour, label = (0, 0, 0), "real only"
        elif arm == "real+aug":
            colour, label = (130, 130, 130), f"real + aug (ratio {ratio:g})"
        else:
            colour = POOL_COLOURS[pools.index(pool) % len(POOL_COLOURS)]
            label = f"real + {pool} (ratio {ratio:g})" if arm == "real+gen" else f"{pool} only"
            dash = (2, 3) if arm == "gen" else dash
        lines.append((label, colour, dash, sorted(pts)))
    controls = [r for r in rows if r["arm"] in ("leak", "shuffled") and r["miou_mean"] is not None]
    values = [m + (s or 0) for *_, pts in lines for _, m, s in pts] + [r["miou_mean"] for r in controls]
    values += [report["chance"]["miou"]] if report["chance"]["miou"] is not None else []
    y_max = 100 * max(values + [0.01]) * 1.1
    step = _nice_step(y_max)
    y_max = step * math.ceil(y_max / step)
    lo, hi = math.log2(min(counts)), math.log2(max(counts))
    pad = 0.15 * (hi - lo) if hi > lo else 1.0

    def px(count: float, k: int = 0) -> float:
        jitter = 4 * (k - (len(lines) - 1) / 2)  # error bars of different lines side by side
        return left + (math.log2(count) - lo + pad) / (hi - lo + 2 * pad) * (w - left - right) + jitter

    def py(value: float) -> float:
        return h - bottom - 100 * value / y_max * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    y = 0.0
    while y <= y_max + 1e-9:
        yy = py(y / 100)
        draw.line([(left, yy), (w - right, yy)], fill=(230, 230, 230))
        draw.text((left - 8, yy), f"{y:g}", fill=(0, 0, 0), font=small, anchor="rm")
        y += step
    for n in counts:
        draw.line([(px(n), h - bottom), (px(n), h - bottom + 5)], fill=(0, 0, 0))
        draw.text((px(n), h - bottom + 8), str(n), fill=(0, 0, 0), font=small, anchor="mt")
    draw.text(((left + w - right) / 2, h - 22), "real clips in training (n)", fill=(0, 0, 0), font=font, anchor="mm")
    draw.text((12, top - 12), "mIoU % (held-out real clips)", fill=(0, 0, 0), font=font, anchor="lm")
    share = report["config"].get("synthetic_share")
    draw.text((left, 12), f"downstream SSC benchmark ({report['preset']}): {report['config']['steps']} steps x batch "
              f"{report['config']['batch_size']} per run, ± 1 std over {len(report['config']['seeds'])} seeds"
              + ("" if share is None else f", mixed batches {share:.0%} added"), fill=(0, 0, 0), font=font, anchor="lm")
    draw.text((left, 31), "scored on " + scored_clips(report, path_width=70), fill=(0, 0, 0), font=small,
              anchor="lm")
    references = [(r["arm"] + " control", r["miou_mean"]) for r in controls]
    if report["chance"]["miou"] is not None:
        references.append(("chance (input-blind prior)", report["chance"]["miou"]))
    for label, value in references:
        yy = py(value)
        _line(draw, [(left, yy), (w - right, yy)], (200, 150, 0) if label.startswith("leak") else (160, 80, 160), 1,
              (6, 6))
        if label.startswith("chance"):  # at the left end: it often lies next to the shuffled control
            draw.text((left + 4, yy - 3), label, fill=(90, 90, 90), font=small, anchor="lb")
        else:
            draw.text((w - right - 4, yy - 3), label, fill=(90, 90, 90), font=small, anchor="rb")
    for k, (label, colour, dash, pts) in enumerate(lines):
        xy = [(px(n, k), py(m)) for n, m, _ in pts]
        if len(xy) > 1:
            _line(draw, xy, colour, 2, dash)
        for (n, m, s), (x, yv) in zip(pts, xy):
            draw.ellipse([x - 3, yv - 3, x + 3, yv + 3], fill=colour)
            if s:
                y0, y1 = py(m - s), py(m + s)
                draw.line([(x, y0), (x, y1)], fill=colour, width=1)
                draw.line([(x - 4, y0), (x + 4, y0)], fill=colour)
                draw.line([(x - 4, y1), (x + 4, y1)], fill=colour)
    ly = top + 6
    for label, colour, dash, _ in lines:
        _line(draw, [(w - right + 14, ly + 7), (w - right + 54, ly + 7)], colour, 2, dash)
        draw.text((w - right + 62, ly + 7), label, fill=(0, 0, 0), font=small, anchor="lm")
        ly += 20
    if any(r["arm"] == "real" for r in rows) and report["flags"]:
        draw.text((w - right + 14, ly + 12), f"{len(report['flags'])} flag(s): see the table", fill=(180, 0, 0),
                  font=small, anchor="lm")
    img.save(path)
