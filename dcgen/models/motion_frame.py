"""Ego-motion compensation for the HexPlane VAE (``VAEConfig.frame = "reference"``; not in SPEC).

SPEC §2 factors a clip in each frame's own ego coordinates. The ego moves (5–14 m and up to 0.9 rad per small-city
clip), so there nearly everything moves: the time-collapsed ``xy`` plane holds streaks and ``tx``/``ty`` must pick
positions along them, which a product of planes does poorly. In the reference frame the clip is resampled into the
ego coordinates of its middle frame with the clip's own trajectory, so the static world (road, buildings, poles)
stands still and the planes only have to hold what really moves. The decoder's logits are resampled back into
every frame's ego coordinates, so the loss, the metrics and every caller still see ordinary ego-frame clips.

The trajectory travels inside the latent: ``TrajectorySlot`` writes the clip's ``[T, 3]`` (x, y, yaw) into the
last channels of the ``tz`` plane (the least loaded plane), so a HexPlane stays self-contained: the DiT generates
the ego motion with the scene, and decode needs nothing but the six planes. Those cells are not part of the
Gaussian posterior (no noise, no KL) and the decoder's planes see them zeroed.

Coordinates: frame t's pose in frame 0 is ``(x_t, y_t, a_t)`` (the store's ``trajectory``), so a point ``q`` of the
reference frame m is ``p_t = R(a_m − a_t) q + R(−a_t)(c_m − c_t)`` in frame t, with ``c = (x, y)``. Voxel ``i``
of an axis of ``n`` voxels of size ``v`` has its centre at ``(i + ½) v − n v / 2`` (the ego at the grid's centre).

Legend: B batch, T time, X/Y/Z space, K classes, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcgen.data.grid import LatentDims

FRAMES = ("ego", "reference")
# metres, metres, radians → latent units of order one (a clip moves up to ~15 m and turns up to ~1 rad)
TRAJECTORY_SCALE = (10.0, 10.0, 1.0)


def reference_index(num_frames: int) -> int:
    """The frame whose ego coordinates a reference-frame clip is expressed in: the middle one, so no frame is more
    than half a clip's motion away."""
    return num_frames // 2


def _ref_to_frame(traj_BT3: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``cos, sin, dx, dy`` ``[B, T]`` of the rigid map from reference-frame to frame-t coordinates."""
    traj_BT3 = traj_BT3.double()
    m = reference_index(traj_BT3.shape[1])
    x, y, a = traj_BT3.unbind(-1)
    rot = a[:, m:m + 1] - a
    ex, ey = x[:, m:m + 1] - x, y[:, m:m + 1] - y
    ca, sa = torch.cos(-a), torch.sin(-a)
    return torch.cos(rot), torch.sin(rot), ca * ex - sa * ey, sa * ex + ca * ey


# the ego-motion prior of generated clips: each coordinate a cubic in t; it holds the small city's real trajectories
# to 0.2-1 cm rms (voxels are 0.8 m). On the small preset's DiT (256 scenes per set against held-out clips) degree 3
# against 2: flicker 0.156 / 0.121 layout-conditioned and 0.181 / 0.143 unconditional (real 0.128), but 2D recall
# 0.83x / 0.76x and 0.76x / 0.72x real-vs-real and 3D FID 8.26 / 8.35 and 16.9 / 17.2; the generated ego's steps
# follow the real ones' spread at 3 (median 0.48 m, p90 0.77; real 0.43, 0.75) and are too short at 2 (0.39, 0.52)
TRAJECTORY_DEGREE = 3


def smooth_trajectory(traj_BT3: torch.Tensor, degree: int = TRAJECTORY_DEGREE) -> torch.Tensor:
    """The least-squares projection of each ``[T, 3]`` trajectory (poses in frame 0) onto polynomials in t of
    ``degree`` through frame 0's origin. A diffusion model generates the trajectory slot's cells independently, and
    its small errors there (tenths of a standardised unit) are metres of frame-to-frame ego jitter, which the
    decoder turns into a whole scene shaking: on the small preset, unconditional samples' ego positions jittered by
    2.4 m second differences against 0.005 m real, and flicker fell from 0.43 to 0.18 (real 0.13) under a cubic
    projection. Real trajectories are smooth, so it changes them by centimetres or less."""
    if degree < 1:
        raise ValueError(f"trajectory degree must be >= 1, got {degree}")
    num_frames = traj_BT3.shape[1]
    if num_frames < 2:
        return traj_BT3.clone()
    degree = min(degree, num_frames - 1)
    # Legendre polynomials in 2t - 1 less their value at frame 0 span what t, ..., t^d do, but stay well conditioned
    # at high degrees, where the monomials' pseudo-inverse depended on the CPU's LAPACK kernels; every basis function
    # is 0 at frame 0, so the fit is over frames 1.. and an orthonormal basis of them (QR) gives the projection
    x = torch.linspace(-1.0, 1.0, num_frames, dtype=torch.float64, device=traj_BT3.device)
    legendre = [torch.ones_like(x), x]
    for k in range(1, degree):
        legendre.append(((2 * k + 1) * x * legendre[k] - k * legendre[k - 1]) / (k + 1))
    basis_TD = torch.stack([p - p[0] for p in legendre[1:degree + 1]], dim=1)
    q_SD, _ = torch.linalg.qr(basis_TD[1:])
    hat_TT = torch.zeros(num_frames, num_frames, dtype=torch.float64, device=traj_BT3.device)
    hat_TT[1:, 1:] = q_SD @ q_SD.T
    return torch.einsum("st,btc->bsc", hat_TT, traj_BT3.double()).to(traj_BT3.dtype)


def _centres(n: int, v: float, device) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=torch.float64) + 0.5) * v - n * v / 2


def check_trajectory(traj_BT3, batch: int, num_frames: int, what: str = "trajectory") -> torch.Tensor:
    """A ``[B, T, 3]`` finite float tensor, or a clear error naming the shape expected."""
    if not isinstance(traj_BT3, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [B, T, 3] of (x, y, yaw), got {type(traj_BT3).__name__}")
    if tuple(traj_BT3.shape) != (batch, num_frames, 3):
        raise ValueError(f"{what} shape {tuple(traj_BT3.shape)}, expected ({batch}, {num_frames}, 3) = "
                         "(x, y, yaw) of every frame relative to frame 0")
    if not bool(torch.isfinite(traj_BT3).all()):
        raise ValueError(f"{what} holds non-finite values; expected metres and radians")
    return traj_BT3


def to_reference(occ_BTXYZ: torch.Tensor, traj_BT3: torch.Tensor, voxel_xy: tuple[float, float],
                 unseen: int) -> torch.Tensor:
    """The clip resampled into the reference frame (nearest voxel): ``[B, T, X, Y, Z]`` long, ``unseen`` where a
    reference voxel lies outside frame t's grid."""
    b, t, nx, ny, nz = occ_BTXYZ.shape
    dev = occ_BTXYZ.device
    cos, sin, dx, dy = (v[:, :, None, None] for v in _ref_to_frame(traj_BT3.to(dev)))
    qx = _centres(nx, voxel_xy[0], dev)[:, None]
    qy = _centres(ny, voxel_xy[1], dev)[None, :]
    ix = torch.floor((cos * qx - sin * qy + dx) / voxel_xy[0] + nx / 2).long()  # [B, T, X, Y]
    iy = torch.floor((sin * qx + cos * qy + dy) / voxel_xy[1] + ny / 2).long()
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    flat = (ix.clamp(0, nx - 1) * ny + iy.clamp(0, ny - 1)).view(b, t, nx * ny, 1).expand(b, t, nx * ny, nz)
    out = occ_BTXYZ.long().reshape(b, t, nx * ny, nz).gather(2, flat).view(b, t, nx, ny, nz)
    return out.masked_fill(~inside[..., None], unseen)


def from_reference(logits_BKTXYZ: torch.Tensor, traj_BT3: torch.Tensor, voxel_xy: tuple[float, float]) -> torch.Tensor:
    """Reference-frame logits resampled (bilinear) into every frame's ego coordinates: ``[B, K, T, X, Y, Z]``.
    A voxel outside the reference grid takes the logits of its nearest border voxel."""
    b, k, t, nx, ny, nz = logits_BKTXYZ.shape
    dev = logits_BKTXYZ.device
    cos, sin, dx, dy = (v[:, :, None, None] for v in _ref_to_frame(traj_BT3.to(dev)))
    px = _centres(nx, voxel_xy[0], dev)[:, None] - dx  # frame-t point minus the translation, rotated back below
    py = _centres(ny, voxel_xy[1], dev)[None, :] - dy
    qx, qy = cos * px + sin * py, -sin * px + cos * py  # [B, T, X, Y] in reference coordinates
    # grid_sample's (x, y) index (width, height) = (Y, X); align_corners=False puts voxel centres at ±(1 − 1/n)
    grid_NXY2 = torch.stack([2 * qy / (ny * voxel_xy[1]), 2 * qx / (nx * voxel_xy[0])], -1).flatten(0, 1)
    src_NCXY = logits_BKTXYZ.permute(0, 2, 1, 5, 3, 4).reshape(b * t, k * nz, nx, ny)
    out = F.grid_sample(src_NCXY, grid_NXY2.to(src_NCXY.dtype), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.view(b, t, k, nz, nx, ny).permute(0, 2, 1, 4, 5, 3)


class TrajectorySlot:
    """Where a reference-frame HexPlane keeps its clip's trajectory: the last ``channels`` channels of ``tz``,
    filled in (frame, x/y/yaw) order after ``TRAJECTORY_SCALE``, zeros after the ``3 T`` values."""

    def __init__(self, dims: LatentDims, num_frames: int):
        self.num_frames = num_frames
        self.cells = dims.t * dims.z
        self.channels = math.ceil(3 * num_frames / self.cells)
        if self.channels >= dims.channels:
            raise ValueError(f"a {num_frames}-frame trajectory needs {self.channels} of the tz plane's "
                             f"{dims.channels} channels; expected fewer (more latent channels or a longer T'·Z')")
        self.first = dims.channels - self.channels

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(TRAJECTORY_SCALE, dtype=like.dtype, device=like.device)

    def write(self, tz_BCTZ: torch.Tensor, traj_BT3: torch.Tensor) -> torch.Tensor:
        """``tz`` with the slot holding ``traj`` (a new tensor, at least float32: under bf16 autocast the trajectory
        would lose ~0.4 %, a decimetre at the grid's corners)."""
        b = tz_BCTZ.shape[0]
        tz_BCTZ = tz_BCTZ.to(torch.promote_types(tz_BCTZ.dtype, torch.float32))
        values = (traj_BT3.to(tz_BCTZ) / self._scale(tz_BCTZ)).reshape(b, -1)
        slot = torch.zeros(b, self.channels * self.cells, dtype=tz_BCTZ.dtype, device=tz_BCTZ.device)
        slot[:, :values.shape[1]] = values
        return torch.cat([tz_BCTZ[:, :self.first], slot.view(b, self.channels, *tz_BCTZ.shape[2:])], dim=1)

    def fill(self, tz_BCTZ: torch.Tensor, value: float) -> torch.Tensor:
        """``tz`` with the slot set to ``value`` (a new tensor)."""
        out = tz_BCTZ.clone()
        out[:, self.first:] = value
        return out

    def read(self, tz_BCTZ: torch.Tensor) -> torch.Tensor:
        """The trajectory ``[B, T, 3]`` (float32) a ``tz`` plane holds."""
        b = tz_BCTZ.shape[0]
        values = tz_BCTZ[:, self.first:].reshape(b, -1)[:, :3 * self.num_frames].float()
        return values.view(b, self.num_frames, 3) * self._scale(values)

    def clear(self, tz_BCTZ: torch.Tensor) -> torch.Tensor:
        return self.fill(tz_BCTZ, 0.0)

    def latent_mask(self, tz_BCTZ: torch.Tensor) -> torch.Tensor:
        """``[C]`` bool: True for the channels of the Gaussian posterior, False for the slot."""
        keep = torch.ones(tz_BCTZ.shape[1], dtype=torch.bool, device=tz_BCTZ.device)
        keep[self.first:] = False
        return keep
