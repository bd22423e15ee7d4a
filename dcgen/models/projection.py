"""The Projection Module h_S of the HexPlane encoder and its average-pooling baseline (SPEC §2, encoder step 3).

h_S collapses a set S of axes of a ``[B, C, *axes]`` feature tensor. The kept axes are folded into the batch, so
every kept position becomes one sequence whose tokens are the positions along S (C features each). A learnable
query token is appended, a learned positional embedding added, a 2-layer pre-norm transformer (width C, 2 heads,
MLP 2C, GELU) runs, and the *learnable token* is read out (the public code reads token 0 by mistake; SPEC
Decision). A per-position 1×1 conv → tanh → 1×1 conv follows, written as Linear layers on the folded sequences.
Because only the query token is read out, the last transformer layer computes attention and MLP for that token
alone: keys and values still see every token, so the result is the same as running the full layer.
The baseline replaces the transformer by the mean over S and keeps the same readout.

Legend: B batch, N folded sequences (batch × kept positions), L tokens per sequence, C channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("projection", "avgpool")


class _Attention(nn.Module):
    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, query_NLC: torch.Tensor, context_NLC: torch.Tensor) -> torch.Tensor:
        n, lq, c = query_NLC.shape
        h = self.num_heads
        q_NHLD = self.q(query_NLC).view(n, lq, h, c // h).transpose(1, 2)
        k_NLC, v_NLC = self.kv(context_NLC).chunk(2, dim=-1)
        k_NHLD = k_NLC.reshape(n, -1, h, c // h).transpose(1, 2)
        v_NHLD = v_NLC.reshape(n, -1, h, c // h).transpose(1, 2)
        y_NHLD = F.scaled_dot_product_attention(q_NHLD, k_NHLD, v_NHLD)
        return self.out(y_NHLD.transpose(1, 2).reshape(n, lq, c))


class _PreNormBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = _Attention(channels, num_heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                 nn.Linear(mlp_ratio * channels, channels))

    def forward(self, x_NLC: torch.Tensor, last_token_only: bool = False) -> torch.Tensor:
        context_NLC = self.norm1(x_NLC)
        if last_token_only:
            x_NLC, query_NLC = x_NLC[:, -1:], context_NLC[:, -1:]
        else:
            query_NLC = context_NLC
        x_NLC = x_NLC + self.attn(query_NLC, context_NLC)
        return x_NLC + self.mlp(self.norm2(x_NLC))


class AttentionPool(nn.Module):
    """``[N, L, C] → [N, C]``: transformer over the L tokens plus an appended learnable token, read that token."""

    def __init__(self, channels: int, num_tokens: int, num_heads: int = 2, depth: int = 2, mlp_ratio: int = 2):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"projection width {channels} is not divisible by its number of heads {num_heads}")
        if depth < 1:
            raise ValueError(f"projection transformer depth={depth}, expected >= 1")
        self.num_tokens = num_tokens
        self.query = nn.Parameter(torch.randn(1, 1, channels) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens + 1, channels) * 0.02)
        self.blocks = nn.ModuleList(_PreNormBlock(channels, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(channels)

    def forward(self, tokens_NLC: torch.Tensor) -> torch.Tensor:
        if tokens_NLC.shape[1] != self.num_tokens:
            raise ValueError(f"attention pooling built for {self.num_tokens} tokens, got {tokens_NLC.shape[1]}")
        query_N1C = self.query.expand(tokens_NLC.shape[0], 1, -1).to(tokens_NLC.dtype)
        x_NLC = torch.cat([tokens_NLC, query_N1C], dim=1) + self.pos_embed
        for i, block in enumerate(self.blocks):
            x_NLC = block(x_NLC, last_token_only=i == len(self.blocks) - 1)
        return self.norm(x_NLC[:, -1])


class AveragePool(nn.Module):
    """``[N, L, C] → [N, C]``: the mean over the L tokens (ablation baseline)."""

    def __init__(self, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens

    def forward(self, tokens_NLC: torch.Tensor) -> torch.Tensor:
        if tokens_NLC.shape[1] != self.num_tokens:
            raise ValueError(f"average pooling built for {self.num_tokens} tokens, got {tokens_NLC.shape[1]}")
        return tokens_NLC.mean(dim=1)


class AxisProjection(nn.Module):
    """h_S on a ``[B, C, *axes]`` tensor: collapse the axes named in ``collapse``, keep the others in order.

    ``axes`` names the non-batch, non-channel dimensions (e.g. ``"txyz"``) and ``sizes`` gives their lengths,
    which fix the number of tokens of the learned positional embedding.
    """

    def __init__(self, channels: int, axes: str, sizes: tuple[int, ...], collapse: str, pooling: str = "projection",
                 num_heads: int = 2, depth: int = 2, mlp_ratio: int = 2):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if len(axes) != len(sizes):
            raise ValueError(f"axes {axes!r} name {len(axes)} dimensions but {len(sizes)} sizes were given")
        if not collapse or any(a not in axes for a in collapse) or len(collapse) >= len(axes):
            raise ValueError(f"cannot collapse {collapse!r} of axes {axes!r}: expected a non-empty proper subset")
        self.axes, self.sizes = axes, tuple(sizes)
        self.kept = tuple(i for i, a in enumerate(axes) if a not in collapse)
        self.collapsed = tuple(i for i, a in enumerate(axes) if a in collapse)
        num_tokens = math.prod(self.sizes[i] for i in self.collapsed)
        if pooling == "projection":
            self.pool = AttentionPool(channels, num_tokens, num_heads, depth, mlp_ratio)
        else:
            self.pool = AveragePool(num_tokens)
        self.readout = nn.Sequential(nn.Linear(channels, channels), nn.Tanh(), nn.Linear(channels, channels))

    def forward(self, feat_BCA: torch.Tensor) -> torch.Tensor:
        if tuple(feat_BCA.shape[2:]) != self.sizes:
            raise ValueError(f"projection over axes {self.axes!r} expects sizes {self.sizes}, "
                             f"got {tuple(feat_BCA.shape[2:])}")
        b, c = feat_BCA.shape[:2]
        kept_sizes = [self.sizes[i] for i in self.kept]
        order = (0, *(2 + i for i in self.kept), *(2 + i for i in self.collapsed), 1)
        tokens_NLC = feat_BCA.permute(order).reshape(b * math.prod(kept_sizes), -1, c)
        pooled_NC = self.readout(self.pool(tokens_NLC))
        out_BKC = pooled_NC.view(b, *kept_sizes, c)
        return out_BKC.movedim(-1, 1)
