"""What a dataset importer provides, and the file checks the importers share (SPEC §1, source datasets).

A source format turns a dataset directory into scenes (ordered frames with ego poses) in three steps:
``list_scenes`` finds the scenes of a split (cheap, no voxel data); ``scan_scene`` checks every file of one scene
without decoding voxels (byte sizes, npz member names, shapes and dtypes, poses), so a bad file is reported before
anything is written; ``read_frame`` decodes one frame into unified class ids and observation masks. Every error is
a ``ValueError`` that names the file and what was expected.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dcgen.data.store import ArraySpec

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Frame:
    """One source frame: its id in the source, its number (for ordering and gap detection) and its label file."""

    key: str  # file stem or frame token, kept in the manifest for traceability
    number: int  # source frame number (CarlaSC/Waymo file number; nuScenes position in the scene)
    path: str


@dataclass(frozen=True)
class SceneRef:
    """A scene found by ``list_scenes``, before its files are checked."""

    name: str
    path: str
    frame_keys: tuple[str, ...] = ()  # known up front when an index file lists them (nuScenes)
    ego_pose_F44: np.ndarray | None = None  # known up front when an index file holds them (nuScenes)


@dataclass(frozen=True, eq=False)
class Scene:
    """A checked scene: frames in time order, their ego-to-world poses, and where windows may be cut."""

    name: str
    frames: tuple[Frame, ...]
    ego_pose_F44: np.ndarray  # float64
    pose_source: str  # recorded per clip in the manifest, e.g. "poses.txt" or "identity (none in the release)"
    runs: tuple[tuple[int, int], ...]  # [start, stop) positions of gap-free stretches; windows never cross a gap

    @property
    def num_frames(self) -> int:
        return len(self.frames)


class SourceFormat(Protocol):
    """The three steps above plus the facts the driver needs to create the store."""

    name: str  # the CLI name, also the manifest's ``source``
    preset: str  # grid preset of the imported clips
    frame_rate: float  # Hz of the source's frames, recorded in the store's grid
    extra_arrays: tuple[ArraySpec, ...]  # arrays beyond the store's core ones (e.g. a camera mask)

    def list_scenes(self, src: Path, split: str) -> list[SceneRef]: ...

    def scan_scene(self, ref: SceneRef) -> Scene: ...

    def read_frame(self, frame: Frame) -> dict[str, np.ndarray]: ...


MASK_CAMERA = ArraySpec("mask_camera", "bool", ("clip", "t", "x", "y", "z"),
                        "true where the voxel is observed in the current camera view (Occ3D mask_camera); the "
                        "Occ3D benchmarks evaluate only these voxels")


def split_dir(src: Path, split: str, release_names: dict[str, str]) -> Path:
    """The directory of ``split`` under ``src``: the release's own name (e.g. ``Train``) or the split name itself."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not known; expected one of {', '.join(SPLITS)}")
    if not src.is_dir():
        raise ValueError(f"{src}: dataset directory does not exist")
    names = list(dict.fromkeys((release_names[split], split)))
    found = [src / n for n in names if (src / n).is_dir()]
    if not found:
        have = sorted(p.name for p in src.iterdir() if p.is_dir())
        raise ValueError(f"{src}: no directory for split {split!r}; expected {' or '.join(names)}, found "
                         f"{have or 'no directories'}")
    if len(found) > 1:
        raise ValueError(f"{src}: both {found[0].name} and {found[1].name} exist for split {split!r}; "
                         "keep one of them")
    return found[0]


def consecutive_runs(numbers: list[int]) -> tuple[tuple[int, int], ...]:
    """Maximal stretches of evenly numbered frames: the step is the scene's smallest one, any larger jump a gap."""
    if len(numbers) < 2:
        return ((0, len(numbers)),) if numbers else ()
    diffs = np.diff(np.asarray(numbers, dtype=np.int64))
    if (diffs <= 0).any():
        raise ValueError(f"frame numbers are not strictly increasing: {numbers[:8]}")
    step = int(diffs.min())
    cuts = [0, *(int(i) + 1 for i in np.flatnonzero(diffs != step)), len(numbers)]
    return tuple(zip(cuts[:-1], cuts[1:]))


def check_file_size(path: Path, nbytes: int, what: str) -> None:
    """Raise unless ``path`` is a readable file of exactly ``nbytes`` bytes."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ValueError(f"{path}: missing {what}") from None
    except OSError as e:
        raise ValueError(f"{path}: unreadable {what} ({e.strerror})") from None
    if size != nbytes:
        raise ValueError(f"{path}: {what} has {size} bytes, expected {nbytes}")


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every member of an ``.npz`` file, read from the ``.npy`` headers without the data."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:  # rare utf-8 header format: decode the member to learn its header
                        with np.load(path, allow_pickle=False) as npz:
                            arr = npz[info.filename[:-4]]
                        shape, dtype = arr.shape, arr.dtype
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing file") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
    return out


def check_npz(path: Path, expected: dict[str, tuple[int, ...]], dtype_kinds: dict[str, str],
              optional: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Raise unless the npz holds every ``expected`` key with that shape and a dtype of the allowed kinds."""
    headers = npz_headers(path)
    missing = [k for k in expected if k not in headers]
    if missing:
        raise ValueError(f"{path}: lacks arrays {missing}; expected keys {sorted(expected)}, found "
                         f"{sorted(headers)}")
    for key, shape in {**expected, **{k: v for k, v in (optional or {}).items() if k in headers}}.items():
        got_shape, got_dtype = headers[key]
        if got_shape != shape:
            raise ValueError(f"{path}: array {key!r} has shape {list(got_shape)}, expected {list(shape)}")
        kinds = dtype_kinds.get(key, "biuf")
        if got_dtype.kind not in kinds:
            raise ValueError(f"{path}: array {key!r} has dtype {got_dtype}, expected "
                             f"{'integer or bool' if kinds == 'biu' else 'numeric'}")
    return headers


def load_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Decode the named members of an npz (no pickles), naming the file when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: lacks arrays {missing}; expected keys {list(keys)}, found {npz.files}")
            return {k: np.asarray(npz[k]) for k in keys}
    except FileNotFoundError:
        raise ValueError(f"{path}: missing file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None


def observed(state: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A visibility state array as a bool mask (non-zero = observed, as the Occ3D loaders read it)."""
    if state.shape != shape:
        raise ValueError(f"{what}: shape {list(state.shape)}, expected {list(shape)}")
    if state.dtype.kind not in "biu":
        raise ValueError(f"{what}: dtype {state.dtype}, expected integer or bool")
    return state != 0


def check_pose(pose_44: np.ndarray, what: str) -> np.ndarray:
    """Raise unless ``pose_44`` is a finite, invertible rigid-style 4x4; returns it as float64."""
    pose = np.asarray(pose_44, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"{what}: pose has shape {list(pose.shape)}, expected [4, 4]")
    if not np.isfinite(pose).all():
        raise ValueError(f"{what}: pose holds NaN or inf")
    if abs(np.linalg.det(pose[:3, :3])) < 1e-6 or not np.allclose(pose[3], (0, 0, 0, 1)):
        raise ValueError(f"{what}: pose is not an invertible rigid transform (rotation block singular or last "
                         f"row {pose[3].tolist()} instead of [0, 0, 0, 1])")
    return pose


def pose_from_quaternion(translation, rotation_wxyz, what: str) -> np.ndarray:
    """4x4 ego-to-world from a translation and a (w, x, y, z) quaternion (the nuScenes convention)."""
    t = np.asarray(translation, dtype=np.float64)
    q = np.asarray(rotation_wxyz, dtype=np.float64)
    if t.shape != (3,) or q.shape != (4,):
        raise ValueError(f"{what}: expected translation [3] and rotation quaternion [4] (w, x, y, z), got "
                         f"{list(t.shape)} and {list(q.shape)}")
    norm = float(np.linalg.norm(q))
    if not np.isfinite(t).all() or not np.isfinite(q).all() or norm < 1e-6:
        raise ValueError(f"{what}: translation {t.tolist()} / rotation {q.tolist()} is not a finite pose with a "
                         "non-zero quaternion")
    w, x, y, z = q / norm
    pose = np.eye(4)
    pose[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    pose[:3, 3] = t
    return pose
