"""Synthetic equirectangular maps with what real ones have and the bundled 1k maps lack: texture down to the texel
(1/f noise, log-normal radiance), a horizon, and small suns of a few texels at any size up to 16k. Used by the
render benchmark and the direct engine's tests."""
from __future__ import annotations

import math

import numpy as np

SUNS = ((30.0, 35.0, 1.5), (120.0, 60.0, 3.0), (250.0, 10.0, 0.8))  # azimuth deg, elevation deg, radius (1k texels)


def detailed_map(width: int = 4096, seed: int = 0, suns=SUNS, sun_radiance: float = 3e4) -> np.ndarray:
    """float32 (width / 2, width, 3): exp(1.5 x octave noise, amplitude 0.7 per octave down to one texel) times a
    sky brighter toward the zenith over a dimmer ground, with discs of ``sun_radiance`` (radius scaled with the map
    width from 1k texels). Built row block by row block, so a 16k map needs its own 1.6 GB and little more."""
    import cv2

    h, w = width // 2, width
    r = np.random.default_rng(seed)
    octaves = [r.standard_normal((2 ** (o - 1), 2 ** o)).astype(np.float32) * 0.7**o
               for o in range(2, int(math.log2(w)) + 1)]
    img = np.empty((h, w, 3), np.float32)
    tint = np.float32([1.0, 0.9, 0.8])
    block = max(1, (1 << 22) // w)
    for r0 in range(0, h, block):
        r1 = min(h, r0 + block)
        tex = np.zeros((r1 - r0, w), np.float32)
        for n in octaves:  # bilinear upsampling of each octave, evaluated on this block's rows only
            ys = ((np.arange(r0, r1) + 0.5) * n.shape[0] / h - 0.5).astype(np.float32)
            xs = ((np.arange(w) + 0.5) * n.shape[1] / w - 0.5).astype(np.float32)
            mx, my = np.meshgrid(xs, ys)
            tex += cv2.remap(n, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        rows = (np.arange(r0, r1) + 0.5) / h
        sky = np.where(rows < 0.5, 1.0 + 2 * (0.5 - rows), 0.3).astype(np.float32)[:, None]
        img[r0:r1] = (np.exp(tex * 1.5) * sky)[..., None] * tint
    for az, el, radius in suns:
        cx, cy, rr = (0.5 - az / 360.0) % 1 * w, (90.0 - el) / 180.0 * h, radius * w / 1024
        y0, y1 = max(0, int(cy - rr - 1)), min(h, int(cy + rr + 2))
        yy, xx = np.mgrid[y0:y1, 0:w]
        dx = np.abs(xx + 0.5 - cx)
        d = np.hypot(np.minimum(dx, w - dx), yy + 0.5 - cy)
        img[y0:y1][d < rr] = sun_radiance
    return img
