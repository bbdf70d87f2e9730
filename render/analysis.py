"""HDRI analysis: a small luminance map, radiance statistics and robust brightest/darkest aim directions.

"Brightest" and "darkest" are regions, not texels: luminance is blurred on the sphere (Gaussian, sigma in degrees,
wrapping in longitude and across the poles) before the arg-max/arg-min, so a single hot pixel cannot win over the sun
and the darkest aim is a dark area, not one black texel.

The brightest region is searched over the whole sphere, zenith included (suns near noon sit above 80 degrees). The
equirect blur only proposes candidates there: near a pole its rows hold few effective texels, so each candidate is
refined on unit vectors by mean shift with a von Mises-Fisher kernel (kappa = 1 / sigma^2) on solid-angle-weighted
luminance, which converges to a mode of the luminance blurred on the sphere itself; a sun at the zenith gives exactly
(0, 0, 1), whose azimuth is undefined and recorded as such. The darkest search keeps an elevation band that avoids
the tripod/nadir, and ignores texels with no signal (exactly 0, e.g. a black border).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hdr.color import luminance
from hdr.io import row_solid_angle
from render import camera

ANALYSIS_MAX_WIDTH = 1024
HIGHLIGHT = dict(kind="brightest", sigma_deg=2.0, elevation_range_deg=(-90.0, 90.0))
SHADOW = dict(kind="darkest", sigma_deg=6.0, elevation_range_deg=(-35.0, 60.0))
CANDIDATES = 4  # brightest: coarse maxima refined on the sphere (at least 3 sigma apart)
KERNEL_REACH_SIGMA = 4.0  # the vMF kernel is cut at 4 sigma (weight exp(-8))
POLE_TOLERANCE_DEG = 0.01  # an aim this close to a pole is the pole: azimuth undefined, recorded as 0


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
    """Vertical box filter (radius k) that continues across the poles: row -1 - i is row i half a turn away."""
    h, w = a.shape
    k = min(k, h - 1)
    if k <= 0:
        return a
    top = np.roll(a[k::-1], w // 2, axis=1)  # rows -k-1 .. -1
    bottom = np.roll(a[h - 1 : h - 1 - k : -1], w // 2, axis=1)  # rows h .. h+k-1
    ext = np.concatenate([top, a, bottom])
    c = np.cumsum(ext, axis=0, dtype=np.float64)
    return ((c[2 * k + 1 :] - c[: -2 * k - 1]) / (2 * k + 1)).astype(a.dtype)


def sphere_blur(a: np.ndarray, sigma_deg: float) -> np.ndarray:
    """Approximate Gaussian blur on the sphere of an equirect map: three box passes per axis; the horizontal
    radius grows as 1/cos(elevation) (capped at half a turn) so the kernel covers the same angle at every latitude,
    the vertical passes continue across the poles. Poor within a few sigma of a pole: see :func:`sphere_mode`."""
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


def texel_grid(h: int, w: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (n, w, 3) of the texel centres of rows ``rows`` of an h x w equirect map, and each row's exact
    solid angle per texel, (2 pi / w) (sin(top edge) - sin(bottom edge))."""
    r = np.arange(h, dtype=np.float64)[rows]
    az, el = camera.equirect_to_azel((np.arange(w, dtype=np.float64) + 0.5)[None, :], (r + 0.5)[:, None], w, h)
    return camera.direction(az, el), row_solid_angle(h, w, rows)


def _kernel_sums(lum: np.ndarray, x: np.ndarray, sigma: float, grid=None):
    """sum(L Omega K d), sum(L Omega K), sum(Omega K) over the texels within the kernel's reach of unit vector x,
    with the von Mises-Fisher kernel K = exp(kappa (x.d - 1)), kappa = 1 / sigma^2 (a Gaussian of the angle for small
    angles). Only the rows whose elevation is within reach are visited; they are taken whole, so longitude wrap and
    the poles need no special case. ``grid``: :func:`texel_grid` of the whole map, if already computed."""
    h, w = lum.shape
    reach = KERNEL_REACH_SIGMA * sigma
    el_x = math.asin(max(-1.0, min(1.0, float(x[2]))))
    half = math.pi / h  # a texel's height: rows are selected by their centre
    r0 = max(0, math.floor((math.pi / 2 - (el_x + reach + half)) / math.pi * h))
    r1 = min(h, math.ceil((math.pi / 2 - (el_x - reach - half)) / math.pi * h))
    d, omega = texel_grid(h, w, slice(r0, r1)) if grid is None else (grid[0][r0:r1], grid[1][r0:r1])
    cos_t = d @ x
    k = np.where(cos_t >= math.cos(reach), np.exp((cos_t - 1.0) / sigma**2), 0.0) * omega[:, None]
    lk = lum[r0:r1].astype(np.float64) * k
    return np.tensordot(lk, d, axes=([0, 1], [0, 1])), float(lk.sum()), float(k.sum())


def sphere_mode(lum: np.ndarray, start, sigma_deg: float, max_iter: int = 60, tol_rad: float = 1e-7, grid=None):
    """Mean shift on the sphere from unit vector ``start``: x <- normalise(sum L Omega K(x, d) d). With the vMF kernel
    this is a fixed-point ascent of f(x) = sum L Omega K(x, d), i.e. it converges to a local maximum of the luminance
    blurred on the sphere (no equirect distortion, exact at the poles). Returns (unit vector, blurred luminance there
    = sum L Omega K / sum Omega K, iterations)."""
    sigma = math.radians(sigma_deg)
    x = np.asarray(start, dtype=np.float64)
    x = x / np.linalg.norm(x)
    it = 0
    for it in range(1, max_iter + 1):
        m, num, _ = _kernel_sums(lum, x, sigma, grid)
        n = float(np.linalg.norm(m))
        if num <= 0 or n == 0:
            break
        new = m / n
        step = float(np.linalg.norm(new - x))
        x = new
        if step < tol_rad:
            break
    _, num, den = _kernel_sums(lum, x, sigma, grid)
    return x, (num / den if den > 0 else 0.0), it


def _candidates(score: np.ndarray, dirs: np.ndarray, n: int, min_sep_rad: float) -> list[int]:
    """Flat indices of up to n maxima of ``score``, each at least ``min_sep_rad`` from the ones before."""
    s = score.copy()
    out = []
    cos_sep = math.cos(min_sep_rad)
    flat = dirs.reshape(-1, 3)
    for _ in range(n):
        idx = int(np.argmax(s))
        if not np.isfinite(s.flat[idx]):
            break
        out.append(idx)
        s.flat[flat @ flat[idx] >= cos_sep] = -np.inf
    return out


@dataclass(frozen=True)
class Aim:
    kind: str  # "brightest" | "darkest"
    azimuth_deg: float  # 0 when the aim is a pole (azimuth_defined false)
    elevation_deg: float
    direction: tuple[float, float, float]
    hdri_pixel: tuple[float, float]  # (col, row) in the full-resolution map, top-down, continuous
    blurred_luminance: float
    sigma_deg: float
    elevation_range_deg: tuple[float, float]
    analysis_size: tuple[int, int]
    azimuth_defined: bool = True
    method: str = ""
    refine_shift_deg: float = 0.0  # angle between the coarse arg-max texel and the refined aim

    def to_json(self) -> dict:
        return asdict(self)


def find_aim(lum: np.ndarray, factor: int, kind: str, sigma_deg: float, elevation_range_deg) -> Aim:
    """Arg-max (brightest) or arg-min (darkest) of the sphere-blurred luminance inside the elevation band; the
    brightest aim is refined on the sphere (:func:`sphere_mode`) from the best few coarse maxima."""
    h, w = lum.shape
    elev = 90.0 - (np.arange(h) + 0.5) / h * 180.0
    lo, hi = elevation_range_deg
    band = (elev >= lo) & (elev <= hi)
    refine_shift = 0.0
    if kind == "brightest":
        score = sphere_blur(lum, sigma_deg)
        score[~band] = -np.inf
        grid = texel_grid(h, w)
        dirs = grid[0].reshape(-1, 3)
        cands = _candidates(score, grid[0], CANDIDATES, 3 * math.radians(sigma_deg))
        best = None
        for idx in cands:
            x, value, _ = sphere_mode(lum, dirs[idx], sigma_deg, grid=grid)
            if not lo <= math.degrees(math.asin(min(1.0, max(-1.0, x[2])))) <= hi:  # left the band: keep the texel
                x, value = dirs[idx], score.flat[idx]
            if best is None or value > best[1] * (1 + 1e-9):  # ties (candidates meeting at one mode): the first
                best = (x, float(value))
        d, value = best
        refine_shift = math.degrees(math.acos(min(1.0, float(d @ dirs[cands[0]]))))
        method = (f"sphere_blur arg-max, {CANDIDATES} candidates >= 3 sigma apart, each refined by vMF mean shift on "
                  "unit vectors (solid-angle weighted); the best blurred luminance wins")
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
        r, c = divmod(idx, w)
        az, el = camera.equirect_to_azel((c + 0.5) * factor, (r + 0.5) * factor, w * factor, h * factor)
        d, value = camera.direction(float(az), float(el)), float(score.flat[idx])
        method = "sphere_blur arg-min of the mean over texels with signal, in the elevation band"
    else:
        raise ValueError(f"unknown aim kind {kind!r}")
    azimuth_defined = math.hypot(d[0], d[1]) >= math.sin(math.radians(POLE_TOLERANCE_DEG))
    if not azimuth_defined:  # a pole: the direction is exact, the azimuth is a recorded convention
        d = np.array([0.0, 0.0, math.copysign(1.0, d[2])])
    az = math.atan2(d[1], d[0]) if azimuth_defined else 0.0
    el = math.asin(max(-1.0, min(1.0, float(d[2]))))
    col, row = camera.direction_to_equirect(camera.direction(az, el), w * factor, h * factor)
    return Aim(
        kind=kind,
        azimuth_deg=math.degrees(az),
        elevation_deg=math.degrees(el),
        direction=tuple(float(x) for x in d),
        hdri_pixel=(float(col), float(row)),
        blurred_luminance=float(value),
        sigma_deg=float(sigma_deg),
        elevation_range_deg=(float(lo), float(hi)),
        analysis_size=(int(w), int(h)),
        azimuth_defined=bool(azimuth_defined),
        method=method,
        refine_shift_deg=float(refine_shift),
    )


def aims(lum: np.ndarray, factor: int) -> dict[str, Aim]:
    """Both aims the camera programs need, with the default robustness settings."""
    return {"brightest": find_aim(lum, factor, **HIGHLIGHT), "darkest": find_aim(lum, factor, **SHADOW)}
