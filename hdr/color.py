"""Colour math shared by all stages. Functions take numpy arrays or torch tensors alike.

Values are scene-linear Rec.709 unless a name says otherwise.

Reinhard's operator appears in three named forms, each with one use:
``reinhard_per_channel`` (x / (1 + x) per channel), ``reinhard_luminance`` (L / (1 + L) on Rec.709 luminance, hue
kept: the public DiffHDR evaluation's tonemap for CLIP-IQA/MUSIQ) and ``reinhard_display`` (key-scaled exposure,
then per channel, sRGB, 8 bit: what the caption stage and the manifest report show).
"""
from __future__ import annotations

import math

import numpy as np

# ITU-R BT.709 luma coefficients for linear RGB.
REC709_LUMA = (0.2126, 0.7152, 0.0722)


def _xp(x):
    """numpy or torch namespace for ``x`` (so one formula serves both)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    import numpy

    return numpy


def luminance(rgb):
    """Rec.709 relative luminance of ``(..., 3)`` linear RGB, shape ``(...)``."""
    r, g, b = REC709_LUMA
    return rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b


def srgb_oetf(linear):
    """Linear [0, 1] -> sRGB-encoded (IEC 61966-2-1 piecewise curve). Negative input maps to 0."""
    xp = _xp(linear)
    x = xp.clip(linear, 0.0, None) if xp.__name__ == "numpy" else linear.clamp(min=0.0)
    return xp.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055)


def srgb_eotf(encoded):
    """sRGB-encoded -> linear (inverse of :func:`srgb_oetf` on [0, 1])."""
    xp = _xp(encoded)
    x = xp.clip(encoded, 0.0, None) if xp.__name__ == "numpy" else encoded.clamp(min=0.0)
    return xp.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


# Alternating-exposure LDR frames (Chen et al. 2021; HDR-V-Diff eq. 1) are encoded with a pure power law.
LDR_GAMMA = 2.2


def gamma_oetf(linear, g: float = LDR_GAMMA):
    """Linear [0, 1] -> x^(1/g) (input clipped to [0, 1])."""
    return _clamp(linear, 0.0, 1.0) ** (1.0 / g)


def gamma_eotf(encoded, g: float = LDR_GAMMA):
    """Encoded [0, 1] -> x^g, the inverse of :func:`gamma_oetf` (input clipped to [0, 1])."""
    return _clamp(encoded, 0.0, 1.0) ** g


# The LDR encodings the toolkit writes, by name (aug.json records the name): (OETF linear -> encoded, EOTF back).
TRANSFERS = {
    "srgb": (srgb_oetf, srgb_eotf),
    "gamma2.2": (gamma_oetf, gamma_eotf),
}


def transfer_eotf(name: str):
    """The linearising function of a named LDR encoding (``"srgb"`` or ``"gamma2.2"``)."""
    try:
        return TRANSFERS[name][1]
    except KeyError:
        raise ValueError(f"unknown LDR transfer {name!r}; known: {', '.join(TRANSFERS)}") from None


def _clamp(x, lo=None, hi=None):
    xp = _xp(x)
    if xp.__name__ == "numpy":
        return xp.clip(x, lo, hi)
    return x.clamp(min=lo, max=hi)


def _log1p(x):
    return _xp(x).log1p(x)


# Log-Gamma (DiffHDR eq. 3): T(x) = (log(1 + g x) / log(1 + g M))^(1/g); public code g = 2.2, M = 65536, clamp at M.
LOG_GAMMA_G = 2.2
LOG_GAMMA_M = 65536.0


def log_gamma(x, g: float = LOG_GAMMA_G, m: float = LOG_GAMMA_M):
    """Linear radiance -> [0, 1] (DiffHDR eq. 3); radiance is clamped to [0, M] first."""
    x = _clamp(x, 0.0, m)
    return (_log1p(g * x) / math.log1p(g * m)) ** (1.0 / g)


def log_gamma_inverse(y, g: float = LOG_GAMMA_G, m: float = LOG_GAMMA_M):
    """Exact inverse of :func:`log_gamma` on [0, 1]: x = (exp(y^g log(1 + g M)) - 1) / g."""
    y = _clamp(y, 0.0, 1.0)
    return _xp(y).expm1(y**g * math.log1p(g * m)) / g


# mu-law tonemap (PSNR_T, HDR-V-Diff §4): T(x) = log(1 + mu x) / log(1 + mu), x normalised to [0, 1].
MU_LAW_MU = 5000.0


def mu_law(x, mu: float = MU_LAW_MU):
    return _log1p(mu * _clamp(x, 0.0, None)) / math.log1p(mu)


def mu_law_inverse(y, mu: float = MU_LAW_MU):
    return _xp(y).expm1(y * math.log1p(mu)) / mu


def reinhard_per_channel(x):
    """Reinhard's global operator x / (1 + x), per channel, on linear values (display-referred [0, 1) out)."""
    x = _clamp(x, 0.0, None)
    return x / (1.0 + x)


def reinhard_luminance(rgb, eps: float = 1e-6):
    """Reinhard's global operator on luminance (Reinhard et al. 2002, eq. 3, L_d = L / (1 + L)): each pixel's RGB
    (clipped at 0) is scaled by Y_d / (Y + eps), Y its Rec.709 luminance, so hue is kept and only luminance is
    compressed (values can exceed 1 in saturated colours: clip for display)."""
    rgb = _clamp(rgb, 0.0, None)
    y = luminance(rgb)
    return rgb * (y / (1.0 + y) / (y + eps))[..., None]


# Reinhard et al. 2002, eq. 1-2: scale radiance so the log-average luminance lands on the key a (0.18, "middle grey").
REINHARD_KEY = 0.18


def reinhard_display(hdr, key: float = REINHARD_KEY):
    """8-bit sRGB frames (numpy uint8) for looking at linear radiance ``(..., H, W, 3)``: one exposure for all the
    given frames (log-average luminance -> ``key``, so a clip's frames stay comparable and a global exposure change
    does not change the picture), :func:`reinhard_per_channel` per channel, the sRGB OETF. Returns (frames, scale)."""
    import numpy as np

    lum = np.asarray(luminance(hdr), np.float64)
    log_avg = float(np.exp(np.mean(np.log(1e-6 + np.clip(lum, 0.0, None)))))
    scale = key / max(log_avg, 1e-6)
    out = srgb_oetf(reinhard_per_channel(np.asarray(hdr, np.float32) * np.float32(scale)))
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), scale


# PU21 (Mantiuk & Azimi 2021, "PU21: A novel perceptually uniform encoding for adapting existing quality metrics for
# HDR", Picture Coding Symposium): V = p7 * (((p1 + p2 Y^p4) / (1 + p3 Y^p4))^p5 - p6), Y in cd/m^2 clamped to
# [0.005, 10000]. Parameters: the published 'banding_glare' set (the authors' recommended default) as in the reference
# code gfxdisp/pu21 (matlab/pu21_encoder.m, "updated on 06/02/2020"; also pycvvdp.utils.PU). Note: pyfvvdp 1.2.2 ships
# a different 'banding_glare' fit (566.6 instead of 595.4 at 10000 cd/m^2); this one is the published one.
PU21_BANDING_GLARE = (0.353487901, 0.3734658629, 8.277049286e-05, 0.9062562627, 0.09150303166, 0.9099517204,
                      596.3148142)
PU21_L_MIN = 0.005
PU21_L_MAX = 10000.0


def pu21_encode(y, params=PU21_BANDING_GLARE):
    """Absolute luminance (cd/m^2, numpy or torch) -> PU21 units (~0 at 0.005 cd/m^2, ~595 at 10000 cd/m^2)."""
    p1, p2, p3, p4, p5, p6, p7 = params
    yp = _clamp(y, PU21_L_MIN, PU21_L_MAX) ** p4
    return p7 * (((p1 + p2 * yp) / (1.0 + p3 * yp)) ** p5 - p6)


PU21_PEAK = float(pu21_encode(PU21_L_MAX))  # the PSNR peak of PU21-encoded images (value at 10000 cd/m^2)


def radiance_stats(lum: np.ndarray, max_channel: float | None = None) -> dict:
    """Summary statistics of a luminance sample (any shape)."""
    v = np.asarray(lum, dtype=np.float64).ravel()
    p = np.percentile(v, [0.1, 1, 50, 99, 99.9])
    pos = v[v > 0]
    lo = np.percentile(pos, 0.1) if pos.size else 0.0
    stats = {
        "basis": "Rec.709 luminance",
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "p0.1": float(p[0]),
        "p1": float(p[1]),
        "p50": float(p[2]),
        "p99": float(p[3]),
        "p99.9": float(p[4]),
        "frac_above_1": float((v > 1.0).mean()),
        "dynamic_range_stops": float(math.log2(p[4] / lo)) if lo > 0 and p[4] > 0 else None,
    }
    if max_channel is not None:
        stats["max_channel"] = float(max_channel)
    return stats
