"""The diffusion transformer on the padded HexPlane rollout (SPEC §3; DiT, Peebles & Xie 2023, with DynamicCity's
per-token conditioning).

The rollout ``[B, C, S, S]`` is cut into 2×2 patches; all-padding tokens are dropped before the blocks and zeros
are scattered back after, so attention only sees the six planes. Each token gets a fixed 2D sin-cos position
embedding over the full token grid and its own conditioning vector: timestep + command + trajectory (one vector per
sample) plus, per token, the patch-embedded vehicle layout, BEV semantic layout and previous clip, all placed on the
S × S canvas. Blocks are adaLN-Zero with that per-token vector. With a learned variance the output has 2C channels:
ε then the interpolation v of improved DDPM.

**Decision** (departs from SPEC §3's ε network): with ``prediction="v"`` (the presets) the network's first C output
channels are the velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022); ``dcgen.diffusion.objective.EpsModel``
turns it into ε = √(1 − ᾱ_t) x_t + √ᾱ_t v̂ with the config's ``schedule``, so the loss, samplers, guidance and
inpainting all still see ε, and the network itself knows no noise schedule.
Why: an ε network learns nothing at high noise, where ε ≈ x_t and x_0 errors cost ᾱ_t/(1 − ᾱ_t) < 0.003; yet that
is where a command must act, since x_t alone shows the turn below t ≈ 750. On the synthetic city a command DiT
with ε output left its left−right x̂_0 difference at t = 999 at cosine 0.07 to the true one after 3,000 steps;
with v output and the loss weight of ``dcgen.diffusion.losses.v_loss_weight`` it reached 0.78. ``prediction="eps"``
keeps the SPEC's network (and reads checkpoints saved before the field existed).

Conditions are optional per call: a configured condition that is missing, or whose per-sample ``drop`` flag is set,
is replaced by its learned null embedding (classifier-free guidance); a condition the model was not configured
with is an error.

Legend: B batch, C latent channels, S rollout side, N tokens (kept ones after dropping), D width, T frames,
K classes, H/W token grid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcgen.data.grid import Grid, LatentDims
from dcgen.models.rollout import RolloutLayout

CONDITIONS: tuple[str, ...] = ("command", "trajectory", "layout", "bev", "prev_clip")
NUM_COMMANDS = 4
LATENT_CHANNELS = 16
TIMESTEP_FREQ_DIM = 256
# SPEC §3's linear β schedule (dcgen.diffusion.schedule.ScheduleConfig's defaults; a test keeps them equal)
DEFAULT_SCHEDULE = {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
PREDICTIONS: tuple[str, ...] = ("eps", "v")


def check_prediction(prediction: str) -> None:
    """Raise a ValueError naming the choices unless ``prediction`` is one of ``PREDICTIONS``."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"DiT prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")


@dataclass(frozen=True)
class DiTConfig:
    latent: LatentDims
    depth: int
    width: int
    heads: int
    num_frames: int  # T of the clip: trajectory rows and layout channels
    layout_size: tuple[int, int]  # (X/d, Y/d) of the vehicle layout
    bev_size: tuple[int, int]  # (X, Y) of the BEV semantic layout
    num_classes: int  # class ids of the BEV semantic layout
    conditions: tuple[str, ...] = CONDITIONS
    patch: int = 2
    mlp_ratio: float = 4.0
    learn_sigma: bool = True
    # PlaneLatentNorm (or, in older runs, LatentNorm) .to_dict() of its training latents; None: raw μ, no x̂₀ bound
    latent_norm: dict | None = None
    prediction: str = "v"  # what the network outputs: "eps" or "v" (module docstring)
    # ScheduleConfig.to_dict() of the ᾱ_t its v -> ε conversion uses (the diffusion side reads and checks it)
    schedule: dict = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))
    # configs saved before ``prediction`` existed are ε networks
    LEGACY_DEFAULTS: ClassVar[dict] = {"prediction": "eps"}

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or self.heads < 1 or self.width % self.heads:
            raise ValueError(f"DiT needs depth >= 1 and a width divisible by heads, got depth={self.depth}, "
                             f"width={self.width}, heads={self.heads}")
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"DiT conditions {list(self.conditions)} must be distinct names from {list(CONDITIONS)}")
        check_prediction(self.prediction)
        missing = sorted(set(DEFAULT_SCHEDULE) - set(self.schedule))
        if missing:
            raise ValueError(f"DiT schedule {self.schedule} lacks {missing}; expected a ScheduleConfig dict")
        RolloutLayout(self.latent, self.patch)  # validates that the patch tiles every plane

    @property
    def out_channels(self) -> int:
        return 2 * self.latent.channels if self.learn_sigma else self.latent.channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        from dcgen import config

        return config.from_dict(cls, d)

    @classmethod
    def for_grid(cls, grid: Grid, depth: int, width: int, heads: int, **overrides) -> "DiTConfig":
        latent = LatentDims.from_grid(grid.num_frames, grid.size, LATENT_CHANNELS)
        return cls(latent=latent, depth=depth, width=width, heads=heads, num_frames=grid.num_frames,
                   layout_size=grid.layout_size, bev_size=grid.size[:2], num_classes=grid.num_classes, **overrides)


def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps, cos half first as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device) / half)
    args_BF = t_B.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args_BF), torch.sin(args_BF)], dim=-1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed ``[grid², dim]`` 2D sin-cos position embedding (half the channels per axis), row-major tokens."""
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def axis(pos):
        out = np.einsum("n,f->nf", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([axis(rows), axis(cols)], axis=1)).float()


def modulate(x_BND: torch.Tensor, shift_BND: torch.Tensor, scale_BND: torch.Tensor) -> torch.Tensor:
    return x_BND * (1 + scale_BND) + shift_BND


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x_BND: torch.Tensor, key_mask_N: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x_BND.shape
        q, k, v = self.qkv(x_BND).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask_N is None else key_mask_N[None, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each shifted, scaled and gated by the token's conditioning vector (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x_BND, c_BND, key_mask_N=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c_BND).chunk(6, dim=-1)
        x_BND = x_BND + gate1 * self.attn(modulate(self.norm1(x_BND), shift1, scale1), key_mask_N)
        return x_BND + gate2 * self.mlp(modulate(self.norm2(x_BND), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, x_BND, c_BND):
        shift, scale = self.ada(c_BND).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x_BND), shift, scale))


class DiT(nn.Module):
    """``forward(x_BCSS, t_B, cond, drop) -> out_B(2C)SS``; see the module docstring for the conditions."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.rollout = RolloutLayout(config.latent, config.patch)
        c, d, p, s = config.latent.channels, config.width, config.patch, self.rollout.size
        self.x_embed = nn.Conv2d(c, d, p, p)
        self.register_buffer("pos_ND", sincos_pos_embed_2d(d, self.rollout.grid), persistent=False)
        token_N = self.rollout.token_mask(device="cpu").reshape(-1)
        self.register_buffer("token_valid_N", token_N, persistent=False)
        self.register_buffer("keep_idx", token_N.nonzero().squeeze(1), persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(TIMESTEP_FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))

        embedders = {
            "command": lambda: nn.Embedding(NUM_COMMANDS, d),
            "trajectory": lambda: nn.Sequential(nn.Linear(3 * config.num_frames, d), nn.ReLU(), nn.Linear(d, d),
                                                nn.ReLU(), nn.Linear(d, d)),
            "layout": lambda: nn.Conv2d(config.num_frames, d, p, p),
            "bev": lambda: nn.Conv2d(config.num_classes, d, p, p),
            "prev_clip": lambda: nn.Conv2d(c, d, p, p),
        }
        self.cond_embed = nn.ModuleDict({name: embedders[name]() for name in config.conditions})
        self.cond_null = nn.ParameterDict({name: nn.Parameter(torch.zeros(d)) for name in config.conditions})
        self.blocks = nn.ModuleList(DiTBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(d, p, config.out_channels)
        self._canvas = (s, config.latent.x, config.latent.y)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier linears and patch embeddings, N(0, 0.02) embeddings, zero adaLN and head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        for m in self.t_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if "command" in self.cond_embed:
            nn.init.normal_(self.cond_embed["command"].weight, std=0.02)
        for null in self.cond_null.values():
            nn.init.normal_(null, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- conditions ----------------------------------------------------------------------------------------

    def _check(self, name: str, value: torch.Tensor, b: int) -> None:
        cfg, lat = self.config, self.config.latent
        s = self.rollout.size
        expected = {
            "command": (b,), "trajectory": (b, cfg.num_frames, 3), "layout": (b, cfg.num_frames, *cfg.layout_size),
            "bev": (b, *cfg.bev_size), "prev_clip": (b, lat.channels, s, s),
        }[name]
        if tuple(value.shape) != expected:
            raise ValueError(f"condition {name!r} has shape {list(value.shape)}, expected {list(expected)}")
        if name in ("command", "bev"):
            hi = NUM_COMMANDS if name == "command" else cfg.num_classes
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise ValueError(f"condition {name!r} must hold integer ids, got dtype {value.dtype}")
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= hi):
                raise ValueError(f"condition {name!r} ids must lie in [0, {hi - 1}], got range "
                                 f"[{int(value.min())}, {int(value.max())}]")
            return
        v = value.float()
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"condition {name!r} holds non-finite values")
        if name == "layout" and v.numel() and (float(v.min()) < 0 or float(v.max()) > 1):
            raise ValueError(f"condition 'layout' must be an occupancy map in [0, 1], got range "
                             f"[{float(v.min())}, {float(v.max())}]")

    def _on_xy_block(self, image_BKXY: torch.Tensor) -> torch.Tensor:
        """Resample a BEV image to X' × Y' and zero-pad it onto the xy block of the S × S canvas."""
        s, x, y = self._canvas
        mode = "nearest" if image_BKXY.shape[2] <= x else "area"
        image = F.interpolate(image_BKXY, size=(x, y), mode=mode)
        return F.pad(image, (0, s - y, 0, s - x))

    def _embed(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` for per-sample conditions, ``[B, N, D]`` (full token grid) for per-token ones."""
        net = self.cond_embed[name]
        if name == "command":
            return net(value.long())
        if name == "trajectory":
            return net(value.float().flatten(1))
        if name == "layout":
            image_BDHW = net(self._on_xy_block(value.float()))
        elif name == "bev":
            onehot_BKXY = F.one_hot(value.long(), self.config.num_classes).permute(0, 3, 1, 2).float()
            image_BDHW = net(self._on_xy_block(onehot_BKXY))
        else:
            image_BDHW = net(value.float())
        return image_BDHW.flatten(2).transpose(1, 2)

    def condition(self, t_B: torch.Tensor, cond: dict, drop: dict) -> torch.Tensor:
        """The conditioning vector of every token: ``[B, 1, D]`` or, with per-token conditions, ``[B, N, D]``."""
        b = t_B.shape[0]
        c_BD = self.t_embed(timestep_embedding(t_B, TIMESTEP_FREQ_DIM))
        c_BND = c_BD[:, None, :]
        for name in self.config.conditions:
            null_D = self.cond_null[name]
            dropped_B = drop.get(name)
            if name not in cond:
                emb = null_D.expand(b, 1, -1)
            else:
                emb = self._embed(name, cond[name])
                if emb.ndim == 2:
                    emb = emb[:, None, :]
                if dropped_B is not None:
                    emb = torch.where(dropped_B[:, None, None], null_D.to(emb.dtype), emb)
            c_BND = c_BND + emb
        return c_BND

    # ---- forward -------------------------------------------------------------------------------------------

    def forward(self, x_BCSS: torch.Tensor, t_B: torch.Tensor, cond: dict | None = None, drop: dict | None = None,
                drop_padding: bool = True) -> torch.Tensor:
        """The network's output for ``x_BCSS`` at timesteps ``t_B``: ε or v (``config.prediction``), then the
        variance interpolation; ``dcgen.diffusion.objective.EpsModel`` gives ε either way.

        ``cond`` maps condition names to tensors; ``drop`` maps names to bool ``[B]`` (True = use the null
        embedding for that sample). ``drop_padding=False`` keeps padding tokens and masks them out of attention
        instead; it gives the same result and exists to check that dropping is exact.
        """
        cond, drop = dict(cond or {}), dict(drop or {})
        lat, s = self.config.latent, self.rollout.size
        if x_BCSS.ndim != 4 or tuple(x_BCSS.shape[1:]) != (lat.channels, s, s):
            raise ValueError(f"DiT input must have shape [B, {lat.channels}, {s}, {s}], got {list(x_BCSS.shape)}")
        b = x_BCSS.shape[0]
        if t_B.shape != (b,):
            raise ValueError(f"timesteps must have shape [{b}], got {list(t_B.shape)}")
        for kind, given in (("condition", cond), ("drop flag", drop)):
            extra = [k for k in given if k not in self.config.conditions]
            if extra:
                raise ValueError(f"{kind} {extra} given but this model was configured with conditions "
                                 f"{list(self.config.conditions)}")
        for name, value in cond.items():
            self._check(name, value, b)
        for name, flags in drop.items():
            if flags.dtype != torch.bool or tuple(flags.shape) != (b,):
                raise ValueError(f"drop flags for {name!r} must be a bool tensor of shape [{b}], "
                                 f"got {flags.dtype} {list(flags.shape)}")

        tokens_BND = self.x_embed(x_BCSS).flatten(2).transpose(1, 2) + self.pos_ND.to(x_BCSS.dtype)
        c_BND = self.condition(t_B, cond, drop)
        if drop_padding:
            tokens_BND = tokens_BND[:, self.keep_idx]
            if c_BND.shape[1] > 1:
                c_BND = c_BND[:, self.keep_idx]
            key_mask = None
        else:
            key_mask = self.token_valid_N
        for block in self.blocks:
            tokens_BND = block(tokens_BND, c_BND, key_mask)
        patches_BNP = self.final(tokens_BND, c_BND)
        if drop_padding:
            full_BNP = patches_BNP.new_zeros(b, self.rollout.num_tokens, patches_BNP.shape[-1])
            full_BNP[:, self.keep_idx] = patches_BNP
        else:
            full_BNP = patches_BNP * self.token_valid_N[None, :, None].to(patches_BNP.dtype)
        return self.unpatchify(full_BNP)

    def unpatchify(self, patches_BNP: torch.Tensor) -> torch.Tensor:
        """``[B, H·W, p·p·C_out]`` -> ``[B, C_out, S, S]``."""
        b, g, p = patches_BNP.shape[0], self.rollout.grid, self.config.patch
        x = patches_BNP.reshape(b, g, g, p, p, -1)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, -1, g * p, g * p)
