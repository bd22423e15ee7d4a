"""Checkpoints + conditions + seeds -> scenes (SPEC §3): the in-process generator behind ``dcgen sample``, the batch
job and the server.

``GenerationPipeline`` holds the VAE and the DiT (EMA weights) of one training run. ``generate`` validates each
``SceneRequest`` against the grid and the model's conditions, turns it into DiT inputs (voxel conditions as they
are; ``prev_clip`` and inpainting sources encoded to the VAE μ rollout; an inpainting mask reduced to latent XY;
outpainting = the source latent shifted along X with the new band masked), samples with one generator per scene
seeded from its seed and a per-scene guidance scale, and decodes with the VAE (argmax). Diffusion runs on the
standardised latents of the DiT's latent normalisation (``encode`` returns them, ``decode`` takes them), with every
denoised estimate clamped to the training latents' range.

A scene's bytes never depend on what else is in the call: the networks always run on micro-batches of exactly
``micro_batch`` scenes (padded with dummy rows), so every kernel sees the same shapes; every configured condition
is always passed (absent ones as zeros with their drop flag set), so the conditioning has the same shape whatever
the request; and scenes that edit a source (whose sampler draws extra noise each step) are batched apart from
plain ones. ``chain`` continues clips through the ``prev_clip`` condition into sequences of k·T frames.

With ``buckets=True`` (the server, where one scene often comes alone) a call of n < ``micro_batch`` scenes is padded
only to the next power of two (1, 2, 4, … capped at ``micro_batch``), so a lone scene costs one row, not a whole
micro-batch. A scene's row is still the same computation, but CPU kernels (oneDNN convolutions, BLAS GEMMs) may
block their sums differently at another batch size, so its latents can differ from the ``micro_batch``-shape ones
by float rounding (up to 7e-6 after 4 DDIM steps on the AMX CPU this was measured on), which can flip only voxels
whose top two class logits are that close: there, decoded bytes were equal at every bucket
(``tests/generate/test_buckets.py``). Plain runs (``dcgen synth``, ``dcgen sample``) keep the fixed shape, so their
bytes never depend on batch size, worker count or order.

Legend: N scenes, M network batch (``micro_batch`` or its bucket), C latent channels, S rollout side, T/X/Y/Z clip
axes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from dcgen.data.classes import CLASSES
from dcgen.data.grid import Grid
from dcgen.diffusion.guidance import guide
from dcgen.diffusion.inpaint import Inpainting, shift_x
from dcgen.diffusion.latent_norm import norm_from_dict
from dcgen.diffusion.objective import EpsModel
from dcgen.diffusion.samplers import DDIM_STEPS, DPMPP_STEPS, ddim_sample, ddpm_sample, dpmpp_sample
from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
from dcgen.generate.conditions import (CONDITION_GUIDANCE, DEFAULT_SAMPLER, SAMPLERS, SAMPLING_CONDITIONS,
                                       SPEC_GUIDANCE, SceneRequest)
from dcgen.models.dit import DiT
from dcgen.models.motion_frame import TRAJECTORY_DEGREE, smooth_trajectory
from dcgen.models.rollout import RolloutLayout
from dcgen.models.vae import HexPlaneVAE
from dcgen.runtime import scene_seed


@dataclass(frozen=True)
class SamplerDefaults:
    sampler: str = DEFAULT_SAMPLER
    steps: int = DDIM_STEPS  # DDIM's steps (the name is older than the other samplers' fields)
    ddpm_steps: int = 1000
    dpmpp_steps: int = DPMPP_STEPS
    eta: float = 0.0
    guidance: float = SPEC_GUIDANCE  # a request with no scale of its own: per condition (conditions.py)
    # a reference-frame VAE's generated ego trajectory is projected onto polynomials of this degree in t
    # (motion_frame.smooth_trajectory); 0 keeps the DiT's cells as sampled
    trajectory_degree: int = TRAJECTORY_DEGREE
    guidance_per_condition: dict = field(default_factory=lambda: dict(CONDITION_GUIDANCE))


class GenerationPipeline:
    """A trained VAE + DiT pair; ``generate(requests, seeds)`` -> ``occ [N, T, X, Y, Z] uint8``."""

    def __init__(self, vae: HexPlaneVAE, dit: DiT, grid: Grid, schedule: NoiseSchedule, *,
                 device: torch.device | str = "cpu", micro_batch: int = 8, buckets: bool = False,
                 checkpoint_ids: dict | None = None):
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        if vae.dims != dit.config.latent:
            raise ValueError(f"the DiT works on latents {dit.config.latent} but the VAE makes {vae.dims}")
        if tuple(vae.config.shape) != tuple(grid.shape) or vae.config.num_classes < grid.num_classes:
            raise ValueError(f"grid {grid.shape} with {grid.num_classes} classes does not match the VAE "
                             f"({vae.config.shape}, {vae.config.num_classes} classes)")
        EpsModel(dit).check_schedule(schedule)
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.dit = dit.to(self.device).eval().requires_grad_(False)
        self.eps = EpsModel(self.dit)  # ε whatever the network predicts
        self.grid = grid
        self.schedule = schedule
        self.micro_batch = int(micro_batch)
        self.buckets = bool(buckets)
        self.rollout: RolloutLayout = dit.rollout
        self.valid_SS = self.rollout.valid_mask(self.device)
        self.norm = norm_from_dict(dit.config.latent_norm)  # None: the DiT works on raw μ, unbounded
        self.x0_range = self.norm.x0_range(self.device) if self.norm is not None else None
        self.conditions: tuple[str, ...] = tuple(dit.config.conditions)
        self.accepted: tuple[str, ...] = self.conditions + SAMPLING_CONDITIONS
        self.checkpoint_ids = dict(checkpoint_ids or {})
        self.defaults = SamplerDefaults()
        self._down = grid.size[0] // vae.dims.x
        # added to the logits of the scenes of a decode group (``decode_groups``): the DiT's sample calibration's
        # offsets for that group less the VAE's own (sample_calibration.py); a scene of no group here decodes with
        # the VAE's
        self.decode_shifts: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoints(cls, vae: str, dit: str, device: str = "auto", use_ema: bool = True,
                         micro_batch: int = 8, buckets: bool = False,
                         sample_calibrated: bool = True) -> "GenerationPipeline":
        """Load a VAE and a DiT checkpoint; the DiT must have been trained on latents of this VAE's latent space
        (this very VAE, or the one whose encoder its fine-tuned decoder kept). Unconditional and layout-conditioned
        scenes decode with the DiT's sample calibration when it was fitted through this VAE
        (``sample_calibration.py``; ``sample_calibrated=False`` keeps the VAE's own offsets); then
        ``checkpoint_ids["decode_offsets"]`` names them."""
        from dcgen.generate.sample_calibration import decode_offsets_id, sample_biases
        from dcgen.models.loading import load_dit, load_vae
        from dcgen.runtime import pick_device

        dev = pick_device(device)
        v = load_vae(vae, dev)
        d = load_dit(dit, dev, use_ema=use_ema)
        want = d.meta.get("vae_checkpoint_id")
        if want != v.latent_space:
            from dcgen.models.loading import latent_space_note

            raise ValueError(f"DiT checkpoint {dit} was trained on latents of VAE {want!r}, but {vae} is "
                             f"{v.checkpoint_id!r}{latent_space_note(v.checkpoint_id, v.latent_space)}; pass the "
                             "VAE checkpoint the DiT was trained with (or a decoder fine-tuned from it)")
        grid = Grid.from_dict(d.meta["grid"])
        schedule = NoiseSchedule.linear(ScheduleConfig.from_dict(d.meta["schedule"]))
        ids = {"vae": v.checkpoint_id, "dit": d.checkpoint_id}
        biases = sample_biases(d.meta, v.checkpoint_id) if sample_calibrated else {}
        if biases:
            ids["decode_offsets"] = decode_offsets_id(d.meta, v.checkpoint_id)
        pipe = cls(v.model, d.model, grid, schedule, device=dev, micro_batch=micro_batch, buckets=buckets,
                   checkpoint_ids=ids)
        # in place of the VAE's own offsets (its class_bias), for the scenes of each group
        pipe.decode_shifts = {group: torch.from_numpy(bias).to(dev) - pipe.vae.class_bias
                              for group, bias in biases.items()}
        return pipe

    @property
    def trajectory_degree(self) -> int | None:
        """The ego-motion prior's degree this pipeline decodes with; None for an ego-frame VAE, whose latents carry
        no trajectory for it to shape."""
        return self.defaults.trajectory_degree if self.vae.needs_trajectory else None

    def with_trajectory_degree(self, degree: int | None) -> "GenerationPipeline":
        """This pipeline decoding with the ego-motion prior ``degree`` (checked by the caller: ``job.
        check_trajectory_degree``). Itself when ``degree`` is None or already its own, or for an ego-frame VAE (the
        degree shapes nothing); otherwise a shallow copy with its own defaults, sharing the networks, so this
        pipeline's defaults (what ``info()`` reports, read while other batches run) never change."""
        if degree is None or self.trajectory_degree in (None, int(degree)):
            return self
        pipeline = copy.copy(self)
        pipeline.defaults = replace(self.defaults, trajectory_degree=int(degree))
        return pipeline

    def info(self) -> dict:
        return {
            "grid": self.grid.to_dict(),
            "frames": self.grid.num_frames,
            "classes": [{"id": c.id, "name": c.name, "rgb": list(c.rgb)} for c in CLASSES[:self.grid.num_classes]],
            "accepted": list(self.accepted),
            "checkpoints": dict(self.checkpoint_ids),
            "sampler_defaults": {**asdict(self.defaults), "trajectory_degree": self.trajectory_degree,
                                 "samplers": list(SAMPLERS)},
            "micro_batch": self.micro_batch,
            "batch_shapes": list(self.batch_shapes()),
            "device": str(self.device),
        }

    # ---- networks on fixed-shape micro-batches --------------------------------------------------------------

    def batch_shapes(self) -> tuple[int, ...]:
        """Every batch size the networks run at: ``micro_batch`` alone, or with buckets the powers of two below it
        and ``micro_batch``."""
        if not self.buckets:
            return (self.micro_batch,)
        return tuple(1 << k for k in range((self.micro_batch - 1).bit_length()) if 1 << k < self.micro_batch) + (
            self.micro_batch,)

    def rows_for(self, n: int) -> int:
        """The network batch a micro-batch of ``n`` (1..micro_batch) scenes is padded to."""
        assert 1 <= n <= self.micro_batch, n
        return min(self.micro_batch, 1 << (n - 1).bit_length()) if self.buckets else self.micro_batch

    @staticmethod
    def _pad(rows: list, fill, m: int) -> list:
        return rows + [fill] * (m - len(rows))

    @torch.no_grad()
    def encode(self, occ_NTXYZ: np.ndarray) -> torch.Tensor:
        """VAE μ rollouts ``[N, C, S, S]`` (on the pipeline's device) of voxel clips, in the DiT's space. Clips come
        without their ego motion (a previous clip, an edit's source), so a reference-frame VAE encodes them as if
        the ego stood still: its decode gives the clip back, expressed around the middle frame's ego."""
        occ_NTXYZ = np.asarray(occ_NTXYZ)
        out = []
        for a in range(0, len(occ_NTXYZ), self.micro_batch):
            part = list(occ_NTXYZ[a:a + self.micro_batch])
            n, m = len(part), self.rows_for(len(part))
            occ_MTXYZ = torch.from_numpy(np.stack(self._pad(part, np.zeros_like(part[0]), m)).astype(np.int64))
            still_MT3 = (torch.zeros(m, self.grid.num_frames, 3, device=self.device)
                         if self.vae.needs_trajectory else None)
            mu, _ = self.vae.encode(occ_MTXYZ.to(self.device), still_MT3)
            rollout_MCSS = self.rollout.pack({k: v.float() for k, v in mu.items()})
            if self.norm is not None:
                rollout_MCSS = self.norm.normalize(rollout_MCSS, self.valid_SS)
            out.append(rollout_MCSS[:n])
        return torch.cat(out) if out else torch.zeros(0, *self._latent_shape(), device=self.device)

    @torch.no_grad()
    def decode(self, rollout_NCSS: torch.Tensor, trajectories: Sequence | None = None,
               groups: Sequence[str | None] | None = None) -> np.ndarray:
        """Class ids ``[N, T, X, Y, Z] uint8`` of DiT-space rollouts (argmax of the VAE decoder). A reference-frame
        VAE renders scene i along ``trajectories[i]`` (``[T, 3]``) where one is given, else along the trajectory
        its latent carries (the DiT generates the ego motion with the scene). ``groups[i]``: scene i's decode group
        (``decode_groups``: its offsets, where the DiT's sample calibration has them)."""
        out = [logits_MKTXYZ.argmax(1).to(torch.uint8).cpu().numpy()
               for logits_MKTXYZ in self._decoded(rollout_NCSS, trajectories, groups)]
        return np.concatenate(out) if out else np.zeros((0, *self.grid.shape), np.uint8)

    @torch.no_grad()
    def logits(self, rollout_NCSS: torch.Tensor, trajectories: Sequence | None = None,
               groups: Sequence[str | None] | None = None) -> torch.Tensor:
        """The VAE decoder's class logits ``[N, K, T, X, Y, Z]`` (on CPU) that ``decode`` takes the argmax of: how
        clear each voxel's class is (K·4 bytes per voxel; for a few scenes at a time)."""
        out = [logits_MKTXYZ.float().cpu()
               for logits_MKTXYZ in self._decoded(rollout_NCSS, trajectories, groups)]
        return torch.cat(out) if out else torch.zeros(0, self.vae.config.num_classes, *self.grid.shape)

    @staticmethod
    def decode_groups(requests: Sequence[SceneRequest]) -> list[str | None]:
        """Each request's decode group (``decode``'s ``groups``): "layout" with a layout, "unconditional" with no
        model condition, None otherwise and for edits (inpainting and outpainting keep much of an encoded clip,
        which the VAE's own offsets are fitted to)."""
        return [None if r.edit is not None else "layout" if r.layout is not None else None if r.used()
                else "unconditional" for r in requests]

    def _decoded(self, rollout_NCSS: torch.Tensor, trajectories: Sequence | None,
                 groups: Sequence[str | None] | None = None):
        """Logits of each micro-batch of ``rollout_NCSS`` in turn, padding rows dropped."""
        for a in range(0, rollout_NCSS.shape[0], self.micro_batch):
            part = rollout_NCSS[a:a + self.micro_batch].to(self.device, torch.float32)
            n = part.shape[0]
            full = torch.zeros(self.rows_for(n), *part.shape[1:], device=self.device)
            full[:n] = part
            if self.norm is not None:
                full = self.norm.denormalize(full, self.valid_SS)
            planes = self.rollout.unpack(full)
            given = [] if trajectories is None else list(trajectories[a:a + n])
            if self.vae.needs_trajectory and any(t is not None for t in given):
                carried_MT3 = self.vae.trajectory(planes)
                for k, t in enumerate(given):
                    if t is not None:
                        carried_MT3[k] = torch.as_tensor(np.asarray(t, np.float32), device=self.device)
                planes = self.vae.with_trajectory(planes, carried_MT3)
            logits = self.vae.decode(planes)[:n]
            for group, shift_K in self.decode_shifts.items() if groups is not None else ():
                rows = torch.as_tensor([g == group for g in groups[a:a + n]], device=logits.device)
                shift = shift_K.to(logits.dtype).view(1, -1, *([1] * (logits.dim() - 2)))
                logits = logits + rows.view(-1, *([1] * (logits.dim() - 1))) * shift
            yield logits

    def _latent_shape(self) -> tuple[int, int, int]:
        return (self.dit.config.latent.channels, self.rollout.size, self.rollout.size)

    # ---- requests -> DiT inputs ------------------------------------------------------------------------------

    def _conditions(self, reqs: list[SceneRequest | None], m: int) -> tuple[dict, dict, torch.Tensor]:
        """Condition tensors of ``m`` rows for every configured condition (zeros where absent), the conditional
        pass's drop flags (True where absent), and for each row whether it sets any condition."""
        cfg, dev = self.dit.config, self.device
        blank = {
            "command": lambda: np.zeros((), np.int64),
            "trajectory": lambda: np.zeros((cfg.num_frames, 3), np.float32),
            "layout": lambda: np.zeros((cfg.num_frames, *cfg.layout_size), np.float32),
            "bev": lambda: np.zeros(cfg.bev_size, np.int64),
        }
        dtype = {"command": torch.long, "trajectory": torch.float32, "layout": torch.float32, "bev": torch.long}
        reqs = self._pad(reqs, None, m)
        cond, drop = {}, {}
        for name in self.conditions:
            present = [r is not None and getattr(r, name) is not None for r in reqs]
            drop[name] = torch.tensor([not p for p in present], device=dev)
            if name == "prev_clip":
                if any(present):
                    clips = [r.prev_clip if p else np.zeros(self.grid.shape, np.uint8) for r, p in zip(reqs, present)]
                    cond[name] = self.encode(np.stack(clips))
                else:
                    cond[name] = torch.zeros(m, *self._latent_shape(), device=dev)
                continue
            values = [np.asarray(getattr(r, name)) if p else blank[name]() for r, p in zip(reqs, present)]
            cond[name] = torch.from_numpy(np.stack(values).astype(np.float32 if dtype[name] == torch.float32
                                                                  else np.int64)).to(dev, dtype[name])
        any_B = ~torch.stack(list(drop.values())).all(0) if drop else torch.zeros(m, dtype=torch.bool, device=dev)
        return cond, drop, any_B

    def _edit(self, reqs: list[SceneRequest | None], m: int) -> Inpainting:
        """The inpainting constraint of ``m`` rows for a micro-batch of edit requests (dummy rows regenerate
        everything)."""
        d = self.rollout.dims
        reqs = self._pad(reqs, None, m)
        sources = [r.source if r is not None else np.zeros(self.grid.shape, np.uint8) for r in reqs]
        src_MCSS = self.encode(np.stack(sources))
        mask_MXY = torch.ones(m, d.x, d.y, device=self.device)
        rows = []
        for k, r in enumerate(reqs):
            row = src_MCSS[k:k + 1]
            if r is not None and r.inpaint_mask is not None:
                mask_MXY[k] = torch.from_numpy(self._latent_mask(r.inpaint_mask)).to(self.device)
            elif r is not None:
                cells = r.outpaint_shift // self._down
                row = shift_x(self.rollout, row, cells)
                mask_MXY[k] = 0
                mask_MXY[k, d.x - cells:] = 1
            rows.append(row)
        return Inpainting(torch.cat(rows), self.rollout.xy_to_rollout(mask_MXY))

    def _latent_mask(self, mask_XY: np.ndarray) -> np.ndarray:
        """A voxel XY mask (True = regenerate) at latent resolution: a latent cell is regenerated if any voxel it
        covers is."""
        d, k = self.rollout.dims, self._down
        return mask_XY.reshape(d.x, k, d.y, k).any(axis=(1, 3)).astype(np.float32)

    def _validate(self, requests: Sequence[SceneRequest], seeds: Sequence[int]) -> list[SceneRequest]:
        if len(requests) != len(seeds):
            raise ValueError(f"{len(requests)} requests but {len(seeds)} seeds; give one seed per scene")
        out = []
        for i, r in enumerate(requests):
            if not isinstance(r, SceneRequest):
                raise ValueError(f"requests[{i}] is a {type(r).__name__}, expected a SceneRequest")
            v = r.validate(self.grid, self.accepted, what=f"requests[{i}]")
            if v.outpaint_shift is not None and v.outpaint_shift % self._down:
                raise ValueError(f"requests[{i}].outpaint_shift: {v.outpaint_shift} voxels is not a whole number of "
                                 f"latent cells; expected a multiple of {self._down}")
            out.append(v)
        for i, s in enumerate(seeds):
            if int(s) != s or s < 0:
                raise ValueError(f"seeds[{i}]: {s!r}; expected a non-negative integer")
        return out

    # ---- sampling ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latents(self, requests: Sequence[SceneRequest], seeds: Sequence[int], sampler: str = DEFAULT_SAMPLER,
                       steps: int | None = None, eta: float = 0.0) -> torch.Tensor:
        """Sampled rollouts ``[N, C, S, S]`` (on CPU) of the requests, scene i from ``seeds[i]``."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if steps is None:
            d = self.defaults
            steps = {"ddim": d.steps, "ddpm": d.ddpm_steps, "dpm++": d.dpmpp_steps}[sampler]
        # DPM-Solver++ is multistep (>= 2) and needs one grid point past its last step
        lo, hi = (2, self.schedule.num_steps - 1) if sampler == "dpm++" else (1, self.schedule.num_steps)
        if not lo <= int(steps) <= hi:
            raise ValueError(f"{sampler} sampling steps must be in [{lo}, {hi}], got {steps}")
        reqs = self._validate(requests, seeds)
        out = torch.zeros(len(reqs), *self._latent_shape())
        plain = [i for i, r in enumerate(reqs) if r.edit is None]
        edits = [i for i, r in enumerate(reqs) if r.edit is not None]
        for group, edit in ((plain, False), (edits, True)):
            for a in range(0, len(group), self.micro_batch):
                idx = group[a:a + self.micro_batch]
                rows = self._sample_micro([reqs[i] for i in idx], [int(seeds[i]) for i in idx], sampler,
                                          int(steps), eta, edit)
                out[idx] = self._smooth_ego_motion(rows)[:len(idx)].cpu()
        return out

    def _smooth_ego_motion(self, rollout_MCSS: torch.Tensor) -> torch.Tensor:
        """Sampled rollouts with the ego trajectory a reference-frame VAE reads from them projected onto smooth
        motion (``SamplerDefaults.trajectory_degree``); only the trajectory slot's cells change. Rows whose
        trajectory was requested are decoded along the request anyway."""
        degree = self.defaults.trajectory_degree
        if not degree or not self.vae.needs_trajectory:
            return rollout_MCSS
        full = self.norm.denormalize(rollout_MCSS, self.valid_SS) if self.norm is not None else rollout_MCSS
        planes = self.rollout.unpack(full)
        planes = self.vae.with_trajectory(planes, smooth_trajectory(self.vae.trajectory(planes), degree))
        packed = self.rollout.pack(planes)
        smoothed = self.norm.normalize(packed, self.valid_SS) if self.norm is not None else packed
        return torch.where(self._slot_cells(), smoothed, rollout_MCSS)

    def _slot_cells(self) -> torch.Tensor:
        """``[1, C, S, S]`` bool: the rollout cells of the trajectory slot."""
        slot = self.vae.slot
        planes = {n: torch.zeros(1, *shape, device=self.device) for n, shape in self.vae.plane_shapes.items()}
        planes["tz"][:, slot.first:] = 1.0
        return self.rollout.pack(planes) > 0

    def _sample_micro(self, reqs: list[SceneRequest], seeds: list[int], sampler: str, steps: int, eta: float,
                      edit: bool) -> torch.Tensor:
        m, c = self.rows_for(len(reqs)), self.dit.config.latent.channels
        cond, drop_cond, any_B = self._conditions(list(reqs), m)
        drop_all = {k: torch.ones_like(v) for k, v in drop_cond.items()}
        scale_M1 = torch.tensor(self._pad([r.guidance for r in reqs], 1.0, m), device=self.device).view(m, 1, 1, 1)
        guided_B = any_B & (scale_M1.view(m) != 1.0)

        def model_fn(x_MCSS: torch.Tensor, t_M: torch.Tensor) -> torch.Tensor:
            out_c = self.eps(x_MCSS, t_M, cond, drop_cond)
            if not bool(guided_B.any()):
                return out_c
            out_u = self.eps(x_MCSS, t_M, cond, drop_all)
            # rows at scale 1 (or without conditions) keep the conditional output exactly
            return torch.where(guided_B.view(m, 1, 1, 1), guide(out_c, out_u, scale_M1, c), out_c)

        gens = [torch.Generator().manual_seed(s) for s in self._pad(list(seeds), 0, m)]
        inpaint = self._edit(list(reqs), m) if edit else None
        shape = (m, *self._latent_shape())
        if sampler == "dpm++":
            return dpmpp_sample(model_fn, self.schedule, shape, gens, num_steps=steps, valid_SS=self.valid_SS,
                                inpaint=inpaint, device=self.device, x0_range=self.x0_range)
        if sampler == "ddim":
            return ddim_sample(model_fn, self.schedule, shape, gens, num_steps=steps, eta=eta,
                               valid_SS=self.valid_SS, inpaint=inpaint, device=self.device, x0_range=self.x0_range)
        return ddpm_sample(model_fn, self.schedule, shape, gens, num_steps=steps, valid_SS=self.valid_SS,
                           inpaint=inpaint, device=self.device, x0_range=self.x0_range)

    def generate(self, requests: Sequence[SceneRequest], seeds: Sequence[int], sampler: str = DEFAULT_SAMPLER,
                 steps: int | None = None, eta: float = 0.0) -> np.ndarray:
        """Scenes ``[N, T, X, Y, Z] uint8``; scene i depends only on ``requests[i]`` and ``seeds[i]``."""
        return self.decode(self.sample_latents(requests, seeds, sampler, steps, eta),
                           [r.trajectory for r in requests], self.decode_groups(requests))

    def chain(self, requests: Sequence[SceneRequest], seeds: Sequence[int], k: int, sampler: str = DEFAULT_SAMPLER,
              steps: int | None = None, eta: float = 0.0) -> np.ndarray:
        """``[N, k·T, X, Y, Z]``: k clips per scene, clip j > 0 conditioned on clip j − 1 (``prev_clip``) and the
        first request's command and guidance (trajectory, layouts and edits describe one clip and are not carried
        over). Clip 0 uses ``seeds[i]``, clip j the seed ``scene_seed(seeds[i], j)``."""
        if "prev_clip" not in self.conditions:
            raise ValueError(f"chaining needs a DiT trained with the 'prev_clip' condition; this one has "
                             f"{list(self.conditions)}")
        if int(k) != k or k < 1:
            raise ValueError(f"chain length k must be an integer >= 1, got {k!r}")
        self._validate(requests, seeds)
        clips = [self.generate(requests, seeds, sampler, steps, eta)]
        for j in range(1, int(k)):
            nxt = [SceneRequest(command=r.command, prev_clip=prev, guidance=r.guidance)
                   for r, prev in zip(requests, clips[-1])]
            clips.append(self.generate(nxt, [scene_seed(int(s), j) for s in seeds], sampler, steps, eta))
        return np.concatenate(clips, axis=1)

