"""Zero-init Cross-Attention (HDR-V-Diff §3.3, eq. 6):
F^s = F_r^s + alpha * Z(CrossAttention(Q_r^s, K_d^s, V_d^s); theta^s), Z a convolution whose weight and bias start at 0.

As in the paper the attention runs over all H*W tokens of a scale (O((HW)^2)); ``window`` (off by default, not in
the paper) restricts it to non-overlapping window x window tiles for full-resolution frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZiCA(nn.Module):
    """forward(F_d (B, Cd, h, w), F_r (B, Cr, H, W)) -> F (B, Cr, H, W). F_d is mapped to Cr channels (1x1 conv) and
    resized to H x W; both pass group-norm + linear; Q from F_r, K and V from F_d; attention over the H*W tokens."""

    def __init__(self, diffusion_channels: int, temporal_channels: int, heads: int = 1, groups: int = 8,
                 alpha: float = 1.0, zero_kernel: int = 1, window: int | None = None):
        super().__init__()
        c = temporal_channels
        if c % heads:
            raise ValueError(f"ZiCA: channels {c} not divisible by heads {heads}")
        self.heads, self.alpha, self.window = heads, alpha, window
        self.map_d = nn.Conv2d(diffusion_channels, c, 1)
        self.norm_r, self.norm_d = nn.GroupNorm(min(groups, c), c), nn.GroupNorm(min(groups, c), c)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.zero_conv = nn.Conv2d(c, c, zero_kernel, padding=zero_kernel // 2)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)

    def forward(self, f_d: torch.Tensor, f_r: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f_r.shape
        f_d = self.map_d(f_d)
        if f_d.shape[-2:] != (h, w):
            f_d = F.interpolate(f_d, size=(h, w), mode="bilinear", align_corners=False)

        def tokens(x, norm):  # (B, C, H, W) -> (B, HW, C)
            return norm(x).flatten(2).transpose(1, 2)

        q, k, v = self.q(tokens(f_r, self.norm_r)), *[lin(tokens(f_d, self.norm_d)) for lin in (self.k, self.v)]
        if self.window:
            att = self._windowed(q, k, v, b, h, w)
        else:
            def heads(x):
                return x.view(b, h * w, self.heads, c // self.heads).transpose(1, 2)

            att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
            att = att.transpose(1, 2).reshape(b, h * w, c)
        att = att.transpose(1, 2).reshape(b, c, h, w)
        return f_r + self.alpha * self.zero_conv(att)  # eq. 6

    def _windowed(self, q, k, v, b, h, w):
        """Cross-attention inside window x window tiles (padded tiles: padded keys masked out)."""
        from train.hdrvdiff.maxvit import block_partition, block_unpartition

        s, c = self.window, q.shape[-1]
        ph, pw = (-h) % s, (-w) % s

        def tiles(x):
            x = F.pad(x.view(b, h, w, -1), (0, 0, 0, pw, 0, ph))
            return block_partition(x, s)

        mask = tiles(torch.ones(b, h * w, 1, dtype=q.dtype, device=q.device)).squeeze(-1) > 0.5
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))

        def heads(x):
            return x.view(x.shape[0], s * s, self.heads, c // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(heads(tiles(q)), heads(tiles(k)), heads(tiles(v)),
                                             attn_mask=bias[:, None, None, :])
        att = block_unpartition(att.transpose(1, 2).reshape(-1, s * s, c), b, h + ph, w + pw, s)
        return att[:, :h, :w].reshape(b, h * w, c)
