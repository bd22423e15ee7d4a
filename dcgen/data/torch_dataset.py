"""A torch ``Dataset`` over the complete clips of a scene store, with split selection and optional random flips.

Flips mirror the scene left-right (Y) with the side information kept consistent (trajectory y and yaw negate,
left/right commands swap), the augmentation a driving scene admits without changing its meaning.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.store import SceneStore

SWAP_LR = np.array([0, 1, 3, 2], dtype=np.uint8)


def flip_y(clip: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mirror one clip (no leading N) across the ego's X axis."""
    out = dict(clip)
    for name, axis in (("occupancy", 2), ("mask", 2), ("layout", 2), ("bev", 1)):
        if name in out:
            out[name] = np.ascontiguousarray(np.flip(out[name], axis=axis))
    if "trajectory" in out:
        traj = out["trajectory"].copy()
        traj[:, 1:] *= -1
        out["trajectory"] = traj
    if "command" in out:
        out["command"] = SWAP_LR[int(out["command"])]
    if "ego_pose" in out:
        reflect = np.diag([1.0, -1.0, 1.0, 1.0]).astype(np.float32)
        out["ego_pose"] = reflect @ out["ego_pose"] @ reflect
    return out


class SceneDataset:
    """``torch.utils.data.Dataset``-compatible: item i is a dict of numpy arrays for one clip."""

    def __init__(self, path: str, split: str | None = "train", arrays: tuple[str, ...] | None = None,
                 random_flip: bool = False, seed: int = 0):
        self.store = SceneStore.open(path)
        self.indices = self.store.indices(split)
        if self.indices.size == 0:
            raise ValueError(f"{path}: split {split!r} has no complete clips")
        self.arrays = arrays or self.store.array_names
        self.random_flip = random_flip
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k = int(self.indices[i])
        clip = {n: v[0] for n, v in self.store.read(slice(k, k + 1), self.arrays).items()}
        if self.random_flip and self._rng.random() < 0.5:
            clip = flip_y(clip)
        return clip
