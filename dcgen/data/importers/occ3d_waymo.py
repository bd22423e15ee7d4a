"""Occ3D-Waymo reader (SPEC §1): 0.4 m semantic grids with LiDAR, camera and field-of-view masks, 10 Hz.

Layout read, as the public Occ3D release lays it out::

    SRC/<training|validation|test>/<scene_idx>/<frame>_04.npz   voxel_label (200,200,16) uint8, free = 23 (or 15)
                                                                  origin_voxel_state  LiDAR mask
                                                                  final_voxel_state   camera mask
                                                                  infov               camera field-of-view mask
                                                                  ego2global (4,4)    only in some redistributions

The ``<frame>.npz`` files beside them (0.1 m grid) are not read. The official release ships no ego poses with the
occupancy (its loaders take them from Waymo's own frame records); redistributions that add a per-frame
``ego2global`` matrix are read. A scene without any gets identity poses, so its clips have a zero trajectory and the
``static`` command; the manifest's ``pose_source`` column and the store's provenance say so. Masks: the LiDAR state
is the store's ``mask``; ``mask_camera`` is the camera state within the field of view, the voxels the Occ3D-Waymo
benchmark evaluates. A split directory may also be named by the split itself (``train``, ``val``, ``test``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcgen.data.classes import WAYMO_TO_UNIFIED, remap
from dcgen.data.importers.source_format import (MASK_CAMERA, Frame, Scene, SceneRef, check_npz, check_pose,
                                                consecutive_runs, load_npz, observed, split_dir)

SIZE_XYZ = (200, 200, 16)
KEYS = ("voxel_label", "origin_voxel_state", "final_voxel_state", "infov")
POSE_KEY = "ego2global"
SUFFIX = "_04.npz"
RELEASE_SPLITS = {"train": "training", "val": "validation", "test": "test"}
POSES_FROM_FILES = "ego2global in each npz"
POSES_IDENTITY = "identity (the release has no ego poses)"


class Occ3DWaymoFormat:
    name = "occ3d-waymo"
    preset = "occ3d"
    frame_rate = 10.0
    extra_arrays = (MASK_CAMERA,)

    def list_scenes(self, src: Path, split: str) -> list[SceneRef]:
        root = split_dir(Path(src), split, RELEASE_SPLITS)
        scenes = [p for p in root.iterdir() if p.is_dir()]
        if not scenes:
            raise ValueError(f"{root}: no scene directories (<scene_idx>/<frame>{SUFFIX})")
        scenes.sort(key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))
        return [SceneRef(p.name, str(p)) for p in scenes]

    def scan_scene(self, ref: SceneRef) -> Scene:
        scene_dir = Path(ref.path)
        files = sorted(scene_dir.glob(f"*{SUFFIX}"))
        if not files:
            raise ValueError(f"{scene_dir}: no <frame>{SUFFIX} files")
        frames, has_pose = [], []
        for path in files:
            stem = path.name[:-len(SUFFIX)]
            if not stem.isdigit():
                raise ValueError(f"{path}: file name is not a frame number (expected <frame>{SUFFIX})")
            headers = check_npz(path, {k: SIZE_XYZ for k in KEYS}, {k: "biu" for k in KEYS}, {POSE_KEY: (4, 4)})
            has_pose.append(POSE_KEY in headers)
            frames.append(Frame(stem, int(stem), str(path)))
        order = np.argsort([f.number for f in frames], kind="stable")
        frames = [frames[i] for i in order]
        has_pose = [has_pose[i] for i in order]
        if any(has_pose) and not all(has_pose):
            lacking = next(f.path for f, h in zip(frames, has_pose) if not h)
            raise ValueError(f"{lacking}: lacks {POSE_KEY!r} while other frames of scene {ref.name} have it; "
                             "expected it in every frame or in none")
        if all(has_pose):
            poses = np.stack([check_pose(load_npz(f.path, (POSE_KEY,))[POSE_KEY], f"{f.path}: {POSE_KEY!r}")
                              for f in frames])
            source = POSES_FROM_FILES
        else:
            poses = np.tile(np.eye(4), (len(frames), 1, 1))
            source = POSES_IDENTITY
        return Scene(ref.name, tuple(frames), poses, source, consecutive_runs([f.number for f in frames]))

    def read_frame(self, frame: Frame) -> dict[str, np.ndarray]:
        data = load_npz(frame.path, KEYS)
        label_XYZ = data["voxel_label"]
        if label_XYZ.shape != SIZE_XYZ:
            raise ValueError(f"{frame.path}: array 'voxel_label' has shape {list(label_XYZ.shape)}, expected "
                             f"{list(SIZE_XYZ)}")
        camera_XYZ = observed(data["final_voxel_state"], SIZE_XYZ, f"{frame.path}: 'final_voxel_state'")
        infov_XYZ = observed(data["infov"], SIZE_XYZ, f"{frame.path}: 'infov'")
        return {
            "occupancy": remap(label_XYZ, WAYMO_TO_UNIFIED, frame.path),
            "mask": observed(data["origin_voxel_state"], SIZE_XYZ, f"{frame.path}: 'origin_voxel_state'"),
            "mask_camera": camera_XYZ & infov_XYZ,
        }


FORMAT = Occ3DWaymoFormat()
