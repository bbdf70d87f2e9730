"""DiffHDR inputs in diffusers' WanVACE layout, and the rectified-flow objective.

* Target: HDR radiance -> clamp [0, M] -> Log-Gamma (DiffHDR eq. 3, ``hdr.color.log_gamma``) -> [-1, 1] -> fp32 VAE
  -> normalised latent ``(z - latents_mean) / latents_std`` (what ``WanVACEPipeline`` denormalises before decoding).
* Control (VACE context, 96 channels, ``WanVACEPipeline.prepare_video_latents`` + ``prepare_masks``): the LDR video
  is linearised (``hdr.color.srgb_eotf``), Log-Gamma mapped, put in [-1, 1]; with the binary exposure mask m
  (over | under): 16 latent channels of ``v * (1 - m)`` ("inactive"), 16 of ``v * m`` ("reactive"), and 64 channels
  of m unshuffled 8x8 (space) and resampled nearest-exact to the latent frames.
* Flow matching in diffusers' convention: sigma is the noise level, x_sigma = (1 - sigma) x_data +
  sigma noise, the model predicts noise - x_data; DiffHDR eq. 4-5 is the same with t = 1 - sigma, x1 = x_data,
  x0 = noise (u = x1 - x0 = -(noise - x_data): the sign is the convention, the minimiser the same). The timestep fed
  to the transformer is 1000 sigma, as ``FlowMatchEulerDiscreteScheduler`` does.
"""
from __future__ import annotations

import torch

from hdr.color import LOG_GAMMA_G, LOG_GAMMA_M, log_gamma, srgb_eotf

VAE_TEMPORAL, VAE_SPATIAL = 4, 8


def _no_autocast(device):
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def hdr_to_unit(hdr: torch.Tensor, m: float = LOG_GAMMA_M, g: float = LOG_GAMMA_G) -> torch.Tensor:
    """Linear radiance -> Log-Gamma in [0, 1] (DiffHDR eq. 3; clamp at M)."""
    return log_gamma(hdr.float(), g=g, m=m)


def ldr_to_unit(ldr_srgb: torch.Tensor, m: float = LOG_GAMMA_M, g: float = LOG_GAMMA_G) -> torch.Tensor:
    """sRGB LDR in [0, 1] -> linear (inverse sRGB) -> Log-Gamma in [0, 1] (DiffHDR §3.3.2)."""
    return log_gamma(srgb_eotf(ldr_srgb.float().clamp(0.0, 1.0)), g=g, m=m)


def to_vae_video(frames01: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B, 3, T, H, W) in [-1, 1] (the VAE's input range, as VideoProcessor makes)."""
    return (frames01 * 2.0 - 1.0).permute(0, 2, 1, 3, 4).contiguous()


def _latent_stats(vae, device):
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=torch.float32).view(1, z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device, dtype=torch.float32).view(1, z, 1, 1, 1)
    return mean, inv_std


@torch.no_grad()
def encode(vae, video: torch.Tensor) -> torch.Tensor:
    """fp32 VAE encode (posterior mode, like the pipeline's sample_mode="argmax") and normalisation."""
    with _no_autocast(video.device):
        z = vae.encode(video.float()).latent_dist.mode()
        mean, inv_std = _latent_stats(vae, video.device)
        return (z.float() - mean) * inv_std


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> video (B, 3, T, H, W) in [-1, 1], fp32 (DiffHDR appendix C)."""
    with _no_autocast(latents.device):
        mean, inv_std = _latent_stats(vae, latents.device)
        return vae.decode(latents.float() / inv_std + mean, return_dict=False)[0]


def mask_channels(mask: torch.Tensor, patch_hw: int) -> torch.Tensor:
    """(B, T, H, W) mask -> (B, 64, F_lat, H/8, W/8): 8x8 space-to-channel, nearest-exact in time (the layout of
    ``WanVACEPipeline.prepare_masks``)."""
    b, t, h, w = mask.shape
    f = (t + VAE_TEMPORAL - 1) // VAE_TEMPORAL
    nh = h // (VAE_SPATIAL * patch_hw) * patch_hw
    nw = w // (VAE_SPATIAL * patch_hw) * patch_hw
    out = []
    for m in mask:
        m = m.reshape(t, nh, VAE_SPATIAL, nw, VAE_SPATIAL).permute(2, 4, 0, 1, 3).flatten(0, 1)
        out.append(torch.nn.functional.interpolate(m.unsqueeze(0), size=(f, nh, nw), mode="nearest-exact")[0])
    return torch.stack(out)


def control_latents(vae, control01: torch.Tensor, mask: torch.Tensor, patch_hw: int) -> torch.Tensor:
    """VACE context (B, 96, F_lat, H/8, W/8) from the control video (B, T, 3, H, W) in [0, 1] and the mask
    (B, T, H, W) in [0, 1] (binarised at 0.5 for the split, as the pipeline does)."""
    v = to_vae_video(control01)
    mb = (mask > 0.5).float().unsqueeze(1)                       # (B, 1, T, H, W)
    inactive = encode(vae, v * (1.0 - mb))
    reactive = encode(vae, v * mb)
    return torch.cat([inactive, reactive, mask_channels(mask.float(), patch_hw).to(inactive)], dim=1)


def gray_unit(like: torch.Tensor, level_srgb: float = 0.5) -> torch.Tensor:
    """A constant sRGB gray, linearised and Log-Gamma mapped (the public code's "gray" control)."""
    return ldr_to_unit(torch.full_like(like, level_srgb))


# ------------------------------------------------------------------------------------------------- flow matching

def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift: sigma = s u / (1 + (s - 1) u)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(n: int, generator: torch.Generator, fcfg: dict) -> torch.Tensor:
    """Noise levels for one step (CPU float32), per ``flow:`` config.

    * ``sampling: grid`` (default, Wan/DiffSynth training, which the public code uses): a uniform index into the
      ``num_train_timesteps`` shifted sigmas ``shift(linspace(1, sigma_min, N + 1)[:-1])``;
    * ``uniform``: u ~ U(0, 1), then shifted; ``logit_normal``: u = sigmoid(N(mean, std)), then shifted (SD3).
    """
    sampling = fcfg.get("sampling", "grid")
    shift = float(fcfg.get("shift", 5.0))
    if sampling == "grid":
        nt = int(fcfg.get("num_train_timesteps", 1000))
        grid = torch.linspace(1.0, float(fcfg.get("sigma_min", 0.0)), nt + 1)[:-1]
        idx = torch.randint(0, nt, (n,), generator=generator)
        return shift_sigma(grid[idx], shift)
    if sampling == "uniform":
        u = torch.rand(n, generator=generator)
    elif sampling == "logit_normal":
        u = torch.sigmoid(float(fcfg.get("logit_mean", 0.0)) + float(fcfg.get("logit_std", 1.0))
                          * torch.randn(n, generator=generator))
    else:
        raise ValueError(f"flow.sampling must be grid, uniform or logit_normal, got {sampling!r}")
    return shift_sigma(u, shift)


def loss_weights(sigmas: torch.Tensor, fcfg: dict) -> torch.Tensor:
    """Per-sample loss weights: ``weighting: none`` (1) or ``bell`` (DiffSynth's Wan training weight
    exp(-2 ((1000 sigma - N/2) / N)^2), shifted to 0 at its minimum over the grid and normalised to mean 1 there)."""
    w = fcfg.get("weighting", "none")
    if w == "none":
        return torch.ones_like(sigmas)
    if w != "bell":
        raise ValueError(f"flow.weighting must be none or bell, got {w!r}")
    nt = int(fcfg.get("num_train_timesteps", 1000))
    grid = shift_sigma(torch.linspace(1.0, float(fcfg.get("sigma_min", 0.0)), nt + 1)[:-1],
                       float(fcfg.get("shift", 5.0))) * nt

    def bell(x):
        return torch.exp(-2.0 * ((x - nt / 2) / nt) ** 2)

    y = bell(grid)
    return (bell(sigmas * nt) - y.min()) * (nt / (y - y.min()).sum())


def flow_pair(x_data: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor):
    """(x_sigma, target): x_sigma = (1 - sigma) x_data + sigma noise, target = noise - x_data."""
    s = sigmas.view(-1, *([1] * (x_data.dim() - 1))).to(x_data)
    return (1.0 - s) * x_data + s * noise, noise - x_data


def structured_caption(over: str, under: str) -> str:
    """DiffHDR §3.4.2 prompt format."""
    return f"[overexposed: {over}]; [underexposed: {under}]"
