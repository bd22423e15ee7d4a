"""Diffusion on the padded rollout: schedule, training loss, DDPM/DDIM/DPM-Solver++ samplers, guidance, inpainting.

Independent of the network: everything here takes a model function ``(x_BCSS, t_B) -> output``. No Ray, no Typer.
"""
