"""Decode calibration of a trained VAE: per-class logit offsets that undo the class-weighted loss's prior shift.

The VAE trains with class-weighted cross-entropy (``vae_losses.class_weights``, ``w_c = (max p / p_c)^power``), whose
minimiser is ``p_w(c | x) ∝ w_c · p(c | x)``: the argmax of the raw logits paints rare classes over their
neighbours. Subtracting ``log w_c`` would undo that at the loss's optimum; a trained network is not there (the
Lovász term, finite capacity), so the offsets are fitted instead (post-hoc logit adjustment, Menon et al., ICLR
2021): ``b`` with ``b_free = 0`` such that the argmax of ``logits + b`` over clips of the VAE's own training split
gives each class that split's share of the voxels. The fit is a damped fixed point,
``b_c += r · log(share_real / share_decoded)`` (r = ½, shrunk whenever a step overshoots), on the logits of a fixed
random subset of voxels per clip (memory bounded at any grid), until every present class is within 1 % of its
share; the best offsets seen are kept (an undertrained VAE may not get there, and says so).

The offsets live in the model (``HexPlaneVAE.class_bias``, applied outside training), so sampling, synth, Serve
and reconstruction all decode calibrated. The encoder is untouched: the calibrated checkpoint records the latent
space it encodes into (``latent_space``), so latent stores and DiTs of the uncalibrated VAE stay valid with it.

Measured on the debug quickstart's models (128 clips of a held-out city, real-vs-real 3D / 2D FID 11.4 / 7.9):
reconstructions 3D FID 18.1 -> 12.4, 2D 101 -> 17 (vehicles 8.6 % -> ~6 % of the occupied voxels, real 6.1 %; vehicle
component p90 50 -> 29 voxels, real 20); layout-conditioned scenes (DDIM-50) 15.6 -> 11.5 and 91 -> 20. Scenes
generated without conditions lose (9.7 -> 16.9, 28 -> 137): that DiT under-produces vehicles, which the
over-painting had hidden.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

CALIBRATION_CLIPS = 32  # training clips the offsets are fitted on
VOXELS_PER_CLIP = 1 << 16  # logits kept per clip (a fixed random subset): the fit's memory at any grid
TOLERANCE = 0.01  # stop when every present class's decoded share is within 1 % (relative) of its target
MAX_ITERATIONS = 200


def fit_class_bias(logits_NK, target_K, *, tolerance: float = TOLERANCE, max_iterations: int = MAX_ITERATIONS,
                   free_class: int = 0) -> tuple[np.ndarray, dict]:
    """Offsets ``b [K]`` (``b[free_class] = 0``) such that the argmax of ``logits_NK + b`` gives each class its share
    of ``target_K`` (voxel counts or shares; a class that never occurs there is not fitted: it keeps its raw logit
    relative to the free class). Returns ``(b, fit)``, the fit's report: iterations, the largest relative share
    error before and after, converged."""
    import torch

    logits = torch.as_tensor(logits_NK).float()
    target = np.asarray(target_K, np.float64)
    if logits.dim() != 2 or logits.shape[1] != target.size or logits.shape[0] == 0:
        raise ValueError(f"logits of shape {tuple(logits.shape)} and {target.size} class targets: expected "
                         f"[N > 0, {target.size}] logits, one target per class")
    if not np.all(np.isfinite(target)) or np.any(target < 0) or target.sum() <= 0:
        raise ValueError(f"class targets {target.tolist()} must be finite, non-negative and not all zero")
    k = target.size
    share_K = target / target.sum()
    present = share_K > 0
    bias = np.zeros(k)

    def decoded() -> np.ndarray:
        pred = (logits + torch.as_tensor(bias, dtype=torch.float32)).argmax(1)
        return np.bincount(pred.numpy(), minlength=k) / pred.numel()

    def worst(got_K: np.ndarray) -> float:
        return float(np.max(np.abs(got_K[present] / share_K[present] - 1.0)))

    got_K = decoded()
    first = error = worst(got_K)
    best, best_error, rate, iterations = bias.copy(), error, 0.5, 0
    while best_error > tolerance and iterations < max_iterations:
        # a class decoded nowhere moves by at most ``rate`` (its share floored at target / e): no offset runs away
        step_K = np.log(share_K[present]) - np.log(np.maximum(got_K[present], share_K[present] / math.e))
        bias[present] += rate * step_K
        bias -= bias[free_class]
        iterations += 1
        got_K = decoded()
        new_error = worst(got_K)
        if new_error >= error:  # overshot (argmax shares move in jumps): smaller steps
            rate = max(0.7 * rate, 0.02)
        error = new_error
        if error < best_error:
            best, best_error = bias.copy(), error
    return best.astype(np.float32), {"iterations": iterations, "share_error_before": first,
                                     "share_error_after": best_error, "converged": best_error <= tolerance}


def _sample_logits(model, store, indices: np.ndarray, voxels: int, seed: int, device) -> tuple:
    """Raw logits ``[N·V, K]`` at ``voxels`` random valid voxels of each clip, and the class counts of those
    clips' valid voxels (the targets)."""
    import torch

    k = model.config.num_classes
    arrays = ("occupancy", "trajectory", "mask") if store.has_mask else ("occupancy", "trajectory")
    gen = torch.Generator().manual_seed(seed)
    counts_K = np.zeros(k, np.int64)
    kept = []
    per_batch = 4 if math.prod(model.config.shape) <= 1 << 20 else 1  # a large grid's logits are GBs per clip
    bias = model.class_bias.clone()
    model.class_bias.zero_()  # raw logits: the fit's offsets replace any earlier ones
    try:
        with torch.no_grad():
            for a in range(0, indices.size, per_batch):
                batch = store.read(indices[a:a + per_batch], arrays)
                occ = torch.from_numpy(batch["occupancy"].astype(np.int64)).to(device)
                traj = torch.from_numpy(np.ascontiguousarray(batch["trajectory"])).to(device)
                logits_BKTXYZ, _, _ = model(occ, sample=False, trajectory=traj)
                valid = (torch.from_numpy(np.asarray(batch["mask"]) > 0) if "mask" in batch
                         else torch.ones(occ.shape, dtype=torch.bool))
                for b in range(occ.shape[0]):
                    where = valid[b].flatten().nonzero().squeeze(1)
                    counts_K += np.bincount(occ[b].flatten()[where.to(occ.device)].cpu().numpy(), minlength=k)
                    pick = where[torch.randperm(where.numel(), generator=gen)[:voxels]].to(logits_BKTXYZ.device)
                    kept.append(logits_BKTXYZ[b].flatten(1)[:, pick].t().float().cpu())
    finally:
        model.class_bias.copy_(bias)
    return torch.cat(kept), counts_K


def check_calibration_args(clips, voxels, count_name: str = "--clips") -> None:
    """``clips`` (named ``count_name`` in the error) and ``voxels`` are whole numbers >= 1."""
    for name, value in ((count_name, clips), ("voxels per clip", voxels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} {value!r}: expected a whole number >= 1")


def calibrate_vae(vae: str, data: str | None, out: str | Path, *, split: str = "train",
                  clips: int = CALIBRATION_CLIPS, voxels: int = VOXELS_PER_CLIP, seed: int = 0, device: str = "auto",
                  overwrite: bool = False, raw: bool = False, log=None) -> dict:
    """Fit ``vae``'s decode offsets on the first ``clips`` clips of ``data``'s ``split`` (its training split: the
    class mix it learned) and write the calibrated checkpoint to ``out`` (``out`` may be ``vae`` itself, replaced
    atomically). ``raw`` writes zero offsets instead (the class-weighted decode; no data needed), recorded as a
    calibration so ``dcgen train`` leaves it. Everything is checked before anything is written. Returns the
    calibration record."""
    from dcgen import storage
    from dcgen.data.store import SceneStore
    from dcgen.models.loading import load_vae
    from dcgen.runtime import pick_device
    from dcgen.train.encode import check_vae_matches_store

    check_calibration_args(clips, voxels)
    same = storage.resolve(str(out)) == storage.resolve(str(vae))
    if not same and not overwrite and storage.exists(out):
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it (or --out the VAE itself)")
    loaded = load_vae(vae, pick_device(device))
    if raw:
        bias_K = np.zeros(loaded.model.config.num_classes, np.float32)
        record = {"raw": True, "class_bias": [0.0] * bias_K.size, "from_checkpoint": loaded.checkpoint_id}
        _save(loaded, record, bias_K, out)
        if log is not None:
            log(f"{vae} -> {out}: zero class offsets (the raw decode)")
        return record
    if data is None:
        raise ValueError("calibrating needs --data, a scene store of the VAE's grid (or --raw for zero offsets)")
    store = SceneStore.open(data)
    check_vae_matches_store(loaded.model.config, store.grid, vae, data)
    indices = store.indices(split)
    if indices.size == 0:
        raise ValueError(f"{data}: split {split!r} has no clips to calibrate on")
    indices = indices[:clips]
    logits_NK, counts_K = _sample_logits(loaded.model, store, indices, voxels, seed,
                                         next(loaded.model.parameters()).device)
    if counts_K.sum() == 0:
        raise ValueError(f"{data}: the {indices.size} clips of split {split!r} have no valid voxel (mask all 0)")
    bias_K, fit = fit_class_bias(logits_NK, counts_K)
    record = {"store": str(data), "split": split, "clips": int(indices.size), "voxels_per_clip": int(voxels),
              "seed": int(seed), "class_bias": [float(b) for b in bias_K], "target_share":
              [float(c) for c in counts_K / counts_K.sum()], **fit, "from_checkpoint": loaded.checkpoint_id}
    _save(loaded, record, bias_K, out)
    if log is not None:
        note = "" if fit["converged"] else (f"; not within {TOLERANCE:.0%}: the VAE cannot decode some class at its "
                                            "share at any offset (undertrained?)")
        log(f"calibrated {vae} -> {out}: class offsets fitted on {indices.size} {split} clips of {data} "
            f"(largest share error {fit['share_error_before']:.0%} -> {fit['share_error_after']:.1%} in "
            f"{fit['iterations']} iterations{note})")
    return record


def _save(loaded, record: dict, bias_K: np.ndarray, out) -> None:
    """The loaded VAE's weights with the offsets ``bias_K``, its metadata plus its latent space and the record, at
    ``out``."""
    import torch

    from dcgen import checkpoint

    meta = loaded.meta
    state = {k: v.cpu() for k, v in loaded.model.state_dict().items()}
    state["class_bias"] = torch.from_numpy(bias_K)
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "config", "step", "metrics",
                                                          "saved", "versions", "git_sha")}
    extra.update(latent_space=loaded.latent_space, calibration=record)
    checkpoint.save(out, kind="vae", config=meta["config"], state={"model": state}, step=meta["step"],
                    metrics=meta.get("metrics"), extra=extra)


def calibrate_run(run_dir, data: str, *, missing_only: bool = False, log=None) -> dict:
    """Calibrate in place the ``best`` and ``last`` VAE checkpoints of a training run directory (a path or a URI)
    on ``data``'s training split; with ``missing_only``, only those that carry no calibration yet. Returns
    ``{which: record}`` of what it calibrated."""
    from dcgen import storage

    done = {}
    for which in ("best", "last"):
        path = storage.join(run_dir, which)
        if storage.exists(path) and not (missing_only and is_calibrated(path)):
            done[which] = calibrate_vae(path, data, path, log=log)
    return done


def is_calibrated(path) -> bool:
    """Whether the VAE checkpoint at ``path`` carries a decode calibration (fitted, or the raw decode chosen)."""
    from dcgen import checkpoint

    return bool(checkpoint.read_meta(path, kind="vae").get("calibration"))
