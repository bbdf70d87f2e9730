"""LDR video formation (DiffHDR §3.1.2): exposure shift, heteroscedastic AR(1) camera noise, sRGB, clipping and
8-bit quantisation, as functions on numpy arrays or torch tensors of shape (T, H, W, 3) (frames first).

Randomness never comes from the array library: every draw is made by :func:`sample_params` / :func:`ar1_field`
from a numpy PCG64 generator seeded per (clip, augmentation), so numpy and torch, CPU and GPU, give the same LDR
frames and any clip can be re-made bit for bit from the parameters in its aug.json.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from hdr.color import _xp, srgb_eotf, srgb_oetf


@dataclass(frozen=True)
class Preset:
    """Every knob of the degradation. ``paper`` and ``diffhdr-code`` are the two named presets (see PRESETS)."""

    name: str
    exposure: str  # "uniform": Delta ~ U[lo, hi] stops; "choice": Delta from `exposure_choices`
    exposure_range: tuple[float, float] = (-2.0, 2.0)
    exposure_choices: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0)
    sigma_s_range: tuple[float, float] = (0.0, 8.5e-4)
    sigma_c_range: tuple[float, float] = (0.0, 1.5e-5)
    noise_probability: float = 1.0  # chance that a clip gets noise at all
    noise_scale: float = 1.0  # the noise formula runs on L / noise_scale and the noise is scaled back
    rho: float = 0.5  # AR(1) temporal correlation of the noise field
    quantize: str = "round"  # "round" (paper) or "truncate" ((x * 255).to(uint8) in the public code)
    mask_mode: str = "paper"  # exposure masks: "paper" or "diffhdr-code"
    notes: str = ""

    def with_overrides(self, **kw) -> "Preset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PRESETS = {
    "paper": Preset(
        name="paper", exposure="uniform", quantize="round", mask_mode="paper",
        notes="DiffHDR §3.1.2 taken literally: noise std <= ~8.5e-4 at L = 1, invisible after 8-bit quantisation",
    ),
    "diffhdr-code": Preset(
        name="diffhdr-code", exposure="choice", noise_probability=0.3, noise_scale=65536.0, quantize="truncate",
        mask_mode="diffhdr-code",
        notes="public DiffHDR training code: integer stops, noise on radiance / 65536, applied to 30% of clips "
              "(the dataset default; the training script uses 0.05), truncation",
    ),
}


@dataclass(frozen=True)
class Params:
    """Everything drawn for one augmentation (recorded in aug.json)."""

    preset: str
    seed: int
    exposure_stops: float
    noise: bool
    sigma_s: float
    sigma_c: float
    rho: float
    noise_scale: float
    quantize: str

    def to_json(self) -> dict:
        return asdict(self)


def sample_params(preset: Preset, seed: int) -> Params:
    """Draw the per-clip parameters: Delta, whether noise is applied, (sigma_s, sigma_c) shared over frames."""
    r = np.random.default_rng(seed)
    if preset.exposure == "uniform":
        stops = float(r.uniform(*preset.exposure_range))
    else:
        stops = float(preset.exposure_choices[int(r.integers(len(preset.exposure_choices)))])
    noise = bool(r.random() < preset.noise_probability)
    sigma_s = float(r.uniform(*preset.sigma_s_range))
    sigma_c = float(r.uniform(*preset.sigma_c_range))
    return Params(preset=preset.name, seed=int(seed), exposure_stops=stops, noise=noise,
                  sigma_s=sigma_s if noise else 0.0, sigma_c=sigma_c if noise else 0.0, rho=preset.rho,
                  noise_scale=preset.noise_scale, quantize=preset.quantize)


def ar1_field(shape, rho: float, seed: int) -> np.ndarray:
    """Unit-variance Gaussian fields eps_t = rho eps_{t-1} + sqrt(1 - rho^2) u_t (DiffHDR eq. 2), eps_0 = u_0,
    float32 (T, ...). Drawn from its own PCG64 stream (``seed``) frame by frame."""
    r = np.random.default_rng([int(seed), 1])
    out = np.empty(shape, np.float32)
    k = np.float32(math.sqrt(1.0 - rho * rho))
    r.standard_normal(out=out[0], dtype=np.float32)
    for t in range(1, shape[0]):
        r.standard_normal(out=out[t], dtype=np.float32)  # u_t, in place
        out[t] *= k
        out[t] += np.float32(rho) * out[t - 1]
    return out


def _like(ref, a: np.ndarray):
    """``a`` as the array type (and device) of ``ref``."""
    if type(ref).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(a, device=ref.device)
    return a


def exposure_shift(hdr, stops: float):
    """x * 2^Delta in linear space."""
    return hdr * float(2.0**stops)


def camera_noise(lin, sigma_s: float, sigma_c: float, eps, scale: float = 1.0):
    """n = sqrt(L sigma_s^2 + sigma_c^2) * eps (DiffHDR eq. 1) on L = lin / scale, returned in units of ``lin``."""
    xp = _xp(lin)
    L = lin / scale
    L = L.clamp(min=0.0) if xp.__name__ == "torch" else np.maximum(L, 0.0)
    return xp.sqrt(L * (sigma_s * sigma_s) + sigma_c * sigma_c) * eps * scale


def quantize8(srgb, mode: str = "round"):
    """[0, 1] -> uint8 by rounding (paper) or truncation (public code)."""
    xp = _xp(srgb)
    x = srgb * 255.0
    x = xp.floor(x + 0.5) if mode == "round" else xp.floor(x)
    if xp.__name__ == "torch":
        return x.clamp(0, 255).to(xp.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)


def _srgb_thresholds(mode: str) -> np.ndarray:
    """Linear values at which the 8-bit sRGB code steps up: code = #{thresholds <= linear value}."""
    k = np.arange(255, dtype=np.float64)
    edges = (k + 0.5) / 255.0 if mode == "round" else (k + 1.0) / 255.0
    return srgb_eotf(edges).astype(np.float32)


_THRESHOLDS = {m: _srgb_thresholds(m) for m in ("round", "truncate")}


def _bucket_table(t: np.ndarray) -> np.ndarray:
    """Code at the start of every float32 bucket of equal top-16 bits (sign, exponent, 7 mantissa bits) in [0, 1]."""
    starts = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    starts = np.where(np.isfinite(starts) & (starts >= 0), np.minimum(starts, 1.0), 0.0).astype(np.float32)
    return np.searchsorted(t, starts, side="right").astype(np.uint8)


_BUCKETS = {m: _bucket_table(t) for m, t in _THRESHOLDS.items()}
_NEXT = {m: np.append(t, np.float32(np.inf)).astype(np.float32) for m, t in _THRESHOLDS.items()}


def linear_to_srgb8(lin, mode: str = "round"):
    """sRGB OETF, clip to [0, 1] and 8-bit quantisation in one exact step: the code is the number of code
    boundaries (pre-computed in linear light) at or below the value. A 65536-entry table indexed by the top 16 bits
    of the float32 gives the code at the start of the value's bucket; a bucket is narrow enough (0.8%) that at most
    one more boundary can fall inside it, which one comparison settles. Identical on numpy and torch."""
    xp = _xp(lin)
    if xp.__name__ == "torch":
        x = lin.float().clamp(0.0, 1.0).contiguous()
        table = xp.as_tensor(_BUCKETS[mode], device=x.device).long()
        nxt = xp.as_tensor(_NEXT[mode], device=x.device)
        code = table[(x.view(xp.int32) >> 16).long()]
        return (code + (x >= nxt[code]).long()).to(xp.uint8)
    x = np.clip(lin, 0.0, 1.0).astype(np.float32, copy=False)
    code = _BUCKETS[mode][x.view(np.uint32) >> 16]
    code += x >= _NEXT[mode][code]
    return code


def degrade(hdr, params: Params):
    """HDR frames (T, H, W, 3) -> (uint8 sRGB frames, noisy linear frames before the OETF).

    Order (DiffHDR §3.1.2): exposure shift, noise, sRGB OETF, clip to [0, 1], 8-bit quantisation."""
    lin = exposure_shift(hdr, params.exposure_stops)
    if params.noise and (params.sigma_s > 0 or params.sigma_c > 0):
        eps = _like(hdr, ar1_field(tuple(hdr.shape), params.rho, params.seed))
        lin = lin + camera_noise(lin, params.sigma_s, params.sigma_c, eps, params.noise_scale)
    return linear_to_srgb8(lin, params.quantize), lin


def visible_noise_8bit(preset: Preset, L: float) -> float:
    """Noise std in 8-bit sRGB steps at linear level L, for the preset's largest sigmas (first-order propagation
    through the sRGB OETF)."""
    s_s, s_c = preset.sigma_s_range[1], preset.sigma_c_range[1]
    Ln = L / preset.noise_scale
    std = math.sqrt(Ln * s_s * s_s + s_c * s_c) * preset.noise_scale
    h = max(L * 1e-4, 1e-9)
    slope = float((srgb_oetf(np.array(L + h)) - srgb_oetf(np.array(max(L - h, 0.0)))) / (2 * h))
    return std * slope * 255.0
