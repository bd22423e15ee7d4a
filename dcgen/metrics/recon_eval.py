"""Reconstruction quality of a trained VAE on a scene-store split (SPEC §2, "Reconstruction metric").

Every clip of the split is encoded to the posterior mean and decoded; predicted and ground-truth classes go into one
``IoUAccumulator`` (voxels outside the store's observed mask are excluded, free is not in the mean), which gives the
per-class IoU table, mIoU and binary occupied/free IoU of the whole split. A few clips are rendered as GIFs with the
ground truth above the reconstruction. ``evaluate_reconstruction`` returns a JSON-able dict and, given ``out``,
writes it to ``OUT/recon.json`` beside the GIFs.

Legend: B batch, T time, X/Y/Z space, K classes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

RESULT_FILE = "recon.json"


def _check_grid(vae_config, grid, vae_path: str, data: str) -> None:
    if tuple(vae_config.shape) != tuple(grid.shape) or grid.num_classes > vae_config.num_classes:
        raise ValueError(f"{data}: store grid T={grid.num_frames} XYZ={list(grid.size)} K={grid.num_classes} does "
                         f"not match the VAE {vae_path} (T={vae_config.num_frames} XYZ={list(vae_config.size)} "
                         f"K={vae_config.num_classes}); evaluate a VAE trained on this grid's preset")


@torch.no_grad()
def reconstruct(model, occ_BTXYZ: torch.Tensor, amp: bool = True, trajectory: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Class ids ``[B, T, X, Y, Z]`` decoded from the posterior mean of ``occ`` (``trajectory [B, T, 3]``: the clips'
    ego motion, which a reference-frame VAE needs)."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and occ_BTXYZ.device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    with autocast:
        logits_BKTXYZ, _, _ = model(occ_BTXYZ, sample=False, trajectory=trajectory)
    return logits_BKTXYZ.argmax(1)


def evaluate_reconstruction(vae: str, data: str, split: str | None = "val", out: str | Path | None = None, *,
                            batch_size: int = 4, device: str = "auto", num_renders: int = 3,
                            max_clips: int | None = None, log=None) -> dict:
    """Per-class IoU, mIoU and binary IoU of ``vae`` reconstructing the ``split`` clips of the store ``data``
    (``split=None``: every complete clip). Renders the first ``num_renders`` clips into ``out`` when given."""
    from dcgen.data.store import SceneStore
    from dcgen.metrics.recon_iou import IoUAccumulator
    from dcgen.models.loading import load_vae
    from dcgen.runtime import pick_device

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if num_renders < 0:
        raise ValueError(f"--renders must be >= 0, got {num_renders}")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1 (or unset for the whole split), got {max_clips}")
    store = SceneStore.open(data)
    indices = store.indices(split)
    if indices.size == 0:
        splits = ", ".join(f"{k} {v}" for k, v in store.describe()["splits"].items()) or "none"
        raise ValueError(f"{data}: split {split!r} has no complete clips (splits: {splits})")
    if max_clips is not None:
        indices = indices[:max_clips]
    dev = pick_device(device)
    loaded = load_vae(vae, dev)
    model, config = loaded.model, loaded.model.config
    _check_grid(config, store.grid, str(vae), data)
    arrays = ("occupancy", "trajectory", "mask") if store.has_mask else ("occupancy", "trajectory")
    acc = IoUAccumulator(config.num_classes)
    render_pairs: list[tuple[int, np.ndarray, np.ndarray]] = []
    t0 = time.perf_counter()
    for a in range(0, indices.size, batch_size):
        idx = indices[a:a + batch_size]
        batch = store.read(idx, arrays)
        occ_BTXYZ = torch.from_numpy(batch["occupancy"].astype(np.int64)).to(dev)
        pred_BTXYZ = reconstruct(model, occ_BTXYZ, trajectory=torch.from_numpy(batch["trajectory"]).to(dev))
        mask = torch.from_numpy(batch["mask"]).to(dev) if "mask" in batch else None
        acc.update(pred_BTXYZ, occ_BTXYZ, mask)
        for i in range(min(len(idx), num_renders - len(render_pairs))):
            render_pairs.append((int(idx[i]), batch["occupancy"][i], pred_BTXYZ[i].cpu().numpy().astype(np.uint8)))
        if log is not None:
            log(f"  {min(a + batch_size, indices.size)}/{indices.size} clips")
    seconds = time.perf_counter() - t0
    result = {
        "vae": str(vae), "vae_checkpoint_id": loaded.checkpoint_id, "vae_step": loaded.meta.get("step"),
        "data": str(data), "split": split, "num_clips": int(indices.size), "observed_mask": "mask" in arrays,
        "miou": acc.miou(), "binary_iou": acc.binary_iou(), "per_class_iou": acc.per_class_iou(),
        "confusion": acc.counts.tolist(), "table": acc.table(), "device": str(dev), "seconds": seconds,
        "clips_per_second": indices.size / max(seconds, 1e-9), "renders": [],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["renders"] = render_comparisons(out, render_pairs, loaded.meta.get("step"))
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def render_comparisons(out: Path, pairs: list[tuple[int, np.ndarray, np.ndarray]], step) -> list[str]:
    """One GIF per clip: ground truth above the reconstruction, frames in lockstep."""
    from dcgen.render.clip import save_comparison

    paths = []
    for index, gt_TXYZ, rec_TXYZ in pairs:
        path = out / f"recon-clip{index:06d}.gif"
        save_comparison(path, [("ground truth", gt_TXYZ), ("reconstruction", rec_TXYZ)],
                        title=f"clip {index}, VAE step {step}")
        paths.append(str(path))
    return paths
