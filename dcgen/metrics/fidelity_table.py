"""The fidelity report's one-screen tables (``dcgen eval fidelity``, the quickstart's closing table).

``format_table`` prints one report: real half A (the reference), real-vs-real, generated, reconstruction, with the
feature metrics' ratios to real-vs-real beneath. ``format_comparison`` prints several reports of one real set side by
side (the quickstart's layout-conditioned and unconditional scenes), each generated set on its own row.
"""

from __future__ import annotations

ROWS = ("real_vs_real", "generated", "reconstruction")

COLUMNS = (  # header, where the value is, format
    ("3D FID", ("metric", "3d", "fid"), ".4g"),
    ("2D FID", ("metric", "2d", "fid"), ".4g"),
    ("2D rec", ("metric", "2d", "recall"), ".3f"),
    ("veh med", ("class", "vehicle", "size_median"), ".4g"),
    ("veh p90", ("class", "vehicle", "size_p90"), ".4g"),
    ("ped med", ("class", "pedestrian", "size_median"), ".4g"),
    ("pole med", ("class", "pole", "size_median"), ".4g"),
    ("pole ht", ("class", "pole", "height_median"), ".4g"),
    ("bldg sh", ("class", "building", "share"), ".3f"),
    ("flicker", ("set", "flicker"), ".3f"),
    ("static", ("set", "static_change"), ".3f"),
    ("persist", ("set", "persistence"), ".3f"),
)


def _cell(value, fmt: str, width: int = 9) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


HEAD = f"{'':<24}" + "".join(f"{name:>9}" for name, _, _ in COLUMNS)


def _line(label: str, values: list) -> str:
    return f"{label[:23]:<24}" + "".join(_cell(v, fmt) for v, (_, _, fmt) in zip(values, COLUMNS))


def _row_values(report: dict, row: str, side: str) -> list:
    """The table's values of ``row`` (``side`` "fake": the row's own set, "real": the reference half A)."""
    objects = report["objects"].get(row)
    values = []
    for _, (kind, *key), _ in COLUMNS:
        if kind == "metric":
            values.append(None if side == "real" else report["metrics"][key[0]][key[1]].get(row))
        elif objects is None:
            values.append(None)
        elif kind == "class":
            entry = objects["classes"].get(key[0], {}).get(key[1])
            values.append(entry[side] if entry else None)
        else:
            values.append(objects[key[0]][side])
    return values


def format_table(report: dict) -> str:
    """One screen: rows real A (reference), real-vs-real, generated, reconstruction; feature-metric ratios to
    real-vs-real beneath; then sample counts, the origin of the generated clips, warnings and notes."""
    lines = [HEAD, "-" * len(HEAD), _line("real A (reference)", _row_values(report, "real_vs_real", "real"))]
    labels = {"real_vs_real": "real B (real-vs-real)", "generated": "generated", "reconstruction": "reconstruction"}
    for row in ROWS:
        if row not in report["objects"]:
            continue
        lines.append(_line(labels[row], _row_values(report, row, "fake")))
        if row != "real_vs_real":
            lines.append(_ratio_line(report, row))
    lines.append("-" * len(HEAD))
    f, r = report["fake"], report["real"]
    lines.append(f"N = {report['num_clips']} clips ({report['num_images']} images) per set; real {r['path']} split "
                 f"{r['split'] or 'all'} halves {r['halves']['a']} / {r['halves']['b']} clips (by scene); features "
                 f"{report['features']['checkpoint_id']} (2D {report['features']['dims']['2d']}-D, 3D "
                 f"{report['features']['dims']['3d']}-D)")
    lines.append("-: not measured, or no component of the class in the set; ratios: row / real-vs-real")
    lines.append(f"generated: {f['path']}: {f['origin']}")
    lines.append(f"this report {report['generation']}")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _ratio_line(report: dict, row: str) -> str:
    ratios = [report["metrics"][key[0]][key[1]].get(f"{row}_ratio") if kind == "metric" else None
              for _, (kind, *key), _ in COLUMNS]
    return f"{'  x real-vs-real':<24}" + "".join(f"{'' if v is None else 'x' + format(v, '.2f'):>9}" for v in ratios)


def format_comparison(reports: dict[str, dict]) -> str:
    """One screen for several reports of the same real store and split (``{label: report}``): real A, real-vs-real,
    each report's generated row under its label with its ratios, and the first reconstruction row. Reports that
    scored a different N than the first carry their N in the label (their real rows are then not the ones shown)."""
    if not reports:
        raise ValueError("format_comparison needs at least one fidelity report")
    first = next(iter(reports.values()))
    lines = [HEAD, "-" * len(HEAD), _line("real A (reference)", _row_values(first, "real_vs_real", "real")),
             _line("real B (real-vs-real)", _row_values(first, "real_vs_real", "fake"))]
    for label, report in reports.items():
        n = "" if report["num_clips"] == first["num_clips"] else f" (N={report['num_clips']})"
        lines += [_line(f"{label}{n}", _row_values(report, "generated", "fake")), _ratio_line(report, "generated")]
    recon = next((r for r in reports.values() if "reconstruction" in r["objects"]), None)
    if recon is not None:
        lines += [_line("VAE reconstruction", _row_values(recon, "reconstruction", "fake")),
                  _ratio_line(recon, "reconstruction")]
    r = first["real"]
    lines += ["-" * len(HEAD),
              f"N = {first['num_clips']} clips per set; real {r['path']} split {r['split'] or 'all'} (halves by "
              f"scene); features {first['features']['checkpoint_id']}",
              "-: not measured, or no component of the class in the set; ratios: row / real-vs-real"]
    for label, report in reports.items():
        lines.append(f"{label}: {report['fake']['path']}: {report['fake']['origin']}")
        lines += [f"WARNING ({label}): {w}" for w in report["warnings"]]
    lines += [f"note: {n}" for n in dict.fromkeys(n for report in reports.values() for n in report["notes"])]
    return "\n".join(lines)
