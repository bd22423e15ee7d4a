"""Reconstruction IoU of the VAE (SPEC §2, "Reconstruction metric"), accumulated over a whole split.

Per class c: IoU_c = tp / (tp + fp + fn) with the counts summed over every voxel of every clip of the split (not
averaged per clip); voxels outside the observed mask (e.g. CarlaSC cells no LiDAR ray reached) are excluded.
mIoU is the mean of IoU_c over the non-free classes present in the ground truth of the split; the binary IoU
treats every non-free class as "occupied". The accumulator keeps a K × K confusion matrix (rows ground truth,
columns prediction), so partial results from several workers combine by adding ``counts``.

Legend: K classes; inputs are any matching shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from dcgen.data.classes import CLASS_NAMES, FREE


def _flat(a, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(a).__name__}")
    return a.reshape(-1)


class IoUAccumulator:
    """Confusion counts over a split; ``update`` per batch, then ``miou``, ``binary_iou``, ``per_class_iou``."""

    def __init__(self, num_classes: int, class_names: tuple[str, ...] | None = None, free_class: int = FREE):
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}, expected >= 2 (free + one class)")
        if not 0 <= free_class < num_classes:
            raise ValueError(f"free_class={free_class}, expected an id in [0, {num_classes - 1}]")
        if class_names is None:
            class_names = tuple(CLASS_NAMES[:num_classes]) + tuple(
                f"class{i}" for i in range(len(CLASS_NAMES), num_classes))
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.free_class = free_class
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target, mask=None) -> None:
        """Add one batch: predicted and ground-truth class ids (same shape), optional observed mask (True = count)."""
        pred_P, target_P = _flat(pred, "pred"), _flat(target, "target")
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        device = target_P.device
        pred_P = pred_P.to(device).long()
        target_P = target_P.long()
        if mask is not None:
            mask_P = _flat(mask, "mask")
            if tuple(mask.shape) != tuple(target.shape):
                raise ValueError(f"mask shape {tuple(mask.shape)} differs from target shape {tuple(target.shape)}")
            mask_P = mask_P.to(device).bool()
            pred_P, target_P = pred_P[mask_P], target_P[mask_P]
        if target_P.numel() == 0:
            return
        for name, ids in (("pred", pred_P), ("target", target_P)):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"{name} class ids span [{lo}, {hi}], expected ids in [0, {self.num_classes - 1}]")
        k = self.num_classes
        confusion = torch.bincount(target_P * k + pred_P, minlength=k * k).view(k, k)
        self.counts += confusion.cpu().numpy().astype(np.int64)

    def merge(self, other: "IoUAccumulator") -> "IoUAccumulator":
        """Add another accumulator's counts (e.g. from another worker) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge IoU over {other.num_classes} classes into one over {self.num_classes}")
        self.counts += np.asarray(other.counts, dtype=np.int64)
        return self

    @property
    def tp(self) -> np.ndarray:
        return np.diag(self.counts).copy()

    @property
    def fp(self) -> np.ndarray:
        return self.counts.sum(axis=0) - np.diag(self.counts)

    @property
    def fn(self) -> np.ndarray:
        return self.counts.sum(axis=1) - np.diag(self.counts)

    def _iou(self) -> np.ndarray:
        """``[K]`` IoU, NaN for classes absent from the ground truth."""
        tp, fp, fn = self.tp, self.fp, self.fn
        present = (tp + fn) > 0
        iou = np.full(self.num_classes, np.nan)
        iou[present] = tp[present] / (tp + fp + fn)[present]
        return iou

    def per_class_iou(self) -> dict[str, float | None]:
        """IoU by class name; ``None`` for classes absent from the ground truth (JSON-friendly)."""
        return {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.class_names, self._iou())}

    def miou(self) -> float:
        """Mean IoU over non-free classes present in the ground truth; NaN if there are none."""
        iou = np.delete(self._iou(), self.free_class)
        iou = iou[~np.isnan(iou)]
        return float(iou.mean()) if iou.size else float("nan")

    def binary_iou(self) -> float:
        """IoU of occupied (any non-free class) against free; NaN if neither side has an occupied voxel."""
        occ = np.ones(self.num_classes, dtype=bool)
        occ[self.free_class] = False
        tp = self.counts[np.ix_(occ, occ)].sum()
        fp = self.counts[self.free_class, occ].sum()
        fn = self.counts[occ, self.free_class].sum()
        denom = tp + fp + fn
        return float(tp / denom) if denom else float("nan")

    def summary(self) -> dict:
        return {"miou": self.miou(), "binary_iou": self.binary_iou(), "per_class_iou": self.per_class_iou()}

    def table(self) -> str:
        """A printable table: IoU and (tp, fp, fn) per class, then mIoU and binary IoU, in percent."""
        iou, tp, fp, fn = self._iou(), self.tp, self.fp, self.fn
        width = max(len(n) for n in self.class_names + ("occupied",))
        lines = [f"{'class':<{width}}  {'IoU %':>7}  {'tp':>12}  {'fp':>12}  {'fn':>12}"]
        for c, name in enumerate(self.class_names):
            shown = "absent" if np.isnan(iou[c]) else f"{100 * iou[c]:.2f}"
            note = "  (free, not in mIoU)" if c == self.free_class else ""
            lines.append(f"{name:<{width}}  {shown:>7}  {tp[c]:>12}  {fp[c]:>12}  {fn[c]:>12}{note}")
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou():>7.2f}")
        lines.append(f"{'occupied':<{width}}  {100 * self.binary_iou():>7.2f}")
        return "\n".join(lines)
