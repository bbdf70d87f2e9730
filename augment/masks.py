"""Exposure masks of LDR video (DiffHDR §3.4.1): where the frame is over- and under-exposed, smoothed in time.

``paper``: linearise sRGB, Rec.709 luminance, over = Y > 0.95, under = Y < 0.05, per-pixel EMA
M~_t = alpha M_t + (1 - alpha) M~_{t-1} with alpha = 0.7 (eq. 6), M~_0 = M_0.
"""
from __future__ import annotations

import numpy as np

from hdr.color import _xp, luminance, srgb_eotf

TAU_HIGH, TAU_LOW, EMA_ALPHA = 0.95, 0.05, 0.7


def _as_float(ldr):
    xp = _xp(ldr)
    if xp.__name__ == "torch":
        return ldr.float() / 255.0 if not ldr.is_floating_point() else ldr
    return ldr.astype(np.float32) / 255.0 if ldr.dtype == np.uint8 else ldr.astype(np.float32, copy=False)


def ema(masks, alpha: float = EMA_ALPHA):
    """Per-pixel exponential moving average over frames (axis 0), eq. 6."""
    xp = _xp(masks)
    out = [masks[0]]
    for t in range(1, masks.shape[0]):
        out.append(alpha * masks[t] + (1.0 - alpha) * out[-1])
    return xp.stack(out, 0)


_LINEAR_OF_CODE = srgb_eotf(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def _linearise(ldr):
    """sRGB -> linear; 8-bit input through an exact 256-entry table."""
    xp = _xp(ldr)
    if xp.__name__ == "torch" and ldr.dtype == xp.uint8:
        return xp.as_tensor(_LINEAR_OF_CODE, device=ldr.device)[ldr.long()]
    if xp.__name__ == "numpy" and ldr.dtype == np.uint8:
        return _LINEAR_OF_CODE[ldr]
    return srgb_eotf(_as_float(ldr))


def exposure_masks_paper(ldr, tau_high: float = TAU_HIGH, tau_low: float = TAU_LOW, alpha: float = EMA_ALPHA):
    """(over, under) float masks (T, H, W) in [0, 1] from 8-bit or [0, 1] sRGB frames (T, H, W, 3)."""
    y = luminance(_linearise(ldr))
    over = (y > tau_high) * 1.0
    under = (y < tau_low) * 1.0
    if _xp(y).__name__ == "numpy":
        over, under = over.astype(np.float32), under.astype(np.float32)
    return ema(over, alpha), ema(under, alpha)
