"""MaxViT block (Tu et al. 2022) used in place of the U-Net's self-attention (HDR-V-Diff §3.1).

MBConv -> block attention (non-overlapping P x P windows) + MLP -> grid attention (a G x G grid dilated over the
whole map) + MLP, each attention with a learned relative-position bias. Maps that are not a multiple of the window
are zero-padded for the attention and the padded tokens are masked out of every softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project, residual.
    GroupNorm replaces MaxViT's BatchNorm (batch statistics are unreliable at diffusion batch sizes)."""

    def __init__(self, channels: int, expansion: int = 4, groups: int = 8, se_ratio: float = 0.25):
        super().__init__()
        hidden = channels * expansion
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        se = max(1, int(channels * se_ratio))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, se, 1), nn.SiLU(), nn.Conv2d(se, hidden, 1),
                                nn.Sigmoid())
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        h = F.gelu(self.expand(self.norm(x)))
        h = F.gelu(self.dw(h))
        return x + self.project(h * self.se(h))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows of ``size x size`` tokens with a relative-position bias."""

    def __init__(self, channels: int, heads: int, size: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"MaxViT: channels {channels} not divisible by heads {heads}")
        self.heads, self.size = heads, size
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.bias_table = nn.Parameter(torch.zeros((2 * size - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (size - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * size - 1) + rel[..., 1], persistent=False)

    def forward(self, tokens, key_mask=None):  # (N, size*size, C); key_mask (N, size*size) bool, True = real token
        n, t, c = tokens.shape
        q, k, v = self.qkv(tokens).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.rel_index.reshape(-1)].view(t, t, self.heads).permute(2, 0, 1).unsqueeze(0)
        bias = bias.to(q.dtype)
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


def block_partition(x, p):  # (B, H, W, C) -> (B*H/p*W/p, p*p, C): contiguous p x p windows
    b, h, w, c = x.shape
    return x.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, c)


def block_unpartition(t, b, h, w, p):
    c = t.shape[-1]
    return t.view(b, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def grid_partition(x, g):  # (B, H, W, C) -> (B*H/g*W/g, g*g, C): g x g tokens strided by (H/g, W/g)
    b, h, w, c = x.shape
    return x.view(b, g, h // g, g, w // g, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c)


def grid_unpartition(t, b, h, w, g):
    c = t.shape[-1]
    return t.view(b, h // g, w // g, g, g, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)


class _AttnMLP(nn.Module):
    def __init__(self, channels, heads, size, mlp_ratio):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.attn = WindowAttention(channels, heads, size)
        self.mlp = nn.Sequential(nn.Linear(channels, channels * mlp_ratio), nn.GELU(),
                                 nn.Linear(channels * mlp_ratio, channels))

    def forward(self, x, part, unpart):  # x (B, H, W, C)
        b, h, w, _ = x.shape
        s = self.attn.size
        ph, pw = (-h) % s, (-w) % s
        y = self.norm1(x)
        mask = None
        if ph or pw:  # pad to whole windows; padded tokens never act as keys
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
            valid = torch.zeros(1, h + ph, w + pw, 1, dtype=torch.bool, device=x.device)
            valid[:, :h, :w] = True
            mask = part(valid.expand(b, -1, -1, -1), s)[..., 0]
        y = unpart(self.attn(part(y, s), mask), b, h + ph, w + pw, s)[:, :h, :w]
        x = x + y
        return x + self.mlp(self.norm2(x))


class MaxViTBlock(nn.Module):
    """MBConv + block attention + grid attention on a (B, C, H, W) map."""

    def __init__(self, channels: int, heads: int = 4, window: int = 8, mlp_ratio: int = 4, groups: int = 8,
                 mbconv: bool = True):
        super().__init__()
        self.window = window
        self.mbconv = MBConv(channels, groups=groups) if mbconv else nn.Identity()
        self.block = _AttnMLP(channels, heads, window, mlp_ratio)
        self.grid = _AttnMLP(channels, heads, window, mlp_ratio)

    def forward(self, x):
        x = self.mbconv(x).permute(0, 2, 3, 1)
        x = self.block(x, block_partition, block_unpartition)
        x = self.grid(x, grid_partition, grid_unpartition)
        return x.permute(0, 3, 1, 2).contiguous()
