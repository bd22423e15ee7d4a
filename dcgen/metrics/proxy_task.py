"""The supervised proxy task dcgen's metric feature networks are trained on (SPEC §4: feature networks "trained by
dcgen itself on the training data", giving pooled features and the class probabilities p(y|x) that IS needs).

No human labels exist for occupancy clips, so the label is derived from the data, from three properties a scene
visibly has:
- **command** (4): the store's driving command, 0 static, 1 forward, 2 left, 3 right (SPEC §1);
- **traffic density** (``len(density_edges) + 1`` bins, default 3): the share of the clip's voxels that are
  vehicles, binned at edges fitted to the training split's terciles (``fit_density_edges``) and kept in the
  checkpoint, so the same clip always gets the same bin;
- **layout type** (2): *intersection* when frame 0's bird's-eye road layout has a crossing road within
  ``intersection_distance`` metres of the ego along its heading, else *straight road*. A crossing road is a row
  of cells (fixed forward distance) whose lateral bands beyond ``lateral_margin`` metres on both sides are at
  least ``crossing_coverage`` drivable (road, or a vehicle or pedestrian standing on it); kerbside parking lots
  cover one side at most, so they don't count.
The class id is ``(command * num_density_bins + density_bin) * 2 + layout``: 24 classes by default, of which a
dataset may leave some empty. The networks' classifiers are *factorised*: one softmax per part (4 + 3 + 2 = 9
logits, ``num_logits``), trained with the sum of the three cross-entropies, so every part learns from every clip
however thinly the 24 joint classes are populated; p(y|x) over the joint classes is the product of the three
parts' probabilities (``joint_log_probs``), and the prediction is the joint class of the three arg-maxes.
Mirroring a clip across the ego's X axis swaps left and right and keeps the other two parts (``mirror_labels``).
Legend: N clips, T time, X/Y/Z space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dcgen.data.classes import CLASS_IDS, FREE
from dcgen.data.derive import COMMANDS

DRIVABLE = (CLASS_IDS["road"], CLASS_IDS["vehicle"], CLASS_IDS["pedestrian"])
VEHICLE = CLASS_IDS["vehicle"]
LAYOUTS = ("straight", "intersection")
DENSITY_NAMES = {2: ("sparse", "dense"), 3: ("sparse", "medium", "dense")}
MIRROR_COMMAND = np.array([0, 1, 3, 2], dtype=np.int64)


@dataclass(frozen=True)
class ProxyTask:
    """The label definition; ``density_edges`` come from the training data (``fit_density_edges``)."""

    density_edges: tuple[float, ...] = (0.01, 0.02)  # vehicle share of the clip's voxels between bins
    intersection_distance: float = 12.0  # metres ahead of or behind the ego
    lateral_margin: float = 12.0  # metres left and right of the ego's road centre
    crossing_coverage: float = 0.8

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.density_edges)
        if not edges or any(not 0.0 <= e <= 1.0 for e in edges) or list(edges) != sorted(set(edges)):
            raise ValueError(f"density_edges must be a non-empty, strictly increasing tuple of vehicle shares in "
                             f"[0, 1], got {self.density_edges}")
        object.__setattr__(self, "density_edges", edges)
        if not self.intersection_distance > 0 or not self.lateral_margin > 0:
            raise ValueError(f"intersection_distance and lateral_margin must be positive metres, got "
                             f"{self.intersection_distance} and {self.lateral_margin}")
        if not 0.0 < self.crossing_coverage <= 1.0:
            raise ValueError(f"crossing_coverage must be in (0, 1], got {self.crossing_coverage}")

    @property
    def num_density_bins(self) -> int:
        return len(self.density_edges) + 1

    @property
    def num_classes(self) -> int:
        return len(COMMANDS) * self.num_density_bins * len(LAYOUTS)

    @property
    def part_sizes(self) -> tuple[int, int, int]:
        """Classes of each part: (command, density, layout)."""
        return len(COMMANDS), self.num_density_bins, len(LAYOUTS)

    @property
    def num_logits(self) -> int:
        return sum(self.part_sizes)

    def split_labels(self, labels_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint class ids -> (command, density bin, layout) ids."""
        _, nd, nl = self.part_sizes
        return labels_B // (nd * nl), (labels_B // nl) % nd, labels_B % nl

    def _parts(self, logits_BL: torch.Tensor) -> list[torch.Tensor]:
        if logits_BL.shape[-1] != self.num_logits:
            raise ValueError(f"proxy-task logits have {logits_BL.shape[-1]} outputs; expected {self.num_logits} "
                             f"(command {self.part_sizes[0]} + density {self.part_sizes[1]} + layout "
                             f"{self.part_sizes[2]})")
        return list(torch.split(logits_BL.float(), self.part_sizes, dim=-1))

    def loss(self, logits_BL: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Sum of the three parts' cross-entropies."""
        return sum(F.cross_entropy(lg, y) for lg, y in zip(self._parts(logits_BL), self.split_labels(labels_B)))

    def joint_log_probs(self, logits_BL: torch.Tensor) -> torch.Tensor:
        """``[B, num_classes]`` log p(y|x) of the joint classes: the sum of the parts' log-softmaxes."""
        lc, ld, ll = (F.log_softmax(p.double(), dim=-1) for p in self._parts(logits_BL))
        joint = lc[:, :, None, None] + ld[:, None, :, None] + ll[:, None, None, :]
        return joint.reshape(logits_BL.shape[0], self.num_classes)

    def predict(self, logits_BL: torch.Tensor) -> torch.Tensor:
        """``[B]`` joint class of the three parts' arg-maxes (the arg-max of the joint probabilities)."""
        c, d, lay = (p.argmax(-1) for p in self._parts(logits_BL))
        _, nd, nl = self.part_sizes
        return (c * nd + d) * nl + lay

    def class_names(self) -> list[str]:
        """``command/density/layout`` for every class id, e.g. ``left/dense/intersection``."""
        density = DENSITY_NAMES.get(self.num_density_bins) or tuple(f"density{i}" for i in
                                                                  range(self.num_density_bins))
        return [f"{c}/{d}/{lay}" for c in COMMANDS for d in density for lay in LAYOUTS]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ProxyTask":
        from dcgen import config

        return config.from_dict(cls, d)

    # ---- the three parts --------------------------------------------------------------------------------

    def density_bins(self, occ_NTXYZ: np.ndarray) -> np.ndarray:
        """``[N]`` int64 density bin of each clip."""
        share_N = vehicle_share(occ_NTXYZ)
        return np.searchsorted(np.asarray(self.density_edges), share_N, side="right").astype(np.int64)

    def layouts(self, occ_NTXYZ: np.ndarray, voxel_size_xy: tuple[float, float]) -> np.ndarray:
        """``[N]`` int64: 1 intersection, 0 straight road (from frame 0)."""
        occ_NTXYZ = _clips(occ_NTXYZ)
        bev_NXY = top_class(occ_NTXYZ[:, 0])
        n, nx, ny = bev_NXY.shape
        vx, vy = voxel_size_xy
        x_X = (np.arange(nx) + 0.5 - nx / 2) * vx
        y_Y = (np.arange(ny) + 0.5 - ny / 2) * vy
        left_Y, right_Y = y_Y >= self.lateral_margin, y_Y <= -self.lateral_margin
        if not left_Y.any() or not right_Y.any():
            raise ValueError(f"the grid reaches only {float(y_Y.max()):.1f} m to the side; the layout type needs "
                             f"cells beyond lateral_margin={self.lateral_margin} m on both sides")
        drivable_NXY = np.isin(bev_NXY, DRIVABLE)
        cover_NX = np.minimum(drivable_NXY[:, :, left_Y].mean(2), drivable_NXY[:, :, right_Y].mean(2))
        near_X = np.abs(x_X) <= self.intersection_distance
        return ((cover_NX >= self.crossing_coverage) & near_X[None]).any(1).astype(np.int64)

    def labels(self, occ_NTXYZ: np.ndarray, command_N: np.ndarray, voxel_size_xy: tuple[float, float]) -> np.ndarray:
        """``[N]`` int64 class ids of clips with their commands."""
        occ_NTXYZ = _clips(occ_NTXYZ)
        command_N = np.asarray(command_N).astype(np.int64).reshape(-1)
        if command_N.shape[0] != occ_NTXYZ.shape[0]:
            raise ValueError(f"{command_N.shape[0]} commands for {occ_NTXYZ.shape[0]} clips; expected one each")
        if command_N.size and (command_N.min() < 0 or command_N.max() >= len(COMMANDS)):
            raise ValueError(f"commands must be in 0..{len(COMMANDS) - 1}, got values "
                             f"{sorted(set(command_N.tolist()))}")
        density_N = self.density_bins(occ_NTXYZ)
        layout_N = self.layouts(occ_NTXYZ, voxel_size_xy)
        return (command_N * self.num_density_bins + density_N) * len(LAYOUTS) + layout_N

    def mirror_labels(self, labels_N: np.ndarray) -> np.ndarray:
        """Labels of the same clips mirrored across the ego's X axis: left and right commands swap."""
        labels_N = np.asarray(labels_N, dtype=np.int64)
        per_command = self.num_density_bins * len(LAYOUTS)
        return MIRROR_COMMAND[labels_N // per_command] * per_command + labels_N % per_command


def _clips(occ_NTXYZ) -> np.ndarray:
    arr = np.asarray(occ_NTXYZ)
    if arr.ndim != 5 or arr.dtype.kind not in "iu":
        raise ValueError(f"expected integer class ids of shape [N, T, X, Y, Z], got {arr.dtype} of shape "
                         f"{list(arr.shape)}")
    return arr


def vehicle_share(occ_NTXYZ) -> np.ndarray:
    """``[N]`` float64 share of each clip's voxels (all frames) that hold a vehicle."""
    occ_NTXYZ = _clips(occ_NTXYZ)
    n = occ_NTXYZ.shape[0]
    return (occ_NTXYZ.reshape(n, -1) == VEHICLE).mean(1, dtype=np.float64)


def top_class(occ_NXYZ: np.ndarray) -> np.ndarray:
    """``[N, X, Y]`` top-most non-free class of each column (``FREE`` for an empty column)."""
    z = occ_NXYZ.shape[-1]
    occupied = occ_NXYZ != FREE
    top = z - 1 - np.argmax(occupied[..., ::-1], axis=-1)
    cls = np.take_along_axis(occ_NXYZ, top[..., None], axis=-1)[..., 0]
    return np.where(occupied.any(-1), cls, FREE)


def fit_density_edges(vehicle_counts_N, voxels_per_clip: int, num_bins: int = 3) -> tuple[float, ...]:
    """Edges splitting the training clips' vehicle shares into ``num_bins`` equally populated bins.

    ``vehicle_counts_N`` are vehicle voxels per clip (the store manifest's ``class_counts`` has them, so no pass
    over the occupancy is needed). Ties (e.g. many clips without any vehicle) can merge quantiles; the edges are
    then nudged apart so every bin stays a valid, if emptier, interval.
    """
    counts = np.asarray(vehicle_counts_N, dtype=np.float64).reshape(-1)
    if counts.size < num_bins:
        raise ValueError(f"fitting {num_bins} traffic density bins needs at least {num_bins} training clips, "
                         f"got {counts.size}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    share = counts / float(voxels_per_clip)
    edges = np.quantile(share, np.arange(1, num_bins) / num_bins)
    out: list[float] = []
    for e in edges:
        e = float(min(max(e, 0.0), 1.0))
        if out and e <= out[-1]:
            e = float(np.nextafter(out[-1], 2.0))
        out.append(e)
    return tuple(out)
