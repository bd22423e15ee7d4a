"""``dcgen export``: a scene store's clips as per-frame files, for tools that read occupancy frame by frame (issue 6).

Formats (frames of clip ``i`` go under a directory named ``clip-{i:09d}``; each exported clip is one scene):

- ``occ3d-npz``: the Occ3D-nuScenes ``trainval/`` layout that ``dcgen data import occ3d-nuscenes`` and the public
  Occ3D loaders read (SPEC §1; Occ3D README): ``OUT/gts/<clip>/<token>/labels.npz`` with ``semantics`` (X, Y, Z
  uint8 Occ3D-nuScenes raw ids, 17 = free), ``mask_lidar`` (the store's ``mask``) and ``mask_camera`` (the store's
  ``mask_camera``, which Occ3D imports carry), each uint8 and all ones only where the store lacks that array (the
  summary says which); and ``OUT/annotations.json``: ``train_split``/``val_split``/``test_split`` (clip names) and
  ``scene_infos[clip][token]`` in time order with ``timestamp`` (µs), ``ego_pose`` (translation, rotation quaternion
  w x y z), ``gt_path`` (``gts/<clip>/<token>/labels.npz``, relative to OUT), ``prev``/``next`` (neighbouring tokens
  of the clip, ``"EOF"`` at its ends as in the release) and an empty ``camera_sensor`` (no images). Timestamps are
  the clip's frames at the grid's frame rate from its manifest ``frame_start``, plus a per-clip offset that keeps
  them strictly increasing across the whole export. Unified classes map back to one raw id each (vehicle → car,
  ground → terrain, pole → traffic_cone, ...), so re-importing gives the same unified ids. The grid is the store's
  (Occ3D's own is 200 × 200 × 16, which the importer requires).
- ``npy``: ``OUT/<clip>/<t:03d>.npy`` (X, Y, Z uint8 unified ids), ``OUT/classes.json`` (id, name, RGB) and
  ``OUT/index.json`` (one entry per clip: its manifest row and directory).

Every clip is checked (class ids in ``0..num_classes-1``, finite poses) before its files are written, and the export
is built in a hidden sibling of OUT that replaces OUT only when complete: a failed export, with ``--overwrite``
too, leaves an earlier export whole.

Legend: T/X/Y/Z clip axes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from dcgen.data.classes import NUSCENES_FREE, check_unified

FORMATS = ("occ3d-npz", "npy")
MARKERS = {"occ3d-npz": "annotations.json", "npy": "index.json"}
# unified id -> the Occ3D-nuScenes raw id written for it (each maps back to the same unified id)
UNIFIED_TO_NUSCENES = np.array([NUSCENES_FREE, 15, 1, 0, 7, 8, 11, 14, 13, 16, 4, 2], dtype=np.uint8)
# what the Occ3D-nuScenes annotations.json holds as ``prev`` of a scene's first frame and ``next`` of its last
END_OF_SCENE = "EOF"


def quaternion_wxyz(rot_33: np.ndarray) -> list[float]:
    """Unit quaternion (w, x, y, z) of a rotation matrix (Shepperd's method: the largest diagonal term first)."""
    m = np.asarray(rot_33, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return (q if q[0] >= 0 else -q).tolist()


def frame_timestamps(frame_starts: list[int], num_frames: int, frame_rate: float) -> np.ndarray:
    """Microsecond timestamps ``[clip, t]``: frame ``frame_start + t`` at ``frame_rate``, plus ``n * spacing`` for
    the n-th exported clip, ``spacing`` being the longest clip end rounded up to a whole second, so timestamps rise
    strictly within each clip and across the whole export while keeping each clip's position in its source scene."""
    if not (math.isfinite(frame_rate) and 0 < frame_rate <= 1e6):
        raise ValueError(f"grid frame_rate {frame_rate!r} Hz cannot give distinct microsecond timestamps; expected "
                         "0 < frame_rate <= 1e6")
    starts = np.asarray(frame_starts, dtype=np.int64)
    if starts.size and int(starts.min()) < 0:
        raise ValueError(f"manifest frame_start {int(starts.min())} is negative; expected >= 0")
    period_us = 1e6 / frame_rate
    rel_NT = np.rint((starts[:, None] + np.arange(num_frames)[None, :]) * period_us).astype(np.int64)
    ends = np.rint((starts + num_frames) * period_us).astype(np.int64)
    spacing = int(math.ceil(int(ends.max(initial=1)) / 1e6)) * 1_000_000
    return rel_NT + np.arange(starts.size, dtype=np.int64)[:, None] * spacing


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that an export may not replace; deletes nothing (the swap at the end does)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to replace an earlier export")
        if not any((out / m).is_file() for m in MARKERS.values()):
            raise ValueError(f"--out {out}: not an earlier dcgen export (no {' or '.join(MARKERS.values())}); "
                             "refusing to delete it")


def _check_clip(clip: dict[str, np.ndarray], num_classes: int, what: str) -> None:
    """Raise naming the clip unless its class ids are in range and its poses finite (JSON has no NaN)."""
    check_unified(clip["occupancy"], num_classes, f"{what}: array 'occupancy'")
    if not np.isfinite(clip["ego_pose"]).all():
        raise ValueError(f"{what}: array 'ego_pose' holds NaN or inf; expected finite ego-to-world poses")


def export_store(store_path: str, fmt: str, out: str | Path, *, split: str | None = None, overwrite: bool = False,
                 log: Callable[[str], None] | None = None) -> dict:
    """Write every complete clip (of ``split``, or all) of the store as per-frame files; returns a summary."""
    from dcgen.data.integrity import staged
    from dcgen.data.store import SceneStore

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    store = SceneStore.open(store_path)
    rows = store.manifest().to_pylist()
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    if not rows:
        raise ValueError(f"{store_path}: no complete clips{' in split ' + repr(split) if split else ''} to export")
    grid = store.grid
    if fmt == "occ3d-npz" and grid.num_classes > UNIFIED_TO_NUSCENES.size:
        raise ValueError(f"{store_path}: {grid.num_classes} classes; occ3d-npz holds the "
                         f"{UNIFIED_TO_NUSCENES.size} unified classes")
    out = Path(out)
    _check_out(out, overwrite)
    masks = {"mask_lidar": "mask", "mask_camera": "mask_camera"}  # npz key -> store array
    sources = {k: (f"store array {a!r}" if a in store.array_names else f"all ones: the store has no {a!r} array")
               for k, a in masks.items()}
    names = ["occupancy", "ego_pose"] + [a for a in masks.values() if a in store.array_names]
    stamps_NT = (frame_timestamps([int(r["frame_start"]) for r in rows], grid.num_frames, grid.frame_rate)
                 if fmt == "occ3d-npz" else None)
    if fmt == "occ3d-npz" and log is not None:
        for k, s in sources.items():
            if s.startswith("all ones"):
                log(f"  {k}: {s}")
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    infos: dict[str, dict] = {}
    index_rows = []
    frames = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(str(out), overwrite=True) as build:  # _check_out decided what may be replaced
        tmp = Path(build)
        tmp.mkdir()
        for n, row in enumerate(rows):
            i = int(row["index"])
            clip = {k: v[0] for k, v in store.read(slice(i, i + 1), names).items()}
            _check_clip(clip, grid.num_classes, f"{store_path}: clip {i}")
            name = f"clip-{i:09d}"
            occ_TXYZ = clip["occupancy"]
            num_t = occ_TXYZ.shape[0]
            if fmt == "npy":
                (tmp / name).mkdir()
                for t in range(num_t):
                    np.save(tmp / name / f"{t:03d}.npy", occ_TXYZ[t])
                index_rows.append({**{k: v for k, v in row.items() if k != "class_counts"}, "dir": name})
            else:
                splits.setdefault(row["split"], []).append(name)
                ones_TXYZ = np.ones(occ_TXYZ.shape, dtype=np.uint8)
                mask_TXYZ = {k: clip[a].astype(np.uint8) if a in clip else ones_TXYZ for k, a in masks.items()}
                tokens = [f"{i:09d}-{t:03d}" for t in range(num_t)]
                infos[name] = {}
                for t, token in enumerate(tokens):
                    gt_path = f"gts/{name}/{token}/labels.npz"
                    (tmp / gt_path).parent.mkdir(parents=True)
                    np.savez_compressed(tmp / gt_path, semantics=UNIFIED_TO_NUSCENES[occ_TXYZ[t]],
                                        **{k: m[t] for k, m in mask_TXYZ.items()})
                    pose = clip["ego_pose"][t].astype(np.float64)
                    infos[name][token] = {
                        "timestamp": int(stamps_NT[n, t]),
                        "ego_pose": {"translation": pose[:3, 3].tolist(), "rotation": quaternion_wxyz(pose[:3, :3])},
                        "gt_path": gt_path,
                        "prev": tokens[t - 1] if t > 0 else END_OF_SCENE,
                        "next": tokens[t + 1] if t + 1 < num_t else END_OF_SCENE,
                        "camera_sensor": {},
                    }
            frames += num_t
            if log is not None and (n + 1) % 100 == 0:
                log(f"  {n + 1}/{len(rows)} clips")
        if fmt == "npy":
            (tmp / "classes.json").write_text(json.dumps(store.meta["classes"], indent=1))
            (tmp / "index.json").write_text(json.dumps({"store": str(store_path), "grid": grid.to_dict(),
                                                        "clips": index_rows}, indent=1, default=str))
        else:
            (tmp / "annotations.json").write_text(json.dumps({f"{k}_split": v for k, v in splits.items()}
                                                             | {"scene_infos": infos,
                                                                "source_store": str(store_path)}))
    summary = {"out": str(out), "format": fmt, "clips": len(rows), "frames": frames}
    if fmt == "occ3d-npz":
        summary["masks"] = sources
    return summary
