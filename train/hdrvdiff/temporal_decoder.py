"""Multi-scale temporal decoder of Restormer blocks (Zamir et al. 2022) merging the TCAM outputs of all frames
(HDR-V-Diff §3.2, Fig. 2c). Its per-scale features are the temporal features F_r^s used by ZiCA (§3.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (Restormer's WithBias LayerNorm)."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention: attention across channels (C x C per head), linear in H*W."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.dw = nn.Conv2d(3 * c, 3 * c, 3, 1, 1, groups=3 * c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.dw(self.qkv(x)).view(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1)
        return self.proj((att @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network."""

    def __init__(self, c, expansion=2.66):
        super().__init__()
        hidden = int(c * expansion)
        self.inp = nn.Conv2d(c, 2 * hidden, 1)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.out = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        a, g = self.dw(self.inp(x)).chunk(2, 1)
        return self.out(F.gelu(a) * g)


class RestormerBlock(nn.Module):
    def __init__(self, c, heads=1, expansion=2.66):
        super().__init__()
        if c % heads:
            raise ValueError(f"Restormer: channels {c} not divisible by heads {heads}")
        self.n1, self.attn = ChannelLayerNorm(c), MDTA(c, heads)
        self.n2, self.ffn = ChannelLayerNorm(c), GDFN(c, expansion)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


class TemporalDecoder(nn.Module):
    """forward(per-scale lists of N aligned features) -> (tonemapped HDR prediction (B, 3, H, W), [d1, d2, d3])."""

    def __init__(self, n_frames=3, channels=(64, 96, 128), blocks=(2, 2, 2), heads=(1, 2, 4), out_channels=3):
        super().__init__()
        c1, c2, c3 = channels
        self.merge = nn.ModuleList([nn.Conv2d(n_frames * c, c, 1) for c in channels])
        self.fuse2 = nn.Conv2d(2 * c2, c2, 1)
        self.fuse1 = nn.Conv2d(2 * c1, c1, 1)
        self.up3 = nn.Conv2d(c3, c2, 1)
        self.up2 = nn.Conv2d(c2, c1, 1)
        self.stages = nn.ModuleList([nn.Sequential(*[RestormerBlock(c, h) for _ in range(n)])
                                     for c, n, h in zip(channels, blocks, heads)])
        self.out = nn.Conv2d(c1, out_channels, 3, 1, 1)

    def forward(self, aligned: list[list[torch.Tensor]]):
        m1, m2, m3 = (mg(torch.cat(fs, 1)) for mg, fs in zip(self.merge, aligned))
        d3 = self.stages[2](m3)
        up = F.interpolate(self.up3(d3), size=m2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.stages[1](self.fuse2(torch.cat([m2, up], 1)))
        up = F.interpolate(self.up2(d2), size=m1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.stages[0](self.fuse1(torch.cat([m1, up], 1)))
        return self.out(d1), [d1, d2, d3]
