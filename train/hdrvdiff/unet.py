"""HDR-LDM denoiser (HDR-V-Diff §3.1): a time-conditioned U-Net (Rombach et al. 2022) with two changes -- the exposure
embedding E(e_k) (eq. 4) added to the time embedding, and every self-attention block replaced by a MaxViT block.

Built from diffusers' building blocks (ResnetBlock2D, Downsample2D, Upsample2D, Timesteps, TimestepEmbedding); the
condition Enc(I_k) is concatenated with the noisy latent z_t at the input.
"""
from __future__ import annotations

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

from train.hdrvdiff.embeddings import ExposureEmbedding
from train.hdrvdiff.maxvit import MaxViTBlock


class HDRLDMUNet(ModelMixin, ConfigMixin):
    """eps_theta(z_t, Enc(I_k), E(e_k), t) of eq. 5. ``forward(sample, timestep, cond, exposure) -> eps``."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, cond_channels: int = 4,
                 block_out_channels: tuple = (128, 256, 512, 512), layers_per_block: int = 2,
                 maxvit_levels: tuple = (True, True, True, False), maxvit_heads: int = 8, maxvit_window: int = 8,
                 norm_num_groups: int = 32, use_exposure_embedding: bool = True):
        super().__init__()
        ch = list(block_out_channels)
        if len(maxvit_levels) != len(ch):
            raise ValueError("maxvit_levels needs one flag per entry of block_out_channels")
        temb = ch[0] * 4
        self.time_proj = Timesteps(ch[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.exposure_embedding = ExposureEmbedding(ch[0], temb) if use_exposure_embedding else None
        self.conv_in = nn.Conv2d(latent_channels + cond_channels, ch[0], 3, padding=1)

        def res(cin, cout):
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, groups=norm_num_groups)

        def attn(c, on):
            return MaxViTBlock(c, maxvit_heads, maxvit_window, groups=norm_num_groups) if on else nn.Identity()

        self.down = nn.ModuleList()
        skips, cin = [ch[0]], ch[0]
        for i, c in enumerate(ch):
            level = nn.Module()
            level.resnets = nn.ModuleList()
            level.attns = nn.ModuleList()
            for _ in range(layers_per_block):
                level.resnets.append(res(cin, c))
                level.attns.append(attn(c, maxvit_levels[i]))
                cin = c
                skips.append(c)
            level.downsample = Downsample2D(c, use_conv=True, name="op") if i < len(ch) - 1 else None
            if level.downsample is not None:
                skips.append(c)
            self.down.append(level)
        self.mid_res1, self.mid_attn, self.mid_res2 = res(cin, cin), attn(cin, True), res(cin, cin)
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            level = nn.Module()
            level.resnets = nn.ModuleList()
            level.attns = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                level.resnets.append(res(cin + skips.pop(), c))
                level.attns.append(attn(c, maxvit_levels[i]))
                cin = c
            level.upsample = Upsample2D(c, use_conv=True) if i > 0 else None
            self.up.append(level)
        self.norm_out = nn.GroupNorm(norm_num_groups, ch[0])
        self.conv_out = nn.Conv2d(ch[0], latent_channels, 3, padding=1)

    @property
    def downscale(self) -> int:
        """Spatial size of the latent must be a multiple of this (one factor 2 per downsampling)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample: torch.Tensor, timestep, cond: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        if self.exposure_embedding is not None:  # E(e_k) "in the same way as time embedding" (eq. 4)
            emb = emb + self.exposure_embedding(torch.as_tensor(exposure, device=sample.device).reshape(-1).expand(b),
                                                sample.dtype)
        x = self.conv_in(torch.cat([sample, cond.to(sample.dtype)], dim=1))
        skips = [x]
        for level in self.down:
            for r, a in zip(level.resnets, level.attns):
                x = a(r(x, emb))
                skips.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
                skips.append(x)
        x = self.mid_res2(self.mid_attn(self.mid_res1(x, emb)), emb)
        for level in self.up:
            for r, a in zip(level.resnets, level.attns):
                x = a(r(torch.cat([x, skips.pop()], dim=1), emb))
            if level.upsample is not None:
                x = level.upsample(x)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(x)))
