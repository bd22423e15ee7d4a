"""``dcgen eval gen``: generated clips against real ones in the layout of the paper's Table 2 (SPEC §4).

Both sets go through one features checkpoint (``extract.py``); the real side may instead be a reference ``.npz``
made with that same checkpoint (``reference.py``). ``compare_features`` computes, in 2D (rows = rendered views) and
3D (rows = clips), IS of the generated samples (and of the real ones, for scale), FID, KID, k-NN precision/recall
(k = 3) and the Gaussian precision/recall, via ``generation.generation_metrics``. The result records sample counts,
the features checkpoint id and where each set came from; ``format_table`` prints it beside the paper's numbers
(CarlaSC, 16 frames, measured with the authors' own feature networks, so only the orders of magnitude compare).
Below as many samples as features, covariances are rank-deficient and FID / Gaussian P/R are rough: the result
carries a note saying so. A generated set of identical scenes (a collapsed sampler) is reported, not refused: the
result counts the distinct generated clips and says "collapsed: all N scenes identical", and a space whose generated
features are one vector up to rounding carries ``collapsed`` and a note (``generation.generation_metrics``). Real
clips that are all one vector stay an error: there is no distribution to compare with.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from dcgen.metrics.extract import ClipFeatures
from dcgen.metrics.generation import GenerationMetricsConfig, generation_metrics
from dcgen.metrics.inception_score import inception_score
from dcgen.metrics.reference import ReferenceStats, check_enough_clips

# Paper Table 2 (CarlaSC, 16 frames); None where the paper gives no number.
PAPER_TABLE2 = {
    "DynamicCity": {"2d": {"is": 1.040, "fid": 12.94, "kid": 0.002, "precision": 0.307, "recall": 0.018},
                    "3d": {"is": 2.331, "fid": 354.2, "kid": 19.10, "precision": 0.460, "recall": 0.170}},
    "OccSora": {"2d": {"is": None, "fid": 28.55, "kid": None, "precision": None, "recall": None},
                "3d": {"is": None, "fid": 1559.0, "kid": None, "precision": None, "recall": None}},
}
SPACES = ("2d", "3d")


def compare_features(real: ClipFeatures, fake: ClipFeatures, config: GenerationMetricsConfig = GenerationMetricsConfig(),
                     reference: ReferenceStats | None = None) -> dict:
    """``{"2d": {...}, "3d": {...}}`` of every SPEC §4 metric of ``fake`` against ``real`` features.

    ``reference`` (whose features are ``real``) supplies the real statistics already computed.
    """
    check_enough_clips(real.num_clips, "real set")
    check_enough_clips(fake.num_clips, "generated set")
    out = {}
    for space in SPACES:
        if space == "2d":
            real_f, fake_f, real_p, fake_p = real.feat2d_MD, fake.feat2d_MD, real.probs2d_MK, fake.probs2d_MK
            stats = reference.stats2d if reference is not None else None
        else:
            real_f, fake_f, real_p, fake_p = real.feat3d_ND, fake.feat3d_ND, real.probs3d_NK, fake.probs3d_NK
            stats = reference.stats3d if reference is not None else None
        try:
            m = generation_metrics(real_f, fake_f, fake_p, config, real_stats=stats)
        except ValueError as e:
            raise ValueError(f"{space.upper()} metrics: {e}") from None
        real_is, _ = inception_score(real_p, min(config.is_splits, real_p.shape[0]))
        dim = real_f.shape[1]
        notes = [f"{which} has {n} samples for {dim} features: its covariance is rank-deficient, so FID and the "
                 "Gaussian precision/recall are rough" for which, n in (("real set", real_f.shape[0]),
                                                                     ("generated set", fake_f.shape[0])) if n <= dim]
        if m.collapsed:
            notes.append(f"generated set collapsed: all {fake_f.shape[0]} feature vectors are identical up to "
                         "rounding; the Gaussian recall is the share of real samples at that point, the other "
                         "metrics stand as computed")
        out[space] = {**m.to_dict(), "real_is_mean": real_is, "num_real": int(real_f.shape[0]),
                      "num_fake": int(fake_f.shape[0]), "dim": int(dim), "notes": notes}
    return out


def diversity_note(num_scenes: int, distinct: int) -> str | None:
    """"collapsed: all N scenes identical" when every scene is the same, a count when some repeat, else None."""
    if distinct == 1 and num_scenes > 1:
        return f"collapsed: all {num_scenes} scenes identical"
    if distinct < num_scenes:
        return f"only {distinct} of {num_scenes} scenes distinct"
    return None


def evaluate_generation(real: str, fake: str, features: str, *, real_split: str | None = None,
                        fake_split: str | None = None, batch_size: int = 16, device: str = "auto",
                        max_clips: int | None = None,
                        config: GenerationMetricsConfig = GenerationMetricsConfig()) -> dict:
    """The Table 2 metrics of the scene store ``fake`` against ``real`` (a scene store or a reference ``.npz``
    made with the same ``features`` checkpoint). Returns a JSON-able dict (see ``format_table``)."""
    from dcgen.metrics.extract import extract_store
    from dcgen.metrics.feature_nets import load_feature_nets
    from dcgen.runtime import pick_device

    t0 = time.perf_counter()
    loaded = load_feature_nets(features, pick_device(device))
    reference = None
    if _is_reference(real):
        reference = ReferenceStats.load(real)
        reference.check_network(loaded.checkpoint_id, f"the features of --features {features}")
        real_feats = reference.features
        real_info = {"kind": "reference", "path": str(real), **{k: reference.meta.get(k) for k in
                                                                ("data", "split", "created")}}
    else:
        real_feats, info = extract_store(loaded.nets, real, real_split, batch_size, max_clips)
        real_info = {"kind": "store", "path": str(real), "split": real_split, "seconds": info["seconds"]}
    check_enough_clips(real_feats.num_clips, f"real set {real}")
    fake_feats, info = extract_store(loaded.nets, fake, fake_split, batch_size, max_clips)
    check_enough_clips(fake_feats.num_clips, f"generated set {fake}")
    metrics = compare_features(real_feats, fake_feats, config, reference)
    return {
        "features": str(features), "feature_checkpoint_id": loaded.checkpoint_id,
        "image_kind": loaded.config.image_kind, "dims": {"2d": loaded.nets.dims[0], "3d": loaded.nets.dims[1]},
        "real": {**real_info, "num_clips": real_feats.num_clips, "num_images": real_feats.num_images},
        "fake": {"kind": "store", "path": str(fake), "split": fake_split, "num_clips": fake_feats.num_clips,
                 "num_images": fake_feats.num_images, "distinct_clips": info["distinct_clips"],
                 "collapsed": info["distinct_clips"] == 1,
                 "note": diversity_note(fake_feats.num_clips, info["distinct_clips"]), "seconds": info["seconds"]},
        "config": asdict(config), "metrics": metrics, "paper_table2": PAPER_TABLE2,
        "seconds": time.perf_counter() - t0,
    }


def _is_reference(path: str) -> bool:
    p = Path(path)
    return p.suffix == ".npz" or p.is_file()


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict) -> str:
    """The paper's Table 2 layout: IS / FID / KID / P / R in 2D and 3D, this run above the paper's rows."""
    fmts = {"is": ".3f", "fid": ".2f", "kid": ".4f", "precision": ".3f", "recall": ".3f"}
    head = f"{'':<26}|{'2D':^41}|{'3D':^41}"
    cols = "".join(f"{c:>8}" for c in ("IS", "FID", "KID", "P", "R"))
    lines = [head, f"{'method':<26}| {cols}| {cols}", "-" * 110]

    def row(name: str, per_space: dict) -> str:
        cells = []
        for space in SPACES:
            vals = per_space[space]
            cells.append("".join(f"{_cell(vals.get(k), fmts[k]):>8}" for k in fmts))
        return f"{name:<26}| {cells[0]}| {cells[1]}"

    m = result["metrics"]
    ours = {s: {"is": m[s]["is_mean"], "fid": m[s]["fid"], "kid": m[s]["kid_mean"], "precision": m[s]["precision"],
                "recall": m[s]["recall"]} for s in SPACES}
    gauss = {s: {"precision": m[s]["gaussian_precision"], "recall": m[s]["gaussian_recall"]} for s in SPACES}
    real_is = {s: {"is": m[s]["real_is_mean"]} for s in SPACES}
    lines += [row("generated (this run)", ours), row("  Gaussian P / R", gauss), row("  real data IS", real_is)]
    for name, vals in result["paper_table2"].items():
        lines.append(row(f"{name} (paper)", vals))
    lines.append("-" * 110)
    r, f = result["real"], result["fake"]
    lines.append(f"features {result['feature_checkpoint_id']} ({result['image_kind']}, 2D {result['dims']['2d']}-D, "
                 f"3D {result['dims']['3d']}-D)")
    lines.append(f"real: {r['path']} ({r['kind']}) {r['num_clips']} clips / {r['num_images']} images; "
                 f"generated: {f['path']} {f['num_clips']} clips / {f['num_images']} images")
    lines.append("paper rows: CarlaSC 16 frames with the authors' feature networks; compare orders of magnitude only")
    if f.get("note"):
        lines.append(f"generated: {f['note']}")
    for s in SPACES:
        for note in m[s]["notes"]:
            lines.append(f"note ({s.upper()}): {note}")
    return "\n".join(lines)
