"""Exposure embedding E(e_k) of HDR-V-Diff eq. 4.

Eq. 4 prints the odd-channel exponent as ``2n+1/d``; read literally (2n + 1/d) every odd channel above n = 0 would be
cos(~0) = 1, so it is read as (2n+1)/d: channel i of d uses the frequency 10000^(-i/d), sin on even i, cos on odd i.
"""
from __future__ import annotations

import torch
from torch import nn

from diffusers.models.embeddings import TimestepEmbedding

EXPOSURE_BASE = 10000.0


def exposure_embedding(exposure: torch.Tensor, dim: int, base: float = EXPOSURE_BASE) -> torch.Tensor:
    """(B,) exposure values e_k -> (B, dim) (eq. 4):
    E[2n] = sin(e / base^(2n/d)), E[2n+1] = cos(e / base^((2n+1)/d))."""
    e = torch.as_tensor(exposure).reshape(-1, 1)
    dtype = e.dtype if e.is_floating_point() else torch.float32
    i = torch.arange(dim, device=e.device, dtype=dtype)
    arg = e.to(dtype) / torch.pow(torch.tensor(base, dtype=dtype, device=e.device), i / dim)
    return torch.where(i.long() % 2 == 0, torch.sin(arg), torch.cos(arg))


class ExposureEmbedding(nn.Module):
    """E(e_k) (eq. 4) followed by the same two-layer MLP as the time embedding, so it can be added to it."""

    def __init__(self, dim: int, out_dim: int, base: float = EXPOSURE_BASE):
        super().__init__()
        self.dim, self.base = dim, base
        self.mlp = TimestepEmbedding(dim, out_dim)

    def forward(self, exposure: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        emb = exposure_embedding(exposure, self.dim, self.base)
        return self.mlp(emb.to(dtype or self.mlp.linear_1.weight.dtype))


__all__ = ["exposure_embedding", "ExposureEmbedding", "EXPOSURE_BASE"]
