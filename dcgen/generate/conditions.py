"""What one scene is conditioned on (SPEC §3), validated against a grid and a model's accepted conditions.

A ``SceneRequest`` is the one currency between the batch job, the Serve endpoint and the pipeline: numpy arrays at
voxel resolution, exactly as a scene store holds them, so conditions can be taken from a store's clips unchanged.
The pipeline turns them into DiT inputs (encoding ``prev_clip`` and inpainting sources with the VAE). A
``SceneJob`` is one request with its own seed in a batch queue (synth workers, Serve replicas); a ``SceneResult`` what
came back for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcgen.data.grid import Grid

# Names shared with dcgen.models.dit.CONDITIONS; "inpaint"/"outpaint" act at sampling time only.
MODEL_CONDITIONS = ("command", "trajectory", "layout", "bev", "prev_clip")
# Classifier-free guidance scale of a request that names none: per condition, the smallest over the request's
# conditions. SPEC §3's 4 (on ε) for all but the layout. A layout pins the scene's structure, and guidance over it
# over-saturates: on the debug quickstart's models (DPM++-10, 32 scenes against a held-out city whose real-vs-real
# is 3D FID 33.2, 2D FID 46.1, building share 0.45) layout-conditioned scenes scored 3D FID 86.7, 2D 125.7 and
# building share 0.57 at scale 4; 37.7, 59.2, 0.52 at 2; 36.0, 29.1, 0.43 at 1, which is also one DiT pass instead
# of two. Trajectory-conditioned scenes scored 23.4 / 69.2 at 4 and 67.1 / 53.3 at 1, so the trajectory keeps 4.
# BEV and previous clips were not measured and keep SPEC's 4. A request without a condition samples the
# unconditional model, where the scale does nothing (recorded as 1).
SPEC_GUIDANCE = 4.0
CONDITION_GUIDANCE = {"layout": 1.0}


def default_guidance(conditions) -> float:
    """The guidance scale of a request with ``conditions`` (model condition names) and no scale of its own: the
    smallest of their ``CONDITION_GUIDANCE`` scales (SPEC's 4 where none is listed); 1 without a condition."""
    scales = [CONDITION_GUIDANCE.get(c, SPEC_GUIDANCE) for c in conditions]
    return min(scales) if scales else 1.0
SAMPLING_CONDITIONS = ("inpaint", "outpaint")


@dataclass
class SceneRequest:
    command: int | None = None  # 0 static, 1 forward, 2 left, 3 right
    trajectory: np.ndarray | None = None  # [T, 3] float32 (x, y, yaw) relative to frame 0
    layout: np.ndarray | None = None  # [T, X/d, Y/d] uint8 in {0, 1}: vehicle layout
    bev: np.ndarray | None = None  # [X, Y] uint8 class ids: BEV semantic layout
    prev_clip: np.ndarray | None = None  # [T, X, Y, Z] uint8: the clip this one continues
    source: np.ndarray | None = None  # [T, X, Y, Z] uint8: the clip to inpaint / outpaint
    inpaint_mask: np.ndarray | None = None  # [X, Y] bool, True = regenerate (voxel resolution)
    outpaint_shift: int | None = None  # voxels along +X the scene moves forward; the new band is generated
    # classifier-free guidance scale on ε (1 = conditional model only); None: its conditions' ``default_guidance``
    guidance: float | None = None
    extra: dict = field(default_factory=dict)

    def used(self) -> tuple[str, ...]:
        """Model conditions this request sets (sampling-time edits are reported by ``edit``)."""
        return tuple(n for n in MODEL_CONDITIONS if getattr(self, n) is not None)

    def guidance_scale(self) -> float:
        """The scale this request samples with: its own, else its conditions' default (``default_guidance``)."""
        return default_guidance(self.used()) if self.guidance is None else float(self.guidance)

    @property
    def edit(self) -> str | None:
        if self.inpaint_mask is not None:
            return "inpaint"
        if self.outpaint_shift is not None:
            return "outpaint"
        return None

    def validate(self, grid: Grid, accepted: tuple[str, ...] | set[str], what: str = "request") -> "SceneRequest":
        """Check shapes, dtypes and ranges against ``grid``; a condition the model was not trained with is an error.

        Returns a copy with arrays in their canonical dtypes.
        """
        t, (x, y, z) = grid.num_frames, grid.size
        lx, ly = grid.layout_size
        for name in self.used():
            if name not in accepted:
                raise ValueError(f"{what}.{name}: condition {name!r} is not one the model was trained with "
                                 f"(it accepts {sorted(accepted) or 'none'})")
        out = SceneRequest(guidance=self.guidance_scale(), extra=dict(self.extra))
        if not np.isfinite(out.guidance) or out.guidance < 0:
            raise ValueError(f"{what}.guidance: {self.guidance} must be a finite number >= 0")
        if self.command is not None:
            c = int(self.command)
            if c != self.command or not 0 <= c <= 3:
                raise ValueError(f"{what}.command: {self.command!r} out of range; expected an integer 0..3 "
                                 "(0 static, 1 forward, 2 left, 3 right)")
            out.command = c
        if self.trajectory is not None:
            out.trajectory = _array(self.trajectory, (t, 3), np.float32, f"{what}.trajectory")
            if not np.isfinite(out.trajectory).all():
                raise ValueError(f"{what}.trajectory: holds NaN or inf")
        if self.layout is not None:
            out.layout = _classes(self.layout, (t, lx, ly), 2, f"{what}.layout")
        if self.bev is not None:
            out.bev = _classes(self.bev, (x, y), grid.num_classes, f"{what}.bev")
        if self.prev_clip is not None:
            out.prev_clip = _classes(self.prev_clip, (t, x, y, z), grid.num_classes, f"{what}.prev_clip")
        if self.inpaint_mask is not None and self.outpaint_shift is not None:
            raise ValueError(f"{what}: inpaint_mask and outpaint_shift are exclusive; give one")
        if (self.inpaint_mask is not None or self.outpaint_shift is not None) and self.source is None:
            raise ValueError(f"{what}.source: inpainting and outpainting need the source clip [T, X, Y, Z]")
        if self.source is not None:
            if "inpaint" not in accepted and "outpaint" not in accepted:
                raise ValueError(f"{what}.source: this pipeline does not support inpainting")
            out.source = _classes(self.source, (t, x, y, z), grid.num_classes, f"{what}.source")
        if self.inpaint_mask is not None:
            m = np.asarray(self.inpaint_mask)
            if m.shape != (x, y):
                raise ValueError(f"{what}.inpaint_mask: shape {list(m.shape)}, expected [{x}, {y}] (X, Y)")
            if m.dtype != bool and not np.isin(m, (0, 1)).all():
                raise ValueError(f"{what}.inpaint_mask: values must be 0/1 or booleans")
            m = m.astype(bool)
            if not m.any():
                raise ValueError(f"{what}.inpaint_mask: covers nothing; nothing would be generated")
            if m.all():
                raise ValueError(f"{what}.inpaint_mask: covers everything; sample without a mask instead")
            out.inpaint_mask = m
        if self.outpaint_shift is not None:
            s = int(self.outpaint_shift)
            if s != self.outpaint_shift or not 0 < s < x:
                raise ValueError(f"{what}.outpaint_shift: {self.outpaint_shift!r}; expected an integer 1..{x - 1} "
                                 "voxels")
            out.outpaint_shift = s
        return out


def _array(value, shape: tuple[int, ...], dtype, what: str) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"{what}: shape {list(a.shape)}, expected {list(shape)}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: dtype {a.dtype} is not numeric")
    return a.astype(dtype)


def _classes(value, shape: tuple[int, ...], num_classes: int, what: str) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"{what}: shape {list(a.shape)}, expected {list(shape)}")
    if a.dtype.kind not in "biu":
        raise ValueError(f"{what}: dtype {a.dtype}; expected integer class ids")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        bad = int(a.max()) if a.max() >= num_classes else int(a.min())
        raise ValueError(f"{what}: value {bad} out of range; expected 0..{num_classes - 1}")
    return a.astype(np.uint8)


def from_store_clip(clip: dict[str, np.ndarray], kind: str, guidance: float | None = None) -> SceneRequest:
    """The request that reproduces a store clip's ``kind`` of condition (``none`` gives an unconditional one)."""
    if kind == "none":
        return SceneRequest(guidance=guidance)
    if kind == "command":
        return SceneRequest(command=int(clip["command"]), guidance=guidance)
    if kind in ("trajectory", "layout", "bev"):
        return SceneRequest(**{kind: clip[kind]}, guidance=guidance)
    raise ValueError(f"condition kind {kind!r} does not come from a single clip; expected none, command, "
                     "trajectory, layout or bev")


# The samplers a scene can be drawn with (``GenerationPipeline.sample_latents``), and the one a request, a job or a
# command that names none gets; every default in sample, synth and Serve is this. DPM-Solver++(2M) with its 10
# network evaluations: on the debug quickstart's models (`dcgen bench dit`'s quality mode, 64 held-out conditions)
# 0.82x DDPM-1000's 3D FID and 1.06x its 2D FID against DDIM-50's 0.90x and 1.14x, at a fifth of DDIM-50's time.
SAMPLERS = ("ddim", "ddpm", "dpm++")
DEFAULT_SAMPLER = "dpm++"


@dataclass(frozen=True)
class SceneJob:
    """One scene in the batch queue: validated conditions and the scene's own generator seed."""

    request: SceneRequest
    seed: int
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    trajectory_degree: int | None = None  # the ego-motion prior; None: the pipeline's SamplerDefaults


@dataclass(frozen=True)
class SceneResult:
    occupancy_TXYZ: np.ndarray | None
    batch_size: int  # scenes in the replica's batch this scene was part of
    checkpoints: dict  # ids of the VAE and DiT checkpoints of the replica that answered
    error: str | None = None
    invalid: bool = False  # the pipeline rejected the scene's conditions (a client error, not a server fault)
    trajectory_degree: int | None = None  # the ego-motion prior it was decoded with; None: no trajectory slot
