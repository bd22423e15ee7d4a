"""Exponential moving average of model weights (DiT samples with EMA weights, SPEC §3).

Given the optimiser step, the decay warms up as ``min(decay, (1 + step) / (10 + step))``: a 0.999 average after the
300 steps of a half-hour CPU run would still be 74 % the random initial weights; with the warm-up it averages the
trained ones, and from step ~9,000 (0.999) or ~90,000 (0.9999) on it is the plain average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay · shadow + (1 − decay) · weights`` after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay applied after optimiser step ``step`` (0-based); the plain decay when ``step`` is None."""
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - decay)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
