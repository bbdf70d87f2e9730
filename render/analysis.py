"""HDRI analysis: a small luminance map, radiance statistics and robust brightest/darkest aim directions.

"Brightest" and "darkest" are regions, not texels: luminance is blurred on the sphere (Gaussian, sigma in degrees,
wrapping in longitude) before the arg-max/arg-min, so a single hot pixel cannot win over the sun and the darkest aim
is a dark area, not one black texel. The search is limited to an elevation band so the shadow aim avoids the tripod/
nadir, and texels with no signal (exactly 0, e.g. a black border) are ignored for the darkest search.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hdr.color import luminance
from render import camera

ANALYSIS_MAX_WIDTH = 1024
HIGHLIGHT = dict(kind="brightest", sigma_deg=2.0, elevation_range_deg=(-45.0, 80.0))
SHADOW = dict(kind="darkest", sigma_deg=6.0, elevation_range_deg=(-35.0, 60.0))


def luminance_map(img: np.ndarray, max_width: int = ANALYSIS_MAX_WIDTH,
                  chunk_rows: int = 256) -> tuple[np.ndarray, int]:
    """Rec.709 luminance area-averaged by an integer factor so the width is at most ``max_width``.

    Works in row chunks, so a 16k map needs no full-size temporary. Returns (map float32, factor).
    """
    h, w = img.shape[:2]
    f = max(1, math.ceil(w / max_width))
    while w % f or h % f:  # equirect maps are powers of two in practice; fall back to a divisor
        f -= 1
    out = np.empty((h // f, w // f), np.float32)
    step = max(f, (chunk_rows // f) * f)
    for r0 in range(0, h, step):
        lum = luminance(img[r0 : r0 + step].astype(np.float32, copy=False))
        rows = lum.shape[0] // f
        out[r0 // f : r0 // f + rows] = lum.reshape(rows, f, w // f, f).mean(axis=(1, 3))
    return out, f


def _box_wrap_rows(a: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Horizontal box filter with per-row radius (pixels), wrapping around in longitude."""
    h, w = a.shape
    out = np.empty_like(a)
    for r in range(h):
        k = int(min(radius[r], w // 2 - 1))
        if k <= 0:
            out[r] = a[r]
            continue
        ext = np.concatenate([a[r, -k - 1 :], a[r], a[r, :k]])
        c = np.cumsum(ext, dtype=np.float64)
        out[r] = (c[2 * k + 1 :] - c[: -2 * k - 1]) / (2 * k + 1)
    return out


def _box_cols(a: np.ndarray, k: int) -> np.ndarray:
    """Vertical box filter (radius k), edges clamped."""
    if k <= 0:
        return a
    ext = np.concatenate([np.repeat(a[:1], k + 1, 0), a, np.repeat(a[-1:], k, 0)])
    c = np.cumsum(ext, axis=0, dtype=np.float64)
    return ((c[2 * k + 1 :] - c[: -2 * k - 1]) / (2 * k + 1)).astype(a.dtype)


def sphere_blur(a: np.ndarray, sigma_deg: float) -> np.ndarray:
    """Approximate Gaussian blur on the sphere of an equirect map: three box passes per axis; the horizontal
    radius grows as 1/cos(elevation) so the kernel covers the same angle at every latitude."""
    h, w = a.shape
    px_per_deg = w / 360.0
    elev = (0.5 - (np.arange(h) + 0.5) / h) * math.pi
    # three boxes of radius k have variance 3 * ((2k+1)^2 - 1) / 12 = k(k+1): solve for sigma
    sigma_px = sigma_deg * px_per_deg
    k_v = max(0, round((-1 + math.sqrt(1 + 4 * sigma_px**2)) / 2))
    sig_h = sigma_px / np.maximum(np.cos(elev), 1e-3)
    k_h = np.round((-1 + np.sqrt(1 + 4 * sig_h**2)) / 2)
    out = a.astype(np.float32, copy=True)
    for _ in range(3):
        out = _box_wrap_rows(out, k_h).astype(np.float32)
        out = _box_cols(out, k_v)
    return out


@dataclass(frozen=True)
class Aim:
    kind: str  # "brightest" | "darkest"
    azimuth_deg: float
    elevation_deg: float
    direction: tuple[float, float, float]
    hdri_pixel: tuple[float, float]  # (col, row) in the full-resolution map, top-down, continuous
    blurred_luminance: float
    sigma_deg: float
    elevation_range_deg: tuple[float, float]
    analysis_size: tuple[int, int]

    def to_json(self) -> dict:
        return asdict(self)


def find_aim(lum: np.ndarray, factor: int, kind: str, sigma_deg: float, elevation_range_deg) -> Aim:
    """Arg-max (brightest) or arg-min (darkest) of the sphere-blurred luminance inside the elevation band."""
    h, w = lum.shape
    elev = 90.0 - (np.arange(h) + 0.5) / h * 180.0
    lo, hi = elevation_range_deg
    band = (elev >= lo) & (elev <= hi)
    if kind == "brightest":
        score = sphere_blur(lum, sigma_deg)
        score[~band] = -np.inf
        idx = int(np.argmax(score))
    elif kind == "darkest":
        valid = (lum > 0).astype(np.float32)
        num = sphere_blur(lum * valid, sigma_deg)
        den = sphere_blur(valid, sigma_deg)
        score = np.where(den > 0.5, num / np.maximum(den, 1e-12), np.inf)
        score[~band] = np.inf
        if not np.isfinite(score).any():  # no signal anywhere in the band: fall back to plain luminance
            score = sphere_blur(lum, sigma_deg)
            score[~band] = np.inf
        idx = int(np.argmin(score))
    else:
        raise ValueError(f"unknown aim kind {kind!r}")
    r, c = divmod(idx, w)
    col, row = (c + 0.5) * factor, (r + 0.5) * factor
    az, el = camera.equirect_to_azel(col, row, w * factor, h * factor)
    d = camera.direction(float(az), float(el))
    return Aim(
        kind=kind,
        azimuth_deg=math.degrees(float(az)),
        elevation_deg=math.degrees(float(el)),
        direction=tuple(float(x) for x in d),
        hdri_pixel=(float(col), float(row)),
        blurred_luminance=float(score.flat[idx]),
        sigma_deg=float(sigma_deg),
        elevation_range_deg=(float(lo), float(hi)),
        analysis_size=(int(w), int(h)),
    )


def aims(lum: np.ndarray, factor: int) -> dict[str, Aim]:
    """Both aims the camera programs need, with the default robustness settings."""
    return {"brightest": find_aim(lum, factor, **HIGHLIGHT), "darkest": find_aim(lum, factor, **SHADOW)}


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
