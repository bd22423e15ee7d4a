"""Sample calibration: decode offsets fitted on the DiT's own samples, kept in the DiT checkpoint.

The VAE's decode calibration (``train/calibrate.py``) fits per-class logit offsets on the VAE's reconstructions of
real clips. Scenes the DiT draws without a condition are not like encodings: through those offsets the debug
quickstart's models painted the occupied voxels 3 % vehicle against 6 % real, and scored 2D FID 93 against a
held-out city whose real-vs-real is 7.9. The same post-hoc logit adjustment, fitted on the decode of the pair's own
unconditional samples, gives them the training split's class mix.

``calibrate_samples`` draws scenes from pure noise with no condition, takes the decoder's raw logits at random
voxels and fits the offsets (``fit_class_bias``) to the training split's class counts over every voxel (the
manifest's; generated scenes have no mask). They are written into the DiT checkpoint's metadata with the
checkpoint id of the VAE they were fitted through (the weights, and so the DiT's checkpoint id, are untouched);
``GenerationPipeline.from_checkpoints`` decodes the scenes of requests without a model condition with them when that
very VAE is passed (a fine-tuned decoder needs its own fit).

A DiT that takes a layout gets a second set for layout-conditioned scenes: the VAE's offsets, but for the object
classes (``OBJECT_CLASSES``), each moved until the decode of as many layout-conditioned samples (the layouts of the
same split) gives it its training share. Other conditioned scenes, edits and reconstructions keep the VAE's offsets.

Measured on the debug quickstart's models (128 scenes per set, DDIM-50, against 270 clips of a held-out city whose
real-vs-real is 3D FID 11.4, 2D FID 7.9, 2D recall 0.72; rough at N = 128 for the 192-D 3D features), unconditional,
the offsets fitted with seeds 0 and 1: 3D FID 8.4 -> 7.3 / 3.8, 2D FID 92.6 -> 11.4 / 14.8, 2D recall 0.34 -> 0.51 /
0.56, vehicles 3.0 -> 6.5 / 5.9 % of the occupied voxels (real 6.1 %). Conditioned scenes are left alone on
evidence: fitted on layout-conditioned samples (64 from the training layouts, at 1 %), two seed sets put the
building offset at -4.4 and -8.4 (buildings decode with margins that leave their share flat over that range), and
held-out layout scenes scored 2D FID 20.0 -> 13.0 with the first and 3D FID 4.7 -> 17.0 with the second. Object
shapes do not change: vehicle, pedestrian and pole medians stay 3, 2, 2 voxels (real 9, 3, 4). The object classes'
offsets alone are stable: fitted on three sets of 64 layout scenes (DPM++-10), vehicle +2.35, +2.19, +2.13,
pedestrian +1.85, +1.75, +1.91, pole +3.42, +3.33, +3.39 over the VAE's; held-out layout scenes (N = 128) went 3D FID
4.1 -> 3.9, 2D FID 18.7 -> 16.4, 2D recall 0.58 -> 0.66, vehicles 4.6 -> 6.5 % of the occupied voxels (real 6.1 %).
"""

from __future__ import annotations

import numpy as np

SCENES = 128  # unconditional scenes sampled for the fit
# the fit stops when every class is within 5 % of its share, not the VAE calibration's 1 %: a set of generated scenes
# is a sample, and the building offset follows its noise. On the debug quickstart's models, fitted on three sets of
# 64 scenes at 1 % the building offset read +3.4, -1.6 and -2.8 (vehicle 2.85, 2.83, 3.03); on two sets of 128 at
# 5 %, +0.3 and -0.75 (vehicle 2.71, 2.83)
TOLERANCE = 0.05
KEY = "sample_calibration"  # the DiT checkpoint's metadata entry
# the classes whose offsets the layout-conditioned fit moves (the others keep the VAE's): the small objects whose
# share the generated scenes miss, unlike buildings, whose share is flat in its offset over several units
OBJECT_CLASSES = ("pedestrian", "pole", "vehicle")
OFFSET_RANGE = 6.0  # the most an object class's offset moves from the VAE's, either way


def calibrate_samples(vae: str, dit: str, data: str, *, split: str = "train", scenes: int = SCENES,
                      voxels: int | None = None, seed: int = 0, device: str = "auto", log=None) -> dict:
    """Fit the decode offsets of ``vae`` + ``dit``'s unconditional samples against the class mix of ``data``'s
    ``split`` (the DiT's training clips) and write them into the ``dit`` checkpoint's metadata. Returns the record
    written."""

    from dcgen import checkpoint
    from dcgen.data.store import SceneStore
    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.train.calibrate import VOXELS_PER_CLIP, check_calibration_args, fit_class_bias

    voxels = VOXELS_PER_CLIP if voxels is None else voxels
    check_calibration_args(scenes, voxels, count_name="--scenes")
    pipe = GenerationPipeline.from_checkpoints(vae, dit, device=device, sample_calibrated=False)
    store = SceneStore.open(data)
    if tuple(store.grid.shape) != tuple(pipe.grid.shape) or store.grid.num_classes > pipe.vae.config.num_classes:
        raise ValueError(f"{data}: clips of shape {tuple(store.grid.shape)} with {store.grid.num_classes} classes, "
                         f"but the DiT generates {tuple(pipe.grid.shape)} with {pipe.vae.config.num_classes}; "
                         "calibrate on the store the models were trained on")
    k = pipe.vae.config.num_classes
    # the whole split's class mix (the manifest's counts): a few clips' mix is not it (the debug city's first 32
    # training clips hold 16 % building against the split's 19 %)
    counts_K = np.zeros(k, np.int64)
    counts_K[:store.grid.num_classes] = store.class_histogram(split)
    if counts_K.sum() == 0:
        raise ValueError(f"{data}: split {split!r} has no clips to take the class mix from")
    seeds = [seed * 1_000_003 + i for i in range(scenes)]
    kept_bias = pipe.vae.class_bias.clone()
    pipe.vae.class_bias.zero_()  # raw logits: the fit's offsets replace the VAE's
    try:
        raw = _sampled_logits(pipe, [SceneRequest() for _ in range(scenes)], seeds, voxels, seed)
    finally:
        pipe.vae.class_bias.copy_(kept_bias)
    bias_K, fit = fit_class_bias(raw, counts_K, tolerance=TOLERANCE)
    record = {"class_bias": [float(b) for b in bias_K], "vae_checkpoint_id": pipe.checkpoint_ids["vae"],
              "store": str(data), "split": split, "scenes": int(scenes), "voxels_per_scene": int(voxels),
              "seed": int(seed), "tolerance": TOLERANCE, "target_share": [float(c) for c in counts_K / counts_K.sum()],
              **fit}
    if "layout" in pipe.conditions:
        idx = store.indices(split)
        layouts = store.read(idx[np.arange(scenes) % idx.size], ("layout",))["layout"]
        logits = _sampled_logits(pipe, [SceneRequest(layout=x) for x in layouts], seeds, voxels, seed)
        record["layout"] = fit_object_offsets(logits, counts_K, kept_bias.cpu().numpy())
    checkpoint.update_meta(dit, kind="dit", **{KEY: record})
    if log is not None:
        note = "" if fit["converged"] else (f" (not within {TOLERANCE:.0%}: some class cannot reach its share at "
                                            "any offset)")
        log(f"sample calibration of {dit} through {vae} on {scenes} unconditional scenes: largest class-share "
            f"error {fit['share_error_before']:.0%} -> {fit['share_error_after']:.1%}{note}")
        if "layout" in record:
            lay = record["layout"]
            log(f"  and {scenes} layout-conditioned scenes: {', '.join(lay['classes'])} offsets "
                f"{', '.join(f'{d:+.2f}' for d in lay['delta'])} over the VAE's, largest share error of those "
                f"{lay['share_error_before']:.0%} -> {lay['share_error_after']:.1%}")
    return record


def _sampled_logits(pipe, requests: list, seeds: list[int], voxels: int, seed: int):
    """``[N, K]`` decoder logits (with the VAE's current offsets) at ``voxels`` random voxels of each scene the
    pipeline samples for ``requests``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    latents = pipe.sample_latents(requests, seeds)
    kept = []
    for a in range(0, len(requests), pipe.micro_batch):
        for one in pipe.logits(latents[a:a + pipe.micro_batch]):
            flat = one.flatten(1)
            kept.append(flat[:, torch.randperm(flat.shape[1], generator=gen)[:voxels]].t())
    return torch.cat(kept)


def fit_object_offsets(logits_NK, counts_K: np.ndarray, vae_bias_K: np.ndarray) -> dict:
    """The VAE's offsets ``vae_bias_K`` with each object class's moved (bisection, within ``OFFSET_RANGE``) until
    the argmax of ``logits_NK`` (which carry the VAE's offsets) gives it its share of ``counts_K``; a few rounds,
    as the small classes barely take voxels from one another. Returns the record: the offsets, the classes, their
    moves and the largest relative share error among them before and after."""
    import torch

    from dcgen.data.classes import CLASS_IDS

    k = counts_K.size
    target_K = counts_K / counts_K.sum()
    classes = [name for name in OBJECT_CLASSES if CLASS_IDS[name] < k and target_K[CLASS_IDS[name]] > 0]
    ids = [CLASS_IDS[name] for name in classes]
    logits = torch.as_tensor(logits_NK).float()
    delta_K = np.zeros(k, np.float32)

    def shares(d_K: np.ndarray) -> np.ndarray:
        pred = (logits + torch.from_numpy(d_K)).argmax(1)
        return np.bincount(pred.numpy(), minlength=k) / pred.numel()

    def worst(got_K: np.ndarray) -> float:
        return max((abs(got_K[c] / target_K[c] - 1.0) for c in ids), default=0.0)

    before = worst(shares(delta_K))
    for _ in range(3):
        for c in ids:
            lo, hi = -OFFSET_RANGE, OFFSET_RANGE
            for _ in range(24):  # 12 / 2^24: far below any share's resolution
                delta_K[c] = (lo + hi) / 2
                lo, hi = (delta_K[c], hi) if shares(delta_K)[c] < target_K[c] else (lo, delta_K[c])
            delta_K[c] = (lo + hi) / 2
    return {"class_bias": [float(b) for b in np.asarray(vae_bias_K, np.float32) + delta_K], "classes": classes,
            "delta": [float(delta_K[c]) for c in ids], "share_error_before": before,
            "share_error_after": worst(shares(delta_K))}


def ensure_sample_calibration(vae: str, dit: str, data: str, *, log=print, **options) -> dict | None:
    """``calibrate_samples`` unless ``dit`` already carries a sample calibration fitted through ``vae`` (a re-run
    pipeline skips it, as it skips finished stages). Returns the new record, or None when it was there."""
    from dcgen import checkpoint

    meta = checkpoint.read_meta(dit, kind="dit")
    biases = sample_biases(meta, checkpoint.checkpoint_id(vae))
    if biases and ("layout" in biases or "layout" not in meta.get("conditions", ())):
        log(f"sample calibration: {dit} has one fitted through {vae}, skipping")
        return None
    return calibrate_samples(vae, dit, data, log=log, **options)  # none, or one from before the layout offsets


def sample_biases(dit_meta: dict, vae_checkpoint_id: str) -> dict[str, np.ndarray]:
    """The DiT's sample-calibration offsets ``[K]`` per decode group (``GenerationPipeline.decode_groups``:
    "unconditional", and "layout" where it was fitted) when they were fitted through the VAE ``vae_checkpoint_id``,
    else none (decode with that VAE's own offsets)."""
    record = dit_meta.get(KEY)
    if not record or record.get("vae_checkpoint_id") != vae_checkpoint_id:
        return {}
    bias = record["class_bias"]
    if isinstance(bias, dict):  # a record of be8c1d6, which grouped the offsets: {"unconditional": [K]}
        bias = bias["unconditional"]
    out = {"unconditional": np.asarray(bias, np.float32)}
    if "layout" in record:
        out["layout"] = np.asarray(record["layout"]["class_bias"], np.float32)
    return out


def decode_offsets_id(dit_meta: dict, vae_checkpoint_id: str) -> str | None:
    """A short id of the sample-calibration offsets a pair decodes with (``checkpoint_ids["decode_offsets"]``, part
    of a synth job's identity, so a job resumed after a calibration refuses rather than mixing two decodes); None
    when the pair decodes with the VAE's own offsets."""
    import hashlib

    biases = sample_biases(dit_meta, vae_checkpoint_id)
    if not biases:
        return None
    return f"sample-{hashlib.sha256(b''.join(b.tobytes() for b in biases.values())).hexdigest()[:12]}"
