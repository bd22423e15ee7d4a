"""Named presets: everything a preset name implies, in one table of named dataclasses.

A preset name is the one knob a user turns (``--preset debug|small|carlasc|occ3d``): it picks the voxel grid
(``dcgen.data.grid.GRIDS``), the VAE and DiT shapes, and each training stage's recipe, all looked up here and
nowhere else. An unknown name is an error naming the choices. ``debug`` trains in seconds on a CPU, ``small`` is the
laptop-CPU preset, ``carlasc`` and ``occ3d`` follow SPEC §2–§3 on GPUs. Every value can still be overridden by the
command's own options (and ``--config`` files); this table only gives the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcgen.data.grid import GRIDS, PRESET_NAMES, Grid
from dcgen.models.dit import DiTConfig
from dcgen.models.vae import VAEConfig


@dataclass(frozen=True)
class Recipe:
    """A training stage's defaults: epochs, batch size, learning rate, warm-up steps, EMA decay (None: no EMA), and
    for the VAE the exponent of its class weights (``vae_losses.class_weights``)."""

    epochs: int
    batch_size: int
    lr: float = 1e-3
    warmup_steps: int = 0
    ema_decay: float | None = None
    class_weight_power: float = 1.0 / 3.0


@dataclass(frozen=True)
class Preset:
    name: str
    grid: Grid
    vae: VAEConfig
    dit: DiTConfig
    vae_recipe: Recipe
    dit_recipe: Recipe
    features_recipe: Recipe
    # epochs of the pipeline's decoder fine-tuning (``dcgen train --decoder-epochs``; ``train.runs.train_decoder``):
    # on the small preset 6 epochs (28 minutes on 2 CPU cores) took val mIoU 66.2 -> 68.9 % and the generated
    # layout-conditioned 3D FID 8.3 -> 4.9; elsewhere ``dcgen train decoder``'s default, not measured
    decoder_epochs: int = 4


def _vae(name: str, **widths) -> VAEConfig:
    g = GRIDS[name]
    return VAEConfig(num_classes=g.num_classes, num_frames=g.num_frames, size=g.size, voxel_xy=g.voxel_size[:2],
                     **widths)


# ``small`` is the CPU preset (VAE widths, encoder and frame): at the carlasc widths one 64×64×8×16 clip costs
# ~300 GFLOP forward (the decoder's 128-wide 3D residual blocks alone ~230), 34 s per training clip on a busy
# 2-core CPU; these widths keep the architecture and the latent (C = 16) and need ~10× fewer FLOPs, though only
# ~2.5× less time (14 s measured beside it): narrow 3D convolutions and the projection attention use a CPU poorly.
# the SPEC's 8 channels per head at this width: two 4-channel heads made the step ~1.3× slower (the attention is
# exp- and memory-bound on a CPU) and learnt no more per step. ``lift_norm`` (see ESSDecoder) is what lets the
# preset's 3× learning rate (train/runs.py) help: in 8-minute probes 22.7 % val mIoU with it, 17.8 % without,
# 19.9 % at the SPEC's rate; a 30-minute run went from 27.7 % to 31.0 %. The preset encodes with the column
# encoder (``column_encoder.py``, not SPEC): on an AVX2 CPU in float32 its step is 1.9 s against the CNN +
# attention encoder's 4.3 s, and 4-minute probes read 21.9 % val mIoU against 11.5 %. The CNN encoder's widths
# stay, for ``--projection projection|avgpool`` and ``dcgen bench vae``'s ablation. The preset factors its
# clips in the reference frame (``motion_frame.py``, not SPEC): 4-minute probes read 31.8 % val mIoU against
# 21.9 % in the ego frames, for a 9 % dearer step (2.05 s against 1.88 s). There the product of the planes is
# the SPEC's 64 wide (``decoder_width``): at 16 each voxel's height profile is a sum of 16 separable xz · yz
# profiles, and the decoder (147 k parameters at 16) underfits, train and val mIoU alike. Two one-thread probes
# side by side read 39.8 % against 36.2 % after 10 minutes, for a 6 % dearer step (in the ego frames 64 had
# learnt no faster in 4 minutes); a 48-wide 3D CNN (``decoder_hidden``) learnt more per step but made it 45 %
# dearer (31.0 % at 10 minutes).
# ``debug`` takes the same column encoder and 64-wide product (its frames stay ego): under the quickstart's recipe
# (10 VAE epochs, 720 steps of 4 clips, 2 AMD EPYC cores) val mIoU read 42.2 % with the CNN + attention encoder and a
# 16-wide product (9 minutes), 49.1 % with the product 64 wide (8.8), 79.0 % with the column encoder as well (4.4).
# On 270 held-out clips of another city: mIoU 43.5 -> 50.3 -> 80.0 %, pole IoU 24 -> 37 -> 84 %, pedestrian
# 13 -> 30 -> 66 %, vehicle 30 -> 41 -> 82 %. The CNN encoder lost where a one-voxel-wide pole stands: half of the
# 1,543 held-out pole columns came back without a pole voxel (768), against 62 with the column encoder.
#
# VAE recipes: on CPU (small) steps are what a run lacks: one clip per step, and 3× the SPEC's rate after a short
# warm-up, which the preset's lift norm keeps stable (measurements above).
# VAE class weights: (max frequency / frequency)^0.5 for the CPU presets, not SPEC's ^(1/3). Under SPEC's weights a
# minutes-trained VAE paints poles and pedestrians as free space (debug, 4 epochs: val IoU 1.7 % and 4.1 %, so every
# generated pole or pedestrian is a voxel or two); at 0.5, same run otherwise, 5.9 % and 4.6 %, barrier 17.5 → 26.4 %,
# vehicle 20.1 → 13.5 %, mIoU 32.0 → 32.8 %.
# DiT recipes: the debug preset trains for a few hundred steps, after which a 0.9999 average would still be the
# initial weights, and its tiny DiT reaches a given loss ~2x sooner at 1e-3 than at the paper's 1e-4. Its width is
# above a token's 2·2·16 = 64 input values: at width 64 the final LayerNorm drops a token's scale and mean, which
# capped ε accuracy at high noise (MSE 0.04 at t = 999 vs 0.001 at width 128) and spoiled samples. On the column
# encoder's latents (above) a 2 × 128 DiT underfit: validation loss 0.48 after 120 epochs (15 minutes on 2 AVX2 cores),
# the training loss beside it, against 0.28 on the CNN encoder's. 4 × 256 (7× the parameters, a step 2.7× dearer)
# reached 0.45 in 58 epochs and 20 minutes; its scenes (layout, DDIM-50, 128 against a held-out city) 3D FID
# 7.4 -> 4.7, 2D recall 0.57 -> 0.64, pole median 2 -> 3 voxels, and on the downstream benchmark generated-only
# 0.66 -> 0.76 of real-only (README).
# The small preset's DiT keeps 2×2 tokens: at 4×4 (121 tokens instead of 484, width 384 to stay above a token's
# 4·4·16 inputs) a step of 16 latents costs 1.4 s instead of 3.7 s in float32 on 2 Xeon cores, but its validation
# loss on the same latents was 0.36 after 360 steps and 0.32 after 693 (27 minutes, lr 3e-4, --cpu-bf16) against
# 0.18 after 360 steps for 2×2 (lr 5e-4, float32).
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("debug", GRIDS["debug"],
           vae=_vae("debug", embed_dim=8, encoder_width=8, decoder_width=64, decoder_hidden=32, decoder_out=16,
                    query_hidden=64, projection="column", column_width=64),
           dit=DiTConfig.for_grid(GRIDS["debug"], depth=4, width=256, heads=4),
           vae_recipe=Recipe(2, 4, 1e-3, class_weight_power=0.5), dit_recipe=Recipe(40, 8, 1e-3, ema_decay=0.99),
           features_recipe=Recipe(3, 8)),
    Preset("small", GRIDS["small"],
           vae=_vae("small", embed_dim=8, encoder_width=8, projection_heads=1, decoder_width=64, decoder_hidden=32,
                    decoder_out=16, lift_norm=True, query_hidden=64, projection="column", column_width=64,
                    frame="reference"),
           dit=DiTConfig.for_grid(GRIDS["small"], depth=8, width=256, heads=4),
           vae_recipe=Recipe(6, 1, 3e-3, warmup_steps=20, class_weight_power=0.5),
           dit_recipe=Recipe(60, 16, 1e-4, ema_decay=0.999),
           features_recipe=Recipe(6, 8), decoder_epochs=6),
    Preset("carlasc", GRIDS["carlasc"], vae=_vae("carlasc"),
           dit=DiTConfig.for_grid(GRIDS["carlasc"], depth=16, width=384, heads=8),
           vae_recipe=Recipe(100, 4, 1e-3), dit_recipe=Recipe(400, 32, 1e-4, ema_decay=0.9999),
           features_recipe=Recipe(20, 8)),
    Preset("occ3d", GRIDS["occ3d"], vae=_vae("occ3d"),
           dit=DiTConfig.for_grid(GRIDS["occ3d"], depth=18, width=768, heads=12),
           vae_recipe=Recipe(100, 2, 1e-3), dit_recipe=Recipe(400, 16, 1e-4, ema_decay=0.9999),
           features_recipe=Recipe(20, 8)),
)}
assert tuple(PRESETS) == PRESET_NAMES


def get_preset(name: str) -> Preset:
    """The preset of that name; a clear error for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_of_grid(grid: Grid) -> str | None:
    """The name of the preset whose grid has ``grid``'s frames and size (None if none)."""
    for name, p in PRESETS.items():
        if (p.grid.num_frames, p.grid.size) == (grid.num_frames, grid.size):
            return name
    return None
