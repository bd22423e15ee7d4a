"""The sections of ``dcgen report`` (``report.py`` finds the outputs): each turns what a folder holds into HTML,
names the command that produced it, and, where an output is missing, says so and gives the command that makes it.

Clips are rendered here from the scene stores (bird's-eye + oblique views, ``clip.compose_frames``) as GIFs in
memory: a generated scene beside the real clip whose conditions it was given (``dcgen synth`` records each scene's
source clip), or beside a real clip for comparison when its store records none.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from dcgen.render.report_commands import (Paths, downstream_command, fidelity_command, gen_eval_command,
                                          quickstart_command, recon_command, store_command, train_command)
from dcgen.render.report_html import Section, esc, figure, fmt, line_chart, table

MAX_PAIRS = 2  # real | generated pairs per generated store: enough to see what a model makes, small enough to load
MAX_RECON_GIFS = 2
CLIP_HEIGHT = 260  # pixels of each view in a clip GIF
GAP = 16

# what to draw of each run kind: (chart title, metrics.jsonl keys); the first chart's first key is the run's curve
CURVES = {
    # the VAE logs train_total every report_every steps and train_loss, the epoch's mean, in its epoch rows
    "vae": (("training loss", ("train_total", "train_loss")), ("validation", ("val_miou", "val_binary_iou"))),
    "dit": (("loss", ("train_loss", "val_loss")),),
    "features": (("training loss", ("train_total",)), ("validation", ("val_image_acc", "val_voxel_acc"))),
}
BEST_KEYS = ("best_val_miou", "best_val_loss", "best_score")


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- overview -----------------------------------------------------------------------------------------------------

def overview(found, rel: Paths) -> Section:
    s = Section("What is here")
    blocks = []
    rows = [[r.kind, rel(r.path), "-" if r.rows is None else len(r.rows)] for r in found.runs]
    if rows:
        blocks.append("<div><h3>training runs</h3>" + table(["kind", "run directory", "metrics rows"], rows)
                      + "</div>")
    stores = [["real", rel(p)] for p in found.real_stores] + [["generated", rel(p)] for p in found.generated_stores]
    if stores:
        blocks.append("<div><h3>scene stores</h3>" + table(["kind", "store"], stores) + "</div>")
    names = {"gen": "generation metrics", "recon": "VAE reconstructions", "fidelity": "fidelity report",
             "downstream": "downstream benchmark"}
    results = [[names[k], rel(p)] for k in names for p, _ in found.result(k)]
    if results:
        blocks.append("<div><h3>evaluation results</h3>" + table(["kind", "file"], results) + "</div>")
    for path, qs in found.result("quickstart"):
        s.commands.append(_quickstart_command(found, qs, rel))
        seconds = qs.get("seconds") or {}
        blocks.append("<div><h3>quickstart stages</h3>"
                      + table(["stage", "seconds"], [[k, fmt(v, ".1f")] for k, v in seconds.items()]) + "</div>")
    s.body.append('<div class="row">' + "".join(blocks) + "</div>")
    for path, qs in found.result("quickstart"):
        synth = qs.get("synth") or {}
        if synth:
            s.body.append(f'<p class="note">synth: {esc(synth.get("accepted_total"))} scenes accepted, '
                          f'{esc(synth.get("rejected_total"))} attempts rejected, '
                          f'{esc(fmt(synth.get("scenes_per_s"), ".3g"))} scenes/s</p>')
    s.body += [f'<p class="note">{esc(n)}</p>' for n in found.notes]
    return s


def _quickstart_command(found, qs: dict, rel: Paths) -> str:
    """The quickstart that made this folder, with the sizes its outputs recorded (city clips, scenes, minutes)."""
    from dcgen.data.store import SceneStore

    vae = next((r.run for r in found.runs if r.kind == "vae" and r.run), {})
    clips = scenes = None
    if qs.get("city") and Path(qs["city"]).is_dir():
        clips = (SceneStore.open(qs["city"]).meta.get("provenance") or {}).get("num_clips")
    if qs.get("scenes") and Path(qs["scenes"]).is_dir():
        scenes = ((SceneStore.open(qs["scenes"]).meta.get("provenance") or {}).get("job") or {}).get("n")
    return quickstart_command(qs.get("out", found.root), (vae.get("extra") or {}).get("preset"), clips, scenes,
                              vae.get("max_minutes"), vae.get("seed", 0))


# ---- clips ------------------------------------------------------------------------------------------------------

def gif_side_by_side(named_clips: list[tuple[str, object]], fps: float = 4.0) -> bytes:
    """One animated GIF of clips ``occ[T, X, Y, Z]`` next to each other, frames in lockstep."""
    from PIL import Image

    from dcgen.render.clip import compose_frames
    from dcgen.render.palette import BACKGROUND

    columns = [compose_frames([(label, occ)], target_height=CLIP_HEIGHT) for label, occ in named_clips]
    num_frames = {len(c) for c in columns}
    if len(num_frames) != 1:
        raise ValueError(f"clips {[label for label, _ in named_clips]} have {sorted(num_frames)} frames; a "
                         "side-by-side GIF needs equal lengths")
    width = sum(c[0].width for c in columns) + GAP * (len(columns) - 1)
    height = max(c[0].height for c in columns)
    frames = []
    for t in range(num_frames.pop()):
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in BACKGROUND))
        x = 0
        for c in columns:
            canvas.paste(c[t], (x, 0))
            x += c[t].width + GAP
        frames.append(canvas)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def _occ(store, index: int):
    return store.read([int(index)], ("occupancy",))["occupancy"][0]


def _pairs(gen_store, job: dict, real_stores: list[Path]) -> list[tuple[object | None, int | None, int, str]]:
    """``(real store, real clip, generated clip, how they relate)`` for the first generated clips; ``job`` is the
    ``dcgen synth`` job that made them, if one did."""
    from dcgen.data.store import SceneStore

    table_ = gen_store.manifest()
    indices = [int(i) for i in table_.column("index").to_pylist()[:MAX_PAIRS]]
    names = set(table_.column_names)
    if job.get("source") and Path(job["source"]).exists() and "source_index" in names:
        source = SceneStore.open(job["source"])
        src = table_.column("source_index").to_pylist()[:MAX_PAIRS]
        cond = table_.column("conditions").to_pylist()[:MAX_PAIRS] if "conditions" in names else [""] * len(src)
        return [(source, int(k), i, f"its {c or 'conditions'} came from this clip") for k, i, c in
                zip(src, indices, cond)]
    if real_stores:
        real = SceneStore.open(str(real_stores[0]))
        pool = real.indices("val") if real.indices("val").size else real.indices()
        return [(real, int(pool[j % pool.size]) if pool.size else None, i, "for comparison; not its condition")
                for j, i in enumerate(indices)]
    return [(None, None, i, "") for i in indices]


def _attempts(store) -> dict[int, tuple[int, int]]:
    """Store index -> (scene, attempt) of a ``dcgen synth`` rejected store's manifest."""
    t = store.manifest()
    if not {"scene_index", "attempt"} <= set(t.column_names):
        return {}
    return {int(i): (int(k), int(a)) for i, k, a in zip(t.column("index").to_pylist(),
                                                       t.column("scene_index").to_pylist(),
                                                       t.column("attempt").to_pylist())}


def clips(found, rel: Paths, log=None) -> Section:
    from dcgen.data.store import SceneStore

    s = Section("Real and generated clips")
    for path in found.generated_stores:
        gen = SceneStore.open(str(path))
        cmd = store_command(path, gen.meta, rel)
        if cmd:
            s.commands.append(cmd)
        job, what = (gen.meta.get("provenance") or {}).get("job") or {}, "generated scene"
        if gen.num_clips:
            s.body.append(f"<h3>{esc(rel(path))}: {gen.num_clips} generated scenes</h3>")
        elif (path / "rejected").is_dir() and SceneStore.open(str(path / "rejected")).num_clips:
            # nothing passed the gates: what they turned down is what there is to look at
            gen, what = SceneStore.open(str(path / "rejected")), "rejected attempt"
            s.body.append(f"<h3>{esc(rel(path))}: no scene passed the quality gates yet; the first rejected "
                          "attempts</h3>")
        else:
            s.body.append(f'<p class="note">{esc(rel(path))} holds no complete scene yet</p>')
            continue
        attempts = _attempts(gen) if what == "rejected attempt" else {}
        for real, k, i, relation in _pairs(gen, job, found.real_stores):
            # a rejected store holds scene k's attempt a at a * padded_n + k: say which scene and attempt it is
            name = f"{what} {i}" if i not in attempts else f"rejected: scene {attempts[i][0]}, attempt {attempts[i][1]}"
            if log is not None:
                log(f"report: rendering {name} of {gen.path}")
            named = ([(f"real: {Path(real.path).name} clip {k}", _occ(real, k))] if real is not None and k is not None
                     else []) + [(name, _occ(gen, i))]
            caption = (f"left: real clip {k} of {rel(real.path)} ({relation}); right: {name} of "
                       f"{rel(gen.path)}" if len(named) == 2 else f"{name} of {rel(gen.path)}")
            s.body.append(figure("image/gif", gif_side_by_side(named), caption, name))
    if not found.generated_stores:
        if found.real_stores:
            real = SceneStore.open(str(found.real_stores[0]))
            if real.num_clips:
                k = int(real.indices()[0])
                s.body.append(figure("image/gif", gif_side_by_side([(f"real: clip {k}", _occ(real, k))]),
                                     f"real clip {k} of {rel(real.path)}", f"real clip {k}"))
        s.absent.append(("generated scenes (a scene store written by 'dcgen synth' or 'dcgen sample')",
                         f"dcgen synth --vae {_ckpt(found, 'vae', rel)} --dit {_ckpt(found, 'dit', rel)} --n 16 "
                         f"--cond layout --source {_real(found, rel)} --out scenes.zarr"))
    for path in found.real_stores:
        cmd = store_command(path, SceneStore.open(str(path)).meta, rel)
        if cmd:
            s.commands.append(cmd)
    return s


def _ckpt(found, kind: str, rel: Paths) -> str:
    run = next((r for r in found.runs if r.kind == kind), None)
    return rel(run.path / "best") if run is not None else kind.upper()


def _real(found, rel: Paths) -> str:
    return rel(found.real_stores[0]) if found.real_stores else "STORE"


def _generated(found, rel: Paths) -> str:
    return rel(found.generated_stores[0]) if found.generated_stores else "SCENES.zarr"


# ---- VAE reconstructions ------------------------------------------------------------------------------------

def reconstructions(found, rel: Paths) -> Section:
    s = Section("VAE reconstructions")
    for path, result in found.result("recon"):
        s.commands.append(recon_command(result, path.parent, rel))
        s.body.append(f'<p>{esc(result.get("num_clips"))} {esc(result.get("split") or "all")} clips of '
                      f'{esc(rel(result.get("data")))}, VAE {esc(result.get("vae_checkpoint_id"))}: mIoU '
                      f'<b>{esc(fmt(result.get("miou"), ".3f"))}</b>, binary IoU '
                      f'<b>{esc(fmt(result.get("binary_iou"), ".3f"))}</b></p>')
        per_class = result.get("per_class_iou") or {}
        if per_class:
            s.body.append(table(["class", *per_class], [["IoU", *(fmt(v, ".3f") for v in per_class.values())]]))
        figures = []
        for gif in (result.get("renders") or [])[:MAX_RECON_GIFS]:
            p = Path(gif) if Path(gif).is_file() else path.parent / Path(gif).name
            if p.is_file():
                figures.append(figure("image/gif", p.read_bytes(), f"ground truth above the VAE's reconstruction "
                                      f"({rel(p)})", "VAE reconstruction"))
            else:
                s.body.append(f'<p class="note">{esc(gif)}: listed in {esc(rel(path))} but not there</p>')
        s.body.append('<div class="figs">' + "".join(figures) + "</div>")
    if not found.result("recon"):
        s.absent.append(("VAE reconstructions (recon.json and GIFs of 'dcgen eval recon')",
                         f"dcgen eval recon --vae {_ckpt(found, 'vae', rel)} --data {_real(found, rel)} "
                         "--out eval-recon"))
    return s


# ---- training curves ----------------------------------------------------------------------------------------

def run_series(run, keys: tuple[str, ...]) -> list[tuple[str, list[float], list[float]]]:
    """``(key, steps, values)`` of each key some row logs as a number: a point per row that has it."""
    out = []
    for key in keys:
        pts = [(row.get("step", n), row[key]) for n, row in enumerate(run.rows) if _finite_number(row.get(key))]
        if pts:
            out.append((key, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def _generic_keys(rows: list[dict]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    keys = sorted({k for row in rows for k, v in row.items() if _finite_number(v)})
    train = tuple(k for k in keys if k.startswith("train_"))[:3]
    val = tuple(k for k in keys if k.startswith("val_"))[:3]
    return tuple((title, ks) for title, ks in (("training", train), ("validation", val)) if ks)


def curves(found, rel: Paths) -> Section:
    s = Section("Training curves")
    for run in found.runs:
        s.body.append(f"<h3>{esc(run.kind)}: {esc(rel(run.path))}</h3>")
        if run.run is not None and run.kind in CURVES:
            s.body.append('<pre class="cmd">' + esc(train_command(run.kind, run.run, run.scaling, run.path, rel))
                          + "</pre>")
        else:
            s.body.append(f'<p class="note">no run.json or checkpoint config in {esc(rel(run.path))}: the command '
                          "that trained it was not recorded</p>")
        s.body += [f'<p class="note">{esc(n)}</p>' for n in run.notes]
        if run.rows is None:
            s.absent.append((f"{rel(run.path / 'metrics.jsonl')}: this run logged no training curve (no "
                             "metrics.jsonl; it stopped before its first report, or was trained elsewhere)",
                             f"dcgen train {run.kind if run.kind in CURVES else 'vae|dit|features'} ... --out "
                             f"{rel(run.path)} --resume"))
            continue
        charts = [(title, run_series(run, keys)) for title, keys in CURVES.get(run.kind) or _generic_keys(run.rows)]
        charts = [(title, series) for title, series in charts if series]
        if not charts:
            s.absent.append((f"{rel(run.path / 'metrics.jsonl')}: {len(run.rows)} rows without a numeric loss or "
                             "validation value", None))
            continue
        x_label = "step" if any("step" in row for row in run.rows) else "row"
        s.body.append('<div class="charts">' + "".join(
            line_chart(series, f"{run.kind} {title}", x_label) for title, series in charts) + "</div>")
        s.body.append(_run_summary(run))
    if not found.runs:
        s.absent.append(("training runs (run directories with metrics.jsonl)",
                         f"dcgen train --data {_real(found, rel)} --preset debug --out runs"))
    return s


def _run_summary(run) -> str:
    last = run.rows[-1] if run.rows else {}
    parts = [f"{len(run.rows)} rows"]
    for key in ("step", "epoch"):
        if key in last:
            parts.append(f"last {key} {last[key]}")
    for key in BEST_KEYS:
        if _finite_number(last.get(key)):
            parts.append(f"{key} {fmt(last[key])}")
    seconds = [row["epoch_seconds"] for row in run.rows if _finite_number(row.get("epoch_seconds"))]
    if seconds:
        parts.append(f"{fmt(sum(seconds) / 60, '.1f')} min of epochs")
    return f'<p class="note">{esc(" · ".join(parts))}</p>'


# ---- generation metrics -------------------------------------------------------------------------------------

GEN_COLUMNS = (("IS", "is_mean", ".3f"), ("FID", "fid", ".2f"), ("KID", "kid_mean", ".4f"),
               ("P", "precision", ".3f"), ("R", "recall", ".3f"))


def gen_table(result: dict) -> str:
    """The paper's Table 2 layout (as ``dcgen eval gen`` prints it): this run's 2D and 3D metrics above the
    paper's rows."""
    m = result["metrics"]
    header = ["", *(f"2D {c}" for c, _, _ in GEN_COLUMNS), *(f"3D {c}" for c, _, _ in GEN_COLUMNS)]

    def row(name, values: dict) -> list[str]:
        return [name, *(fmt(values.get(s, {}).get(k), f) for s in ("2d", "3d") for _, k, f in GEN_COLUMNS)]

    gauss = {s: {"precision": m[s].get("gaussian_precision"), "recall": m[s].get("gaussian_recall")} for s in m}
    real_is = {s: {"is_mean": m[s].get("real_is_mean")} for s in m}
    paper = {name: {s: {"is_mean": v.get("is"), "fid": v.get("fid"), "kid_mean": v.get("kid"),
                        "precision": v.get("precision"), "recall": v.get("recall")} for s, v in spaces.items()}
             for name, spaces in (result.get("paper_table2") or {}).items()}
    rows = [row("generated (this run)", m), row("Gaussian P / R", gauss), row("real data IS", real_is)]
    rows += [row(f"{name} (paper)", values) for name, values in paper.items()]
    return table(header, rows, minor=[False, False, True] + [True] * len(paper))


def generation(found, rel: Paths) -> Section:
    s = Section("Generation metrics (Table 2)")
    for path, result in found.result("gen"):
        s.commands.append(gen_eval_command(result, path, rel))
        real, fake = result.get("real") or {}, result.get("fake") or {}
        s.body.append(gen_table(result))
        s.body.append(f'<p class="note">real: {esc(rel(real.get("path")))} ({esc(real.get("num_clips"))} clips); '
                      f'generated: {esc(rel(fake.get("path")))} ({esc(fake.get("num_clips"))} clips); features '
                      f'{esc(result.get("feature_checkpoint_id"))}. Paper rows: CarlaSC with the authors\' feature '
                      "networks; compare orders of magnitude only.</p>")
        notes = ([fake["note"]] if fake.get("note") else []) + [
            f"{sp.upper()}: {n}" for sp, v in result["metrics"].items() for n in v.get("notes", [])]
        s.body += [f'<p class="note">{esc(n)}</p>' for n in notes]
    if not found.result("gen"):
        s.absent.append(("generation metrics (the JSON of 'dcgen eval gen')",
                         f"dcgen eval gen --real {_real(found, rel)} --fake {_generated(found, rel)} --features "
                         f"{_ckpt(found, 'features', rel)} --json gen.json"))
    return s


# ---- quality gates ------------------------------------------------------------------------------------------

def gates(found, rel: Paths) -> Section:
    import json

    from dcgen.data.store import SceneStore

    s = Section("Quality gates of mass production")
    for path in found.generated_stores:
        store = SceneStore.open(str(path))
        prov = store.meta.get("provenance") or {}
        if prov.get("generator") != "dcgen synth":
            continue
        calibration = prov.get("gates")
        s.commands.append(store_command(path, store.meta, rel))
        if not calibration:
            s.body.append(f'<p class="note">{esc(rel(path))}: gates were off (no --reference or '
                          "--reference-data)</p>")
            continue
        quantiles = calibration.get("real_quantiles") or {}
        s.body.append(f"<h3>{esc(rel(path))}: thresholds for batches of {esc(calibration.get('batch_size'))}</h3>")
        s.body.append(table(["check", "threshold", "real-vs-real quantile"],
                            [[c, fmt(v), fmt(quantiles.get(c))] for c, v in calibration["thresholds"].items()]))
        attempts = {}
        rejected = Path(path) / "rejected"
        for name, st in (("accepted", store), ("rejected", SceneStore.open(str(rejected)) if rejected.exists()
                                                else None)):
            if st is None or "gate" not in st.manifest().column_names:
                continue
            t = st.manifest()
            for block, attempt, record in zip(t.column("block").to_pylist(), t.column("attempt").to_pylist(),
                                              t.column("gate").to_pylist()):
                attempts[(block, attempt)] = (name, json.loads(record))
        checks = list(calibration["thresholds"])
        rows, other = [], []
        for (b, a), (name, rec) in sorted(attempts.items()):
            # a job continued with other gate options (they are policy) judged earlier attempts by other limits
            limits = rec.get("thresholds") or {}
            if any(not math.isclose(float(limits.get(c, v)), float(v), rel_tol=1e-6)
                   for c, v in calibration["thresholds"].items()):
                name += " *"
                other.append(f"block {b} attempt {a}: " + ", ".join(f"{c} {fmt(v)}" for c, v in limits.items()))
            rows.append([b, a, name, *(fmt(rec.get("values", {}).get(c)) for c in checks),
                         ", ".join(rec.get("failed", [])) or "none"])
        if rows:
            s.body.append(table(["block", "attempt", "result", *checks, "failed"], rows,
                                minor=[r[2].startswith("rejected") for r in rows]))
        if other:
            s.body.append('<p class="note">* judged against other thresholds (the job ran before with other gate '
                          "options): " + esc("; ".join(other)) + "</p>")
    if not s.commands:
        s.absent.append(("a 'dcgen synth' store (its per-batch gate numbers)",
                         f"dcgen synth --vae {_ckpt(found, 'vae', rel)} --dit {_ckpt(found, 'dit', rel)} --n 16 "
                         f"--cond layout --source {_real(found, rel)} --reference-data {_real(found, rel)} "
                         "--out scenes.zarr"))
    return s


# ---- fidelity and downstream --------------------------------------------------------------------------------

def _png(path: Path, recorded: str | None) -> bytes | None:
    for p in ([Path(recorded)] if recorded else []) + [path]:
        if p.is_file():
            return p.read_bytes()
    return None


def fidelity(found, rel: Paths) -> Section:
    s = Section("Fidelity: generated against real, object by object")
    for path, report in found.result("fidelity"):
        s.commands.append(fidelity_command(report, path.parent, rel))
        s.body.append(f"<h3>{esc(rel(path))}: N = {esc(report.get('num_clips'))} clips per set (of "
                      f"{esc((report.get('fake') or {}).get('num_clips'))} generated)</h3>")
        rows = []
        for space, metrics in (report.get("metrics") or {}).items():
            for name, v in metrics.items():
                rows.append([f"{space.upper()} {name}", fmt(v.get("real_vs_real")), fmt(v.get("generated")),
                             fmt(v.get("generated_ratio"), ".3g"), fmt(v.get("reconstruction")),
                             fmt(v.get("reconstruction_ratio"), ".3g")])
        s.body.append(table(["metric", "real vs real", "generated", "ratio", "reconstruction", "ratio"], rows))
        objects = report.get("objects") or {}
        obj_rows = []
        for key in ("occupied_share", "flicker", "static_change", "persistence", "class_mix_l1"):
            cells = [objects.get(who, {}).get(key) for who in ("real_vs_real", "generated", "reconstruction")]
            obj_rows.append([key, *(fmt(c.get("fake") if isinstance(c, dict) else c, ".3g") for c in cells),
                             fmt(next((c.get("real") for c in cells if isinstance(c, dict)), None), ".3g")])
        s.body.append(table(["object statistic", "real half B", "generated", "reconstruction", "real"], obj_rows))
        png = _png(path.with_name("report.png"), (report.get("files") or {}).get("png"))
        if png is not None:
            s.body.append(figure("image/png", png, "object sizes and class mix per class", "fidelity histograms"))
        s.body += [f'<p class="note">{esc(n)}</p>' for n in report.get("warnings", []) + report.get("notes", [])]
    if not found.result("fidelity"):
        s.absent.append(("the fidelity report (report.json of 'dcgen eval fidelity')",
                         f"dcgen eval fidelity --real {_real(found, rel)}:val --fake {_generated(found, rel)} "
                         f"--features {_ckpt(found, 'features', rel)} --vae {_ckpt(found, 'vae', rel)} "
                         "--out fidelity"))
    return s


def downstream(found, rel: Paths) -> Section:
    s = Section("Downstream: is the generated data worth training on?")
    for path, report in found.result("downstream"):
        s.commands.append(downstream_command(report, path.parent, rel))
        if report.get("table"):
            s.body.append(f'<pre class="text">{esc(report["table"])}</pre>')
        png = _png(path.with_name("downstream.png"), (report.get("files") or {}).get("png"))
        if png is not None:
            s.body.append(figure("image/png", png, "mIoU on held-out real clips against real clip count",
                                 "downstream curves"))
        seconds = (report.get("seconds") or {}).get("total")
        if seconds is not None and math.isfinite(seconds):
            s.body.append(f'<p class="note">{len(report.get("runs", []))} runs in {fmt(seconds / 60, ".1f")} '
                          "min</p>")
    if not found.result("downstream"):
        s.absent.append(("the downstream benchmark (downstream.json of 'dcgen eval downstream')",
                         f"dcgen eval downstream --real {_real(found, rel)} --synthetic {_generated(found, rel)} "
                         "--out downstream"))
    return s
