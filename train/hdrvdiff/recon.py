"""Reconstruction module (HDR-V-Diff §3.3, Fig. 2c): one ZiCA per scale merges the frozen SD decoder's features
(distribution prior F_d^s) into the frozen temporal decoder's features (F_r^s); the merged maps are upsampled and
fused from coarse to fine into the HDR frame (mu-law domain). Trained with eq. 7 in stage ``recon``.

The fusion is residual with zero-initialised convs, y_s = F^s + Z_s([F^s, up(y_{s+1})]), and the output conv starts
as a copy of the temporal decoder's (:meth:`init_output_from`): at the start of stage recon the module reproduces the
temporal branch's prediction exactly, and both the diffusion prior (ZiCA) and the cross-scale fusion grow from there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from train.hdrvdiff.zica import ZiCA


class ReconstructionModule(ModelMixin, ConfigMixin):
    """forward([F_d^1, F_d^2, F_d^3], [F_r^1, F_r^2, F_r^3]) (fine to coarse) -> (B, 3, H, W) mu-law prediction."""

    @register_to_config
    def __init__(self, diffusion_channels: tuple = (128, 512, 512), temporal_channels: tuple = (64, 96, 128),
                 heads: int = 1, groups: int = 8, alpha: float = 1.0, out_channels: int = 3,
                 window: int | None = None):
        super().__init__()
        self.zica = nn.ModuleList([ZiCA(cd, cr, heads, groups, alpha, window=window) for cd, cr in
                                   zip(diffusion_channels, temporal_channels)])
        c1, c2, c3 = temporal_channels
        self.up3 = nn.Conv2d(c3, c2, 1)
        self.fuse2 = nn.Sequential(nn.Conv2d(2 * c2, c2, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(c2, c2, 3, 1, 1))
        self.up2 = nn.Conv2d(c2, c1, 1)
        self.fuse1 = nn.Sequential(nn.Conv2d(2 * c1, c1, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(c1, c1, 3, 1, 1))
        for fuse in (self.fuse2, self.fuse1):
            nn.init.zeros_(fuse[-1].weight)
            nn.init.zeros_(fuse[-1].bias)
        self.out = nn.Conv2d(c1, out_channels, 3, 1, 1)

    def init_output_from(self, conv: nn.Conv2d) -> None:
        """Start the output conv as ``conv`` (the temporal decoder's output layer)."""
        with torch.no_grad():
            self.out.weight.copy_(conv.weight)
            self.out.bias.copy_(conv.bias)

    def merged(self, diffusion_feats, temporal_feats) -> list[torch.Tensor]:
        return [z(fd, fr) for z, fd, fr in zip(self.zica, diffusion_feats, temporal_feats)]

    def forward(self, diffusion_feats, temporal_feats):
        f1, f2, f3 = self.merged(diffusion_feats, temporal_feats)
        up = F.interpolate(self.up3(f3), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        y2 = f2 + self.fuse2(torch.cat([f2, up], 1))
        up = F.interpolate(self.up2(y2), size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(f1 + self.fuse1(torch.cat([f1, up], 1)))
