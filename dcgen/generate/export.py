"""``dcgen export``: a scene store's clips as per-frame files, for tools that read occupancy frame by frame (issue 6).

Formats (frames of clip ``i`` go under a directory named ``clip-{i:09d}``):

- ``occ3d-npz``: the Occ3D-nuScenes layout that ``dcgen data import occ3d-nuscenes`` and the public Occ3D tools
  read (SPEC §1): ``OUT/gts/<clip>/<token>/labels.npz`` with ``semantics`` (X, Y, Z uint8 in Occ3D-nuScenes raw ids,
  17 = free), ``mask_lidar`` and ``mask_camera`` (uint8; the store's ``mask`` when it has one, else all ones), and
  ``OUT/annotations.json`` with ``train_split``/``val_split``/``test_split`` and per-frame ``timestamp`` (µs) and
  ``ego_pose`` (translation, rotation quaternion w x y z). Unified classes map back to one raw id each (vehicle →
  car, ground → terrain, pole → traffic_cone, ...), so re-importing gives the same unified ids. The grid is the
  store's (Occ3D's own is 200 × 200 × 16).
- ``npy``: ``OUT/<clip>/<t:03d>.npy`` (X, Y, Z uint8 unified ids), ``OUT/classes.json`` (id, name, RGB) and
  ``OUT/index.json`` (one entry per clip: its manifest row and directory).

Legend: T/X/Y/Z clip axes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from dcgen.data.classes import NUSCENES_FREE

FORMATS = ("occ3d-npz", "npy")
MARKERS = {"occ3d-npz": "annotations.json", "npy": "index.json"}
# unified id -> the Occ3D-nuScenes raw id written for it (each maps back to the same unified id)
UNIFIED_TO_NUSCENES = np.array([NUSCENES_FREE, 15, 1, 0, 7, 8, 11, 14, 13, 16, 4, 2], dtype=np.uint8)


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


def _prepare_out(out: Path, fmt: str, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to replace an earlier export")
        if not any((out / m).is_file() for m in MARKERS.values()):
            raise ValueError(f"--out {out}: not an earlier dcgen export (no {' or '.join(MARKERS.values())}); "
                             "refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def export_store(store_path: str, fmt: str, out: str | Path, *, split: str | None = None, overwrite: bool = False,
                 log: Callable[[str], None] | None = None) -> dict:
    """Write every complete clip (of ``split``, or all) of the store as per-frame files; returns a summary."""
    from dcgen.data.store import SceneStore

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    store = SceneStore.open(store_path)
    table = store.manifest()
    rows = table.to_pylist()
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    if not rows:
        raise ValueError(f"{store_path}: no complete clips{' in split ' + repr(split) if split else ''} to export")
    if fmt == "occ3d-npz" and store.grid.num_classes > UNIFIED_TO_NUSCENES.size:
        raise ValueError(f"{store_path}: {store.grid.num_classes} classes; occ3d-npz holds the "
                         f"{UNIFIED_TO_NUSCENES.size} unified classes")
    out = Path(out)
    _prepare_out(out, fmt, overwrite)
    grid = store.grid
    names = ("occupancy", "ego_pose") + (("mask",) if store.has_mask else ())
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    infos: dict[str, dict] = {}
    index_rows = []
    frames = 0
    for n, row in enumerate(rows):
        i = int(row["index"])
        clip = {k: v[0] for k, v in store.read(slice(i, i + 1), names).items()}
        name = f"clip-{i:09d}"
        occ_TXYZ = clip["occupancy"]
        if fmt == "npy":
            (out / name).mkdir()
            for t in range(occ_TXYZ.shape[0]):
                np.save(out / name / f"{t:03d}.npy", occ_TXYZ[t])
            index_rows.append({**{k: v for k, v in row.items() if k != "class_counts"}, "dir": name})
        else:
            splits.setdefault(row["split"], []).append(name)
            infos[name] = {}
            mask_TXYZ = clip["mask"].astype(np.uint8) if "mask" in clip else np.ones_like(occ_TXYZ)
            for t in range(occ_TXYZ.shape[0]):
                token = f"{i:09d}-{t:03d}"
                d = out / "gts" / name / token
                d.mkdir(parents=True)
                np.savez_compressed(d / "labels.npz", semantics=UNIFIED_TO_NUSCENES[occ_TXYZ[t]],
                                    mask_lidar=mask_TXYZ[t], mask_camera=mask_TXYZ[t])
                pose = clip["ego_pose"][t].astype(np.float64)
                infos[name][token] = {"timestamp": int(round(t * 1e6 / grid.frame_rate)),
                                      "ego_pose": {"translation": pose[:3, 3].tolist(),
                                                   "rotation": quaternion_wxyz(pose[:3, :3])}}
        frames += occ_TXYZ.shape[0]
        if log is not None and (n + 1) % 100 == 0:
            log(f"  {n + 1}/{len(rows)} clips")
    if fmt == "npy":
        (out / "classes.json").write_text(json.dumps(store.meta["classes"], indent=1))
        (out / "index.json").write_text(json.dumps({"store": str(store_path), "grid": grid.to_dict(),
                                                    "clips": index_rows}, indent=1, default=str))
    else:
        (out / "annotations.json").write_text(json.dumps({f"{k}_split": v for k, v in splits.items()}
                                                         | {"scene_infos": infos, "source_store": str(store_path)}))
    return {"out": str(out), "format": fmt, "clips": len(rows), "frames": frames}
