"""Exposure masks of LDR video (DiffHDR §3.4.1): where the frame is over- and under-exposed, smoothed in time.

``paper``: linearise sRGB, Rec.709 luminance, over = Y > 0.95, under = Y < 0.05, per-pixel EMA
M~_t = alpha M_t + (1 - alpha) M~_{t-1} with alpha = 0.7 (eq. 6), M~_0 = M_0.

``diffhdr-code``: the public DiffHDR training code's masks (utils/color_utils.py exposure_masks_from_srgb +
stabilize_soft_mask, as called by diffsynth/data/hdr_video.py): soft masks from sRGB thresholds with softness 0.02,
a 3x3 closing, EMA (alpha 0.7) on the soft masks, then a 9x9 box blur (zeros outside the frame), a 9x9 opening and
a 9x9 closing, binarised at 0.2. See :func:`exposure_masks_code`.
"""
from __future__ import annotations

import cv2
import numpy as np

from hdr.color import _xp, luminance, srgb_eotf
from hdr.color import TRANSFERS as COLOR_TRANSFERS
from hdr.degrade import curves

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


# LDR encoding -> linear light: sRGB frames (single exposure), gamma-2.2 frames (alternating), and any response
# curve of hdr.degrade.curves by its spec; 8-bit codes through the curve's exact per-code luminance table
TRANSFERS = {name: eotf for name, (_, eotf) in COLOR_TRANSFERS.items()}


def linear_luminance(ldr, transfer: str = "srgb"):
    """Rec.709 luminance (..., H, W) of linearised LDR frames (..., H, W, 3); 8-bit input through exact tables."""
    xp = _xp(ldr)
    if xp.__name__ == "numpy" and ldr.dtype == np.uint8:
        t = curves.luma_of_code(transfer)
        y = t[0][ldr[..., 0]]
        y += t[1][ldr[..., 1]]
        y += t[2][ldr[..., 2]]
        return y
    if xp.__name__ == "torch" and ldr.dtype == xp.uint8:
        t = xp.as_tensor(curves.luma_of_code(transfer), device=ldr.device)
        i = ldr.long()
        return t[0][i[..., 0]] + t[1][i[..., 1]] + t[2][i[..., 2]]
    if transfer in TRANSFERS:
        return luminance(TRANSFERS[transfer](_as_float(ldr)))
    return luminance(xp.as_tensor(curves.decode(transfer, _as_float(ldr).cpu().numpy()), dtype=xp.float32,
                                  device=ldr.device) if xp.__name__ == "torch"
                     else curves.decode(transfer, _as_float(ldr)).astype(np.float32))


def exposure_masks_paper(ldr, tau_high: float = TAU_HIGH, tau_low: float = TAU_LOW, alpha: float = EMA_ALPHA,
                         transfer: str = "srgb"):
    """(over, under) float masks (T, H, W) in [0, 1] from 8-bit or [0, 1] LDR frames (T, H, W, 3) (eq. 6)."""
    y = linear_luminance(ldr, transfer)
    over = (y > tau_high) * 1.0
    under = (y < tau_low) * 1.0
    if _xp(y).__name__ == "numpy":
        over, under = over.astype(np.float32), under.astype(np.float32)
    return ema(over, alpha), ema(under, alpha)


# The public code's settings (diffsynth/data/hdr_video.py): thresholds on sRGB luma, soft band, channel-clip tolerance.
CODE_OVER_SRGB, CODE_UNDER_SRGB, CODE_SOFTNESS, CODE_CLIP_EPS = 0.95, 0.05, 0.02, 0.02
CODE_SMOOTH, CODE_OPEN_CLOSE, CODE_CLOSE_SOFT, CODE_BINARIZE = 9, 9, 3, 0.2


def _smoothstep(x, e0: float, e1: float):
    t = _clip01((x - e0) / (e1 - e0))
    return t * t * (3.0 - 2.0 * t)


def _clip01(x):
    return x.clamp(0.0, 1.0) if _xp(x).__name__ == "torch" else np.clip(x, 0.0, 1.0)


def _morph(m, op: str, k: int):
    """"dilate" / "erode" / "blur" (k x k, box; zeros outside the frame, divided by k^2) of (H, W) masks. The max/min
    filters ignore the outside of the frame, as torch's max_pool2d does."""
    if _xp(m).__name__ == "torch":
        import torch.nn.functional as F

        x, r = m[None, None], k // 2
        if op == "blur":  # count_include_pad: zeros outside
            return F.avg_pool2d(F.avg_pool2d(x, (1, k), 1, (0, r)), (k, 1), 1, (r, 0))[0, 0]
        sign = 1.0 if op == "dilate" else -1.0  # a k x k max filter is a 1 x k one after a k x 1 one
        return sign * F.max_pool2d(F.max_pool2d(sign * x, (1, k), 1, (0, r)), (k, 1), 1, (r, 0))[0, 0]
    kernel = np.ones((k, k), np.uint8)
    if op == "dilate":
        return cv2.dilate(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=-np.inf)
    if op == "erode":
        return cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
    return cv2.boxFilter(m, -1, (k, k), normalize=True, borderType=cv2.BORDER_CONSTANT)


def _close(m, k):
    return _morph(_morph(m, "dilate", k), "erode", k)


def _is_u8(x) -> bool:
    return str(x.dtype).endswith("uint8")


def _cmp(srgb, op: str, v: float):
    """``srgb >= v`` or ``srgb <= v`` for sRGB in [0, 1], or for 8-bit codes (compared as code / 255, exactly)."""
    if _is_u8(srgb):
        codes = np.arange(256, dtype=np.float32) / np.float32(255)
        hits = np.nonzero(codes >= v)[0] if op == ">=" else np.nonzero(codes <= v)[0]
        return srgb >= int(hits[0]) if op == ">=" else srgb <= int(hits[-1])
    return srgb >= v if op == ">=" else srgb <= v


def _count3(b):
    """Number of true channels of a boolean (..., 3) array."""
    if _xp(b).__name__ == "torch":
        return b.sum(-1)
    v = b.view(np.uint8)
    return v[..., 0] + v[..., 1] + v[..., 2]


def soft_masks_code(srgb):
    """Soft (over, under) masks (H, W) of one sRGB frame (H, W, 3), 8-bit or in [0, 1], as the public code computes
    them (utils/color_utils.py exposure_masks_from_srgb with hdr_video.py's arguments)."""
    xp = _xp(srgb)
    y = linear_luminance(srgb)
    e = [float(srgb_eotf(np.float64(v))) for v in (CODE_OVER_SRGB - CODE_SOFTNESS, CODE_OVER_SRGB + CODE_SOFTNESS,
                                                   max(0.0, CODE_UNDER_SRGB - CODE_SOFTNESS),
                                                   CODE_UNDER_SRGB + CODE_SOFTNESS)]
    f32 = (lambda a: a.float()) if xp.__name__ == "torch" else (lambda a: a.astype(np.float32))
    near1 = _count3(_cmp(srgb, ">=", 1.0 - CODE_CLIP_EPS)) >= 2  # at least two channels near clipping
    all_low = _count3(_cmp(srgb, "<=", CODE_UNDER_SRGB)) >= 3
    over = _clip01(0.7 * _smoothstep(y, e[0], e[1]) + 0.3 * f32(near1))
    under = _clip01(0.7 * (1.0 - _smoothstep(y, e[2], e[3])) + 0.3 * f32(all_low))
    return _clip01(_close(f32(over), CODE_CLOSE_SOFT)), _clip01(_close(f32(under), CODE_CLOSE_SOFT))


def _stabilise(soft, prev, alpha: float = EMA_ALPHA):
    """EMA on the soft mask (state = the EMA before smoothing), then 9x9 box blur, opening and closing."""
    state = soft if prev is None else alpha * soft + (1.0 - alpha) * prev
    m = _morph(state, "blur", CODE_SMOOTH)
    m = _morph(_morph(m, "erode", CODE_OPEN_CLOSE), "dilate", CODE_OPEN_CLOSE)  # opening
    return _clip01(_close(m, CODE_OPEN_CLOSE)), state


def exposure_masks_code(ldr, binarize: float | None = CODE_BINARIZE, alpha: float = EMA_ALPHA):
    """(over, under) masks (T, H, W) of 8-bit or [0, 1] sRGB frames (T, H, W, 3), the public DiffHDR code's way:
    smoothed soft masks, binarised at ``binarize`` (0.2) into {0, 1}, or soft when ``binarize`` is None. ``alpha``
    is the EMA weight of the current frame (1: no temporal smoothing)."""
    xp = _xp(ldr)
    srgb = ldr if _is_u8(ldr) else _as_float(ldr)
    outs, states = ([], []), [None, None]
    for t in range(srgb.shape[0]):
        for i, soft in enumerate(soft_masks_code(srgb[t])):
            m, states[i] = _stabilise(soft, states[i], alpha)
            outs[i].append(m if binarize is None else (m > binarize) * 1.0)
    over, under = (xp.stack(o, 0) for o in outs)
    if xp.__name__ == "numpy":
        over, under = over.astype(np.float32), under.astype(np.float32)
    return over, under


MASK_MODES = {"paper": exposure_masks_paper, "diffhdr-code": exposure_masks_code}


def exposure_masks(ldr, mode: str = "paper", transfer: str = "srgb", alpha: float = EMA_ALPHA):
    """(over, under) masks (T, H, W) of LDR frames by the named mode (a preset's ``mask_mode``). Gamma-2.2 frames
    (alternating exposures) always get the paper's masks on their own linearisation: the public code's thresholds
    are defined on sRGB. ``alpha`` is the EMA weight of eq. 6 (0.7 in both; 1 turns the smoothing off). Torch
    tensors on the CPU take the numpy path; on a GPU the torch ops run."""
    if _xp(ldr).__name__ == "torch" and ldr.device.type == "cpu":  # numpy's (OpenCV) path, zero-copy
        import torch

        over, under = exposure_masks(ldr.detach().numpy(), mode, transfer, alpha)
        return torch.from_numpy(over), torch.from_numpy(under)
    if transfer != "srgb":
        return exposure_masks_paper(ldr, transfer=transfer, alpha=alpha)
    return MASK_MODES[mode](ldr, alpha=alpha)
