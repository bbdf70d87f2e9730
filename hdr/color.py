"""Colour math shared by all stages. Functions take numpy arrays or torch tensors alike.

Values are scene-linear Rec.709 unless a name says otherwise.
"""
from __future__ import annotations

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
