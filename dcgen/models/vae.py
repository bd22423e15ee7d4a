"""The HexPlane VAE (SPEC §2): a 4D semantic clip ↔ six latent planes, with its config.

``HexPlaneVAE`` composes the encoder (embedding, two per-frame CNNs, projection modules), a per-plane
``Linear(C → 2C)`` per pixel giving μ and log σ² (encoder step 4) and a decoder (ESS, or the per-point Query
baseline). Latent planes are dicts keyed by ``PLANE_NAMES`` with shapes from ``LatentDims``; training samples them
with the reparameterisation, diffusion encodes with μ. ``VAEConfig`` is everything needed to rebuild the network
from a checkpoint; ``dcgen.presets`` holds one per preset name (``debug`` trains in seconds on a CPU).

Legend: B batch, T time, X/Y/Z space, K classes, C channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from dcgen.data.grid import PLANE_NAMES, LatentDims
from dcgen.models.column_encoder import ColumnEncoder
from dcgen.models.ess_decoder import ESSDecoder
from dcgen.models.layers import check_planes
from dcgen.models.motion_frame import (FRAMES, TRAJECTORY_SCALE, TrajectorySlot, check_trajectory, from_reference,
                                       reference_index, to_reference)
from dcgen.models.projection import POOLINGS
from dcgen.models.query_decoder import QueryDecoder
from dcgen.models.vae_encoder import HexPlaneEncoder

DECODERS = ("ess", "query")
# how the encoder turns voxels into planes: the SPEC CNN + attention pooling or + mean, or the column encoder
ENCODERS = (*POOLINGS, "column")
# log σ² is clamped so exp() stays finite early in training (and in float16).
LOGVAR_RANGE = (-30.0, 20.0)
# The posterior starts narrow (σ ≈ 0.14): the decoder multiplies six planes, so with σ ≈ 1 the product of six
# noisy factors carries almost no signal and training stalls with the decoder ignoring the latent.
INIT_LOGVAR = -4.0


@dataclass(frozen=True)
class VAEConfig:
    """The HexPlane VAE's grid, latent and widths; defaults are the SPEC §2 (carlasc) numbers."""

    num_classes: int
    num_frames: int
    size: tuple[int, int, int]  # X, Y, Z voxels
    latent_channels: int = 16  # C of every latent plane
    embed_dim: int = 16  # class embedding width
    encoder_width: int = 16  # per-frame CNN and projection-transformer width
    projection: str = "projection"  # "projection" (CNN + attention pooling) | "avgpool" (ablation) | "column"
    column_width: int = 64  # column encoder features per plane pixel (projection="column")
    projection_heads: int = 2
    projection_depth: int = 2
    projection_mlp_ratio: int = 2
    decoder: str = "ess"  # "ess" | "query" (ablation)
    decoder_width: int = 64  # plane conv block output, channels of the product volume
    decoder_hidden: int = 128  # per-frame 3D CNN width (ESS)
    decoder_out: int = 32  # channels at full resolution before the head (ESS)
    lift_norm: bool = False  # InstanceNorm after the ESS decoder's 1×1 lift (not in SPEC; see ESSDecoder)
    num_freqs: int = 3  # Fourier frequencies per coordinate: 2 · 3 · 4 = 24 channels
    query_hidden: int = 256  # Query decoder MLP width
    query_layers: int = 4
    query_chunk: int = 1 << 16  # voxels per Query-decoder chunk
    frame: str = "ego"  # "ego" (SPEC: each frame's own coordinates) | "reference" (motion_frame.py, not in SPEC)
    voxel_xy: tuple[float, float] = (0.4, 0.4)  # metres per voxel along X and Y: turns the trajectory into voxels

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.size) != 3:
            raise ValueError(f"VAEConfig.size={self.size}, expected three sizes (X, Y, Z)")
        object.__setattr__(self, "voxel_xy", tuple(float(v) for v in self.voxel_xy))
        if len(self.voxel_xy) != 2 or min(self.voxel_xy) <= 0:
            raise ValueError(f"VAEConfig.voxel_xy={self.voxel_xy}, expected two positive voxel sizes in metres")
        if self.frame not in FRAMES:
            raise ValueError(f"VAEConfig.frame={self.frame!r}, expected one of {', '.join(FRAMES)}")
        if self.projection not in ENCODERS:
            raise ValueError(f"VAEConfig.projection={self.projection!r}, expected one of {', '.join(ENCODERS)}")
        if self.decoder not in DECODERS:
            raise ValueError(f"VAEConfig.decoder={self.decoder!r}, expected one of {', '.join(DECODERS)}")
        if not isinstance(self.lift_norm, bool):
            raise ValueError(f"VAEConfig.lift_norm={self.lift_norm!r}, expected true or false")
        if self.num_classes < 2:
            raise ValueError(f"VAEConfig.num_classes={self.num_classes}, expected >= 2 (free + one class)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"VAEConfig.{f.name}={value}, expected a positive integer")
        if self.encoder_width % self.projection_heads:
            raise ValueError(f"VAEConfig.encoder_width={self.encoder_width} is not divisible by "
                             f"projection_heads={self.projection_heads}")
        if min(self.num_frames, *self.size) < 1:
            raise ValueError(f"VAEConfig grid (T, X, Y, Z)={self.shape}, expected positive sizes")
        LatentDims.from_grid(self.num_frames, self.size, self.latent_channels)  # raises unless every axis halves

    @property
    def dims(self) -> LatentDims:
        return LatentDims.from_grid(self.num_frames, self.size, self.latent_channels)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, X, Y, Z)`` of the clips this VAE reads."""
        return (self.num_frames, *self.size)

    def replace(self, **changes) -> "VAEConfig":
        return VAEConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["voxel_xy"] = list(self.voxel_xy)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        from dcgen import config

        return config.from_dict(cls, d)


class HexPlaneVAE(nn.Module):
    """``occ [B, T, X, Y, Z]`` → HexPlane posterior (μ, log σ²) → ``logits [B, K, T, X, Y, Z]``."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.dims = config.dims
        c = config
        self.slot = TrajectorySlot(self.dims, c.num_frames) if c.frame == "reference" else None
        if c.projection == "column":
            # reference-frame clips mark the voxels no frame saw with the id num_classes (motion_frame.to_reference)
            self.encoder = ColumnEncoder(c.num_classes, self.dims, c.num_frames, c.column_width,
                                         unseen=self.slot is not None)
            feature_width = c.column_width
        else:
            self.encoder = HexPlaneEncoder(c.num_classes, self.dims, c.num_frames, c.embed_dim, c.encoder_width,
                                           c.projection, c.projection_heads, c.projection_depth,
                                           c.projection_mlp_ratio)
            feature_width = c.encoder_width
        self.to_posterior = nn.ModuleDict({n: nn.Conv2d(feature_width, 2 * c.latent_channels, 1)
                                           for n in PLANE_NAMES})
        for head in self.to_posterior.values():
            nn.init.constant_(head.bias[c.latent_channels:], INIT_LOGVAR)
        # per-class offsets added to the decoder's logits outside training (``dcgen.train.calibrate``): zero until
        # a trained VAE is calibrated; part of the weights, so a calibrated checkpoint has its own id
        self.register_buffer("class_bias", torch.zeros(c.num_classes))
        if c.decoder == "ess":
            self.decoder = ESSDecoder(c.num_classes, self.dims, c.num_frames, c.decoder_width, c.decoder_hidden,
                                      c.decoder_out, c.num_freqs, c.lift_norm)
        else:
            self.decoder = QueryDecoder(c.num_classes, self.dims, c.num_frames, c.decoder_width, c.query_hidden,
                                        c.query_layers, c.num_freqs, c.query_chunk)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # weights saved before decode calibration carry no class_bias: they decode uncalibrated (zero offsets)
        state_dict.setdefault(prefix + "class_bias", torch.zeros_like(self.class_bias))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def plane_shapes(self) -> dict[str, tuple[int, int, int]]:
        return {n: self.dims.plane_shape(n) for n in PLANE_NAMES}

    def _check_occ(self, occ_BTXYZ: torch.Tensor) -> None:
        if not isinstance(occ_BTXYZ, torch.Tensor):
            raise ValueError(f"occupancy must be a torch.Tensor, got {type(occ_BTXYZ).__name__}")
        if occ_BTXYZ.dtype.is_floating_point or occ_BTXYZ.dtype.is_complex or occ_BTXYZ.dtype == torch.bool:
            raise ValueError(f"occupancy dtype {occ_BTXYZ.dtype}, expected integer class ids (e.g. torch.long)")
        if occ_BTXYZ.dim() != 5 or tuple(occ_BTXYZ.shape[1:]) != self.config.shape:
            want = ", ".join(map(str, self.config.shape))
            raise ValueError(f"occupancy shape {tuple(occ_BTXYZ.shape)}, expected (B, {want})")
        lo, hi = torch.aminmax(occ_BTXYZ)
        if lo.item() < 0 or hi.item() >= self.config.num_classes:
            raise ValueError(f"occupancy class ids span [{lo.item()}, {hi.item()}], "
                             f"expected ids in [0, {self.config.num_classes - 1}]")

    @property
    def needs_trajectory(self) -> bool:
        """Whether ``encode`` needs the clip's trajectory (a reference-frame VAE, ``motion_frame.py``)."""
        return self.slot is not None

    def encode(self, occ_BTXYZ: torch.Tensor, trajectory: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The posterior ``(μ, log σ²)``, each a HexPlane dict of ``[B, C, ·, ·]`` planes. A reference-frame VAE
        needs ``trajectory [B, T, 3]`` (the store's (x, y, yaw) relative to frame 0) and keeps it in μ's ``tz``
        slot, with log σ² at its floor there (no noise)."""
        self._check_occ(occ_BTXYZ)
        occ_BTXYZ = occ_BTXYZ.long()
        if self.slot is not None:
            if trajectory is None:
                raise ValueError("this VAE encodes clips in their reference frame (VAEConfig.frame='reference') "
                                 "and needs each clip's trajectory [B, T, 3]; none was given")
            trajectory = check_trajectory(trajectory, occ_BTXYZ.shape[0], self.config.num_frames)
            occ_BTXYZ = to_reference(occ_BTXYZ, trajectory, self.config.voxel_xy, unseen=self.config.num_classes)
            if self.config.projection != "column":  # the CNN encoder's embedding knows no 'unseen': call it free
                occ_BTXYZ = occ_BTXYZ.masked_fill(occ_BTXYZ == self.config.num_classes, 0)
        feats = self.encoder(occ_BTXYZ)
        mu, logvar = {}, {}
        for name in PLANE_NAMES:
            mu[name], lv = self.to_posterior[name](feats[name]).chunk(2, dim=1)
            logvar[name] = lv.clamp(*LOGVAR_RANGE)
        if self.slot is not None:
            mu["tz"] = self.slot.write(mu["tz"], trajectory)
            logvar["tz"] = self.slot.fill(logvar["tz"], LOGVAR_RANGE[0])
        return mu, logvar

    def frame_info(self) -> dict:
        """The coordinates of this VAE's planes, as a latent store records them (``frame`` attribute)."""
        if self.slot is None:
            return {"frame": "ego"}
        return {"frame": "reference", "reference_frame": reference_index(self.config.num_frames),
                "trajectory_plane": "tz",
                "trajectory_channels": list(range(self.slot.first, self.dims.channels)),
                "trajectory_scale": list(TRAJECTORY_SCALE)}

    def latent_masks(self, planes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Per plane a ``[C]`` bool mask of the Gaussian channels (the KL's), or None when every channel is."""
        if self.slot is None:
            return None
        return {"tz": self.slot.latent_mask(planes["tz"])}

    def trajectory(self, planes: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The ``[B, T, 3]`` trajectory a reference-frame HexPlane carries (None for an ego-frame VAE)."""
        return None if self.slot is None else self.slot.read(planes["tz"])

    def with_trajectory(self, planes: dict[str, torch.Tensor], trajectory: torch.Tensor) -> dict[str, torch.Tensor]:
        """``planes`` set to decode along ``trajectory [B, T, 3]`` (a reference-frame VAE; others unchanged)."""
        if self.slot is None:
            return dict(planes)
        trajectory = check_trajectory(trajectory, planes["tz"].shape[0], self.config.num_frames)
        return {**planes, "tz": self.slot.write(planes["tz"], trajectory)}

    @staticmethod
    def reparameterize(mu: dict[str, torch.Tensor], logvar: dict[str, torch.Tensor],
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``z = μ + σ · ε`` per plane, ``ε ~ N(0, I)`` drawn from ``generator`` when given."""
        z = {}
        for name in PLANE_NAMES:
            eps = torch.randn(mu[name].shape, generator=generator, device=mu[name].device, dtype=mu[name].dtype)
            z[name] = mu[name] + torch.exp(0.5 * logvar[name]) * eps
        return z

    def decode(self, planes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Six latent planes → ``logits [B, K, T, X, Y, Z]`` (a permuted view; ``argmax(1)`` gives classes), in every
        frame's ego coordinates; a reference-frame VAE decodes along the trajectory its ``tz`` slot holds. Outside
        training the logits carry ``class_bias`` (the decode calibration, ``dcgen.train.calibrate``); training
        losses see the raw logits."""
        check_planes(planes, self.plane_shapes, "HexPlaneVAE.decode")
        if self.slot is None:
            logits_BKTXYZ = self.decoder(dict(planes))
        else:
            trajectory = self.slot.read(planes["tz"])
            logits_BKTXYZ = from_reference(self.decoder({**planes, "tz": self.slot.clear(planes["tz"])}),
                                           trajectory, self.config.voxel_xy)
        if self.training:  # no check of the offsets' values: on CUDA it would be a host sync per decode
            return logits_BKTXYZ
        bias_1K1111 = self.class_bias.to(logits_BKTXYZ.dtype).view(1, -1, 1, 1, 1, 1)
        if torch.is_grad_enabled():
            return logits_BKTXYZ + bias_1K1111
        return logits_BKTXYZ.add_(bias_1K1111)  # inference: no second logits-sized tensor

    def perturb(self, planes: dict[str, torch.Tensor], scale: float,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``planes`` plus Gaussian noise of the kind a diffusion model's samples carry, for a decoder that must
        stay sharp on them: per clip a level ``u ~ U(0, 1)``, per plane channel a standard deviation of
        ``u · scale · s`` where ``s`` is that channel's spread over the batch's pixels (detached), so ``scale`` is
        in the units of the DiT's standardised latents (per plane and channel). A reference-frame VAE's
        trajectory slot is left exact: the decoder reads it as geometry, not features."""
        if not scale > 0:
            return dict(planes)
        out = {}
        first = planes[PLANE_NAMES[0]]
        level_B = torch.rand(first.shape[0], generator=generator).to(first.device, first.dtype)
        for name in PLANE_NAMES:
            x = planes[name]
            spread = x.detach().float().std(dim=(0, 2, 3), keepdim=True).to(x.dtype)
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            step = level_B.view(-1, 1, 1, 1) * scale * spread * noise
            if name == "tz" and self.slot is not None:
                step = step * self.slot.latent_mask(x).to(x.dtype).view(1, -1, 1, 1)
            out[name] = x + step
        return out

    def forward(self, occ_BTXYZ: torch.Tensor, sample: bool | None = None,
                generator: torch.Generator | None = None, trajectory: torch.Tensor | None = None,
                latent_noise: float = 0.0):
        """``(logits, μ, log σ²)``; decodes a posterior sample if ``sample`` (default: training mode), else μ.
        ``trajectory`` as ``encode`` takes it; ``latent_noise`` > 0 decodes the latent ``perturb``ed at that
        scale (decoder fine-tuning)."""
        mu, logvar = self.encode(occ_BTXYZ, trajectory)
        sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        return self.decode(self.perturb(z, latent_noise, generator)), mu, logvar

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def compression_ratio(self) -> float:
        """Input voxels ÷ latent floats (SPEC §2: 23.1 for carlasc)."""
        t, x, y, z = self.config.shape
        return t * x * y * z / self.dims.num_floats
