"""HDR-LDM (HDR-V-Diff §3.1): frozen SD VAE + exposure-aware MaxViT U-Net, trained with eq. 5, sampled with DDIM.

The HDR frame is mu-law tonemapped (hdr.color.mu_law) before the pretrained encoder; the LDR frame I_k is encoded
as is and its latent Enc(I_k) conditions the denoiser together with E(e_k).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler

from hdr.color import mu_law
from train.hdrvdiff.unet import HDRLDMUNet

# Stable Diffusion's training noise schedule (Rombach et al. 2022b), epsilon prediction.
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, prediction_type="epsilon")


def load_vae(spec, subfolder: str | None = None) -> AutoencoderKL:
    """A pretrained SD VAE from a local folder (``spec`` a path; nothing is downloaded) or a random one from a config
    dict (tests). The VAE is returned frozen in eval mode."""
    if isinstance(spec, (str, os.PathLike)):
        if not os.path.isdir(spec):
            raise FileNotFoundError(f"{spec}: VAE folder not found (expected a local diffusers AutoencoderKL folder)")
        kw = {"subfolder": subfolder} if subfolder else {}
        vae = AutoencoderKL.from_pretrained(os.fspath(spec), local_files_only=True, **kw)
    else:
        vae = AutoencoderKL(**dict(spec))
    vae.requires_grad_(False)
    return vae.eval()


class HDRLDM(nn.Module):
    """The VAE (frozen), the denoiser and the noise schedule; ``loss`` is eq. 5, ``sample`` the 10-step DDIM."""

    def __init__(self, vae: AutoencoderKL, unet: HDRLDMUNet, scheduler: dict | None = None):
        super().__init__()
        self.vae, self.unet = vae, unet
        self.train_scheduler = DDPMScheduler(**(scheduler or SD_SCHEDULER))
        self.sample_scheduler = DDIMScheduler.from_config(self.train_scheduler.config, set_alpha_to_one=False,
                                                          steps_offset=1)

    @property
    def scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, img01: torch.Tensor) -> torch.Tensor:
        """[0, 1] image (B, 3, H, W) -> scaled latent (posterior mode; the VAE is frozen)."""
        with torch.no_grad():
            x = (img01 * 2.0 - 1.0).to(self.vae.dtype)
            return self.vae.encode(x).latent_dist.mode().float() * self.scale

    def encode_hdr(self, hdr01: torch.Tensor) -> torch.Tensor:
        """z^{H_k}: HDR normalised to [0, 1] -> mu-law tonemap (tonemapping strategy, §3.1) -> latent."""
        return self.encode(mu_law(hdr01).clamp(0.0, 1.0))

    def loss(self, hdr01, ldr, exposure, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 5: || eps - eps_theta(z_t, Enc(I_k), E(e_k), t) ||^2 with t uniform and eps ~ N(0, I)."""
        z0, cond = self.encode_hdr(hdr01), self.encode(ldr)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)  # drawn on the CPU: device-independent
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (z0.shape[0],),
                          generator=generator).to(z0.device)
        zt = self.train_scheduler.add_noise(z0, noise, t)
        return F.mse_loss(self.unet(zt, t, cond, exposure), noise)

    @torch.no_grad()
    def sample(self, ldr, exposure, steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM sampling (Song et al. 2020) of the HDR latent conditioned on Enc(I_k), E(e_k); 10 steps in the paper."""
        cond = self.encode(ldr)
        sched = DDIMScheduler.from_config(self.sample_scheduler.config)
        sched.set_timesteps(steps, device=cond.device)
        z = torch.randn(cond.shape, generator=generator).to(cond.device) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = self.unet(sched.scale_model_input(z, t), t, cond, exposure)
            z = sched.step(eps, t, z, eta=0.0).prev_sample
        return z

    def decoder_features(self, z: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Decode a scaled latent with the frozen SD decoder; returns (every up-block's output, decoded [0, 1] image).
        These are the multi-scale distribution-prior features F_d^s of §3.3."""
        feats = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: feats.append(out)) for b in self.vae.decoder.up_blocks]
        try:
            with torch.no_grad():
                img = self.vae.decode((z / self.scale).to(self.vae.dtype)).sample.float()
        finally:
            for h in hooks:
                h.remove()
        return [f.float() for f in feats], (img + 1.0) / 2.0

    def decoder_channels(self) -> list[int]:
        return list(reversed(self.vae.config.block_out_channels))
