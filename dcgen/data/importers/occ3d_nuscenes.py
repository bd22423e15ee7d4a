"""Occ3D-nuScenes reader (SPEC §1): per-keyframe semantic grids with LiDAR and camera masks, poses from the index.

Layout read, as the public Occ3D release lays out ``trainval/``::

    SRC/annotations.json
    SRC/gts/<scene_name>/<frame_token>/labels.npz    semantics (200,200,16) uint8, 17 = free; mask_lidar; mask_camera

``annotations.json`` (the part read here; other keys such as ``camera_sensor``, ``gt_path``, ``prev``/``next``
are ignored)::

    {"train_split": [scene_name, ...], "val_split": [...],          # a "test_split" is read for --split test
     "scene_infos": {scene_name: {frame_token: {"timestamp": ...,    # tokens listed in time order
                                               "ego_pose": {"translation": [x, y, z],
                                                            "rotation": [w, x, y, z]}}}}}

Frames keep the file's order (the release lists them by time); when every timestamp is a number that order is
checked. Keyframes come at 2 Hz, so imported clips carry ``frame_rate`` 2. ``mask_lidar`` becomes the store's
``mask`` and ``mask_camera`` the extra ``mask_camera`` array.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcgen.data.classes import NUSCENES_TO_UNIFIED, remap
from dcgen.data.importers.source_format import (MASK_CAMERA, SPLITS, Frame, Scene, SceneRef, check_npz, load_npz,
                                                observed, pose_from_quaternion)

SIZE_XYZ = (200, 200, 16)
KEYS = ("semantics", "mask_lidar", "mask_camera")
ANNOTATIONS = "annotations.json"


def _timestamp(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


class Occ3DNuScenesFormat:
    name = "occ3d-nuscenes"
    preset = "occ3d"
    frame_rate = 2.0
    extra_arrays = (MASK_CAMERA,)

    def list_scenes(self, src: Path, split: str) -> list[SceneRef]:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not known; expected one of {', '.join(SPLITS)}")
        path = Path(src) / ANNOTATIONS
        try:
            index = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: missing; Occ3D-nuScenes needs annotations.json beside gts/") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable JSON ({e})") from None
        if not isinstance(index, dict) or not isinstance(index.get("scene_infos"), dict):
            raise ValueError(f"{path}: expected an object with 'scene_infos' (scene -> frame token -> info) and "
                             f"'<split>_split' lists")
        key = f"{split}_split"
        names = index.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            have = sorted(k for k in index if k.endswith("_split"))
            raise ValueError(f"{path}: no scene list {key!r} for split {split!r}; it has {have}")
        if not names:
            raise ValueError(f"{path}: {key!r} lists no scenes")
        infos = index["scene_infos"]
        refs = []
        for name in sorted(names):
            frames = infos.get(name)
            if not isinstance(frames, dict) or not frames:
                raise ValueError(f"{path}: scene {name!r} of {key!r} has no frames in 'scene_infos'")
            poses, stamps = [], []
            for token, info in frames.items():
                what = f"{path}: scene_infos[{name!r}][{token!r}]"
                ego = info.get("ego_pose") if isinstance(info, dict) else None
                if not isinstance(ego, dict) or "translation" not in ego or "rotation" not in ego:
                    raise ValueError(f"{what}: lacks ego_pose {{translation, rotation}}")
                poses.append(pose_from_quaternion(ego["translation"], ego["rotation"], f"{what}.ego_pose"))
                stamps.append(_timestamp(info.get("timestamp")))
            if all(s is not None for s in stamps) and any(b <= a for a, b in zip(stamps, stamps[1:])):
                raise ValueError(f"{path}: frames of scene {name!r} are not listed in increasing timestamp order")
            refs.append(SceneRef(name, str(Path(src) / "gts" / name), tuple(frames), np.stack(poses)))
        return refs

    def scan_scene(self, ref: SceneRef) -> Scene:
        frames = []
        for i, token in enumerate(ref.frame_keys):
            path = Path(ref.path) / token / "labels.npz"
            check_npz(path, {k: SIZE_XYZ for k in KEYS}, {k: "biu" for k in KEYS})
            frames.append(Frame(token, i, str(path)))
        return Scene(ref.name, tuple(frames), ref.ego_pose_F44, "annotations.json ego_pose",
                     ((0, len(frames)),))

    def read_frame(self, frame: Frame) -> dict[str, np.ndarray]:
        data = load_npz(frame.path, KEYS)
        semantics_XYZ = data["semantics"]
        if semantics_XYZ.shape != SIZE_XYZ:
            raise ValueError(f"{frame.path}: array 'semantics' has shape {list(semantics_XYZ.shape)}, expected "
                             f"{list(SIZE_XYZ)}")
        return {
            "occupancy": remap(semantics_XYZ, NUSCENES_TO_UNIFIED, frame.path),
            "mask": observed(data["mask_lidar"], SIZE_XYZ, f"{frame.path}: 'mask_lidar'"),
            "mask_camera": observed(data["mask_camera"], SIZE_XYZ, f"{frame.path}: 'mask_camera'"),
        }


FORMAT = Occ3DNuScenesFormat()
