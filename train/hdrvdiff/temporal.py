"""The temporal branch of HDR-V-Diff (§3.2): one TCAM shared by every frame of the window + the Restormer temporal
decoder; trained end to end with eq. 7 in stage ``tcam``, frozen in stage ``recon``."""
from __future__ import annotations

import torch

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from train.hdrvdiff.tcam import TCAM
from train.hdrvdiff.temporal_decoder import TemporalDecoder


class TemporalBranch(ModelMixin, ConfigMixin):
    """forward(L (B, N, 6, H, W), the window's middle frame as reference) -> (prediction in the mu-law domain
    (B, 3, H, W), temporal features [F_r^1 (1/1), F_r^2 (1/2), F_r^3 (1/4)])."""

    @register_to_config
    def __init__(self, n_frames: int = 3, in_channels: int = 6, channels: tuple = (64, 96, 128),
                 decoder_blocks: tuple = (2, 2, 2), decoder_heads: tuple = (1, 2, 4), deform_groups: int = 1,
                 match_radius: int = 2, match_patch: int = 3):
        super().__init__()
        if n_frames % 2 == 0:
            raise ValueError("TemporalBranch: n_frames must be odd (the middle frame is the reference)")
        self.tcam = TCAM(in_channels, tuple(channels), deform_groups, match_radius, match_patch)
        self.decoder = TemporalDecoder(n_frames, tuple(channels), tuple(decoder_blocks), tuple(decoder_heads))

    def forward(self, frames: torch.Tensor):
        b, n = frames.shape[:2]
        if n != self.config.n_frames:
            raise ValueError(f"TemporalBranch: got {n} frames, configured for {self.config.n_frames}")
        ref = frames[:, n // 2 : n // 2 + 1].expand_as(frames).reshape(b * n, *frames.shape[2:])
        aligned = self.tcam(ref, frames.reshape(b * n, *frames.shape[2:]))  # shared weights over the frames
        per_scale = [list(a.view(b, n, *a.shape[1:]).unbind(1)) for a in aligned]
        return self.decoder(per_scale)
