"""Rebuild the trained networks from their checkpoints (the config in ``meta.json`` makes the exact model; SPEC §2-3),
with one clear error for a missing, corrupt, wrong-kind or mismatched checkpoint.

A VAE checkpoint holds ``{"model"}``; a DiT checkpoint ``{"model", "ema"}`` (plus optimizer state in the training
run's own checkpoints); sampling uses the EMA weights (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dcgen import checkpoint


@dataclass(frozen=True)
class Loaded:
    model: torch.nn.Module
    meta: dict
    checkpoint_id: str
    path: str

    @property
    def latent_space(self) -> str:
        """A VAE's latent space id (``checkpoint.latent_space_id``): the one its decoder was fine-tuned in, else
        its own checkpoint id."""
        return str(self.meta.get("latent_space") or self.checkpoint_id)


def _weights(state: dict, key: str, path) -> dict:
    if not isinstance(state, dict) or key not in state:
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: checkpoint holds no {key!r} weights (it has {have})")
    return state[key]


def _load_into(model: torch.nn.Module, weights: dict, path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        # torch's first line only names the class; the missing, unexpected or misshapen keys follow on tab lines
        lines = [line.strip() for line in str(e).strip().splitlines()] or [type(e).__name__]
        detail = " ".join(lines[1:]) or lines[0]
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise ValueError(f"{path}: weights do not fit the model its config describes ({detail})") from e


def check_checkpoints(vae: str | Path, dit: str | Path, use_ema: bool = True) -> dict:
    """Vet a VAE + DiT pair in the driver before any Ray work, so a bad checkpoint is named here and not inside an
    actor whose constructor fails: both read as a worker will read them (metadata, and the weights' pickle with
    ``weights_only=True``, memory-mapped so no tensor data is read), the weights sampling uses present, the DiT
    trained on this VAE's latent space (this very VAE, or the one whose encoder a fine-tuned decoder kept).
    Returns ``{"vae": meta, "dit": meta, "ids": {"vae": id, "dit": id}}``."""
    vae_meta, vae_state = checkpoint.load(vae, kind="vae", mmap=True)
    _weights(vae_state, "model", vae)
    dit_meta, dit_state = checkpoint.load(dit, kind="dit", mmap=True)
    _weights(dit_state, "ema" if use_ema else "model", dit)
    ids = {"vae": checkpoint.checkpoint_id(vae), "dit": checkpoint.checkpoint_id(dit)}
    want, space = dit_meta.get("vae_checkpoint_id"), vae_meta.get("latent_space") or ids["vae"]
    if want != space:
        raise ValueError(f"DiT checkpoint {dit} was trained on latents of VAE {want!r}, but {vae} is {ids['vae']!r}"
                         f"{latent_space_note(ids['vae'], space)}; pass the VAE checkpoint the DiT was trained with "
                         "(or a decoder fine-tuned from it)")
    return {"vae": vae_meta, "dit": dit_meta, "ids": ids}


def latent_space_note(vae_id: str, space: str) -> str:
    """``, of the latent space of X`` where a fine-tuned decoder's latent space is another VAE's, else nothing."""
    return "" if space == vae_id else f" (in the latent space of VAE {space!r})"


def vae_config(meta: dict, path):
    """The ``VAEConfig`` a VAE checkpoint's metadata describes, or a clear error naming the checkpoint."""
    from dcgen.models.vae import VAEConfig

    try:
        return VAEConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: VAE config in the checkpoint is invalid ({e})") from e


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> Loaded:
    """The HexPlane VAE of a ``vae`` checkpoint, in eval mode on ``device``."""
    from dcgen.models.vae import HexPlaneVAE

    meta, state = checkpoint.load(path, kind="vae")
    model = HexPlaneVAE(vae_config(meta, path))
    _load_into(model, _weights(state, "model", path), path)
    return Loaded(model.to(device).eval().requires_grad_(False), meta, checkpoint.checkpoint_id(path), str(path))


def load_dit(path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True) -> Loaded:
    """The DiT of a ``dit`` checkpoint (EMA weights unless ``use_ema=False``), in eval mode on ``device``."""
    from dcgen.models.dit import DiT, DiTConfig

    meta, state = checkpoint.load(path, kind="dit")
    try:
        config = DiTConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: DiT config in the checkpoint is invalid ({e})") from e
    model = DiT(config)
    _load_into(model, _weights(state, "ema" if use_ema else "model", path), path)
    return Loaded(model.to(device).eval().requires_grad_(False), meta, checkpoint.checkpoint_id(path), str(path))
