"""The direct engine: what Cycles renders for a camera at the origin looking at an environment map, computed as an
equirectangular-to-perspective resampling, in numpy or torch (CPU or GPU).

It reproduces, as Cycles does it and measured against Cycles in the tests:
- the camera model of :mod:`render.camera` (36 mm sensor, AUTO fit, Blender XYZ Euler);
- Cycles' environment lookup u = 0.5 - atan2(y, x) / 2pi, v = 1 - acos(z) / pi with bilinear interpolation that
  wraps in longitude and across the poles (row -1 is row 0 half a turn away);
- Cycles' pixel filter: Blackman-Harris with the scene's filter size 1.5 px, which Cycles doubles for this filter
  (``filter_table`` in Cycles' film code), so the footprint is 3 px; Cycles draws the x and y offsets independently
  (a separable filter). Here it is integrated deterministically on a grid of k x k samples per pixel that
  neighbouring pixels share, i.e. the noise-free expectation of Cycles' estimate; k comes from ``QUALITY_RULE`` by
  default (or from ``samples``: k = round(sqrt(samples)) at least);
- anti-aliasing when a pixel covers many texels: the number of texels per output pixel (at the image centre, in
  texels of the equator) is computed per frame and recorded in clip.json; the sample grid is refined until samples
  are at most 0.2 texel apart (k <= 16), and beyond that the map is prefiltered by 2x2 box averaging (mip levels);
- signed maps: with ``negative_texels="signed"`` (the default) the pixels hold the decoded map's negative texels
  (ringing of lossy DWAA/DWAB around suns). Every step above is linear, so the frame is the pixel filter's
  expectation of the signed map; :mod:`render.job` clamps each output pixel at 0 afterwards (and records it).

Memory: the map stays float32; mip levels are built on demand (+33% at most); the torch path also keeps the level in
use as a padded channels-first copy for ``grid_sample`` (+100%); everything else is frame-sized (bands of rows).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

import hdr
from render import camera
from render.engines.base import Engine, EngineError, HdriSource
from render.programs import ClipPlan

FILTER_SIZE_PX = 1.5  # Blender's render.filter_size
FILTER_WIDTH_PX = 2 * FILTER_SIZE_PX  # Cycles doubles it for Blackman-Harris


def blackman_harris(x, width: float = FILTER_WIDTH_PX):
    """Cycles' Blackman-Harris pixel filter at offset ``x`` (pixels), |x| <= width / 2."""
    v = 2 * np.pi * (np.asarray(x, dtype=np.float64) / width + 0.5)
    return 0.35875 - 0.48829 * np.cos(v) + 0.14128 * np.cos(2 * v) - 0.01168 * np.cos(3 * v)


def filter_weights(k: int, width: float = FILTER_WIDTH_PX) -> tuple[int, np.ndarray]:
    """Taps of the separable filter on a grid of k samples per pixel shared by neighbouring pixels.

    Sample j of the supersampled row (with a margin of M samples) sits at pixel coordinate (j + 0.5 - M) / k; output
    pixel p takes samples k*p + M + i, i = -M .. k + M - 1, at offsets (i + 0.5) / k - 0.5 from its centre.
    Returns (M, weights normalised to 1). k = 1 means no filter: the pixel centre, as Cycles does at 1 sample."""
    if k <= 1:
        return 0, np.ones(1)
    margin = math.ceil(width / 2 * k - 0.5)
    offs = (np.arange(-margin, k + margin) + 0.5) / k - 0.5
    w = np.where(np.abs(offs) < width / 2, blackman_harris(offs, width), 0.0)
    return margin, w / w.sum()


def texels_per_pixel(focal_mm: float, width: int, height: int, map_height: int) -> float:
    """Map texels (equatorial size, pi / map_height rad) spanned by one output pixel at the image centre."""
    sw, _ = camera.sensor_size(width, height)
    pixel_angle = sw / width / focal_mm
    return pixel_angle / (math.pi / map_height)


MAX_SAMPLE_SPACING_TEXELS = 0.2
MAX_K = 16


def sampling_for(tpp: float, k_min: int, k_max: int = MAX_K) -> tuple[int, int]:
    """(k, mip level) for a frame: k x k samples per pixel, at least ``k_min`` and enough that neighbouring samples are
    at most 0.2 texel apart, up to ``k_max``; beyond that the map is prefiltered by 2x2 box averaging (mip levels)
    until they are. Small bright sources (suns of a few texels) are then integrated, not aliased. Measured: box mips
    cost accuracy (1-3% in frame mean next to small suns), dense sampling costs time, hence the order."""
    if k_min <= 1:
        return 1, 0  # pixel centre, as Cycles at 1 sample
    level = 0
    while math.ceil(tpp / 2**level / MAX_SAMPLE_SPACING_TEXELS) > k_max:
        level += 1
    return max(k_min, math.ceil(tpp / 2**level / MAX_SAMPLE_SPACING_TEXELS)), level


QUALITY_SPACING_TEXELS = 0.25  # default sampling: samples at most this far apart on the full-resolution map ...
QUALITY_LEVEL0_SPACING_TEXELS = 1 / 3  # ... or, past the budget, the whole budget on it while they stay this close ...
QUALITY_MIP_SPACING_TEXELS = 0.5  # ... or, on a 2x2-box mip level (already prefiltered), at most this far apart
QUALITY_BUDGET = 9 * 1280 * 720  # ... and at most this many per frame (3x3 per pixel at 720p), at least 2x2 per pixel
QUALITY_RULE = (
    "per frame from the texels per pixel t at the image centre: k x k samples per pixel on the full-resolution map, "
    "k = max(2, ceil(t / 0.25)) (samples <= 0.25 texel apart), as long as the frame's samples stay within "
    "9 x 1280 x 720; beyond that the whole budget on the full-resolution map while it samples <= 1/3 texel apart, "
    "else the finest 2x2-box mip level that the whole budget samples <= 0.5 of its texels apart. Measured against "
    "the dense expectation next to a 1.5-texel sun of 1e5 on 1k-8k maps at 320x180: >= 55 dB mu-law PSNR, frame "
    "means within 0.82% (docs/render.md)"
)


def quality_sampling(tpp: float, width: int, height: int) -> tuple[int, int]:
    """(k, mip level) of the default sampling (``QUALITY_RULE``): a frame costs at most max(4 W H, 8.3 M) lookups
    whatever the map's size, a 16k map included. Past the budget the full-resolution map is kept while the budget
    samples it <= 1/3 texel apart: measured, a box-filtered level costs more accuracy next to a small sun than those
    sparser samples do (a 4k map at 320x180: 1.17% off in a frame mean on level 1, 0.49% on level 0 at 1/3 texel).
    Below the budget 1/3 texel is not enough: on the bundled maps at 128x64 it was 1.06% off (0.25: 0.65%)."""
    k_budget = max(2, math.isqrt(QUALITY_BUDGET // max(1, width * height)))
    k = max(2, math.ceil(tpp / QUALITY_SPACING_TEXELS))
    if k <= k_budget:
        return k, 0
    if math.ceil(tpp / QUALITY_LEVEL0_SPACING_TEXELS - 1e-9) <= k_budget:
        return k_budget, 0
    level = 1  # the finest prefiltered level the whole budget samples densely enough
    while math.ceil(tpp / 2**level / QUALITY_MIP_SPACING_TEXELS) > k_budget:
        level += 1
    return k_budget, level


class _Ops:
    """The few array operations that differ between numpy and torch; the formulas below are written once."""

    def __init__(self, backend: str, device: str):
        if backend == "auto":  # torch when it is installed (5-10x faster on the CPU), numpy otherwise
            try:
                import torch  # noqa: F401

                backend = "torch"
            except ImportError:
                backend = "numpy"
        self.backend = backend
        if backend == "torch":
            import torch

            self.xp = torch
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device("cuda" if device in ("cuda", "gpu") else device)
        elif backend == "numpy":
            if device not in ("cpu", "auto"):
                raise EngineError(f"the numpy backend runs on the CPU only (got --device {device}); "
                                  "use --backend torch")
            self.xp = np
            self.device = None
        else:
            raise EngineError(f"unknown direct-engine backend {backend!r} (auto, numpy or torch)")

    def asarray(self, a):
        if self.backend == "torch":
            return self.xp.as_tensor(a, dtype=self.xp.float32, device=self.device)
        return np.asarray(a, dtype=np.float32)

    def arange(self, n):
        return self.asarray(np.arange(n, dtype=np.float32))

    def to_index(self, a):
        return a.long() if self.backend == "torch" else a.astype(np.int64)

    def gather(self, flat, idx):
        if self.backend == "torch":
            return self.xp.index_select(flat, 0, idx.reshape(-1)).reshape(*idx.shape, 3)
        return np.take(flat, idx, axis=0)

    def to_numpy(self, a) -> np.ndarray:
        if self.backend == "torch":
            return a.detach().to("cpu").numpy().astype(np.float32, copy=False)
        return a.astype(np.float32, copy=False)

    def padded_chw(self, img):
        """torch: the map as (1, 3, H + 2, W + 2) with a one-texel border holding what Cycles' wrap-around reads
        (longitude wraps; across a pole the mirrored row half a turn away), for ``grid_sample``."""
        xp = self.xp
        chw = img.permute(2, 0, 1)
        w = chw.shape[2]
        top = xp.roll(chw[:, :1], w // 2, dims=2)
        bottom = xp.roll(chw[:, -1:], w // 2, dims=2)
        rows = xp.cat([top, chw, bottom], 1)
        return xp.cat([rows[:, :, -1:], rows, rows[:, :, :1]], 2).unsqueeze(0).contiguous()

    def downsample2(self, img):
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        x = img[:h, :w]
        return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) * 0.25


def _bilinear_wrap(ops: _Ops, flat, mh: int, mw: int, col, row):
    """Bilinear lookup at continuous texel coordinates (texel i has its centre at i + 0.5), wrapping in longitude and
    across the poles like Cycles."""
    xp = ops.xp
    x = col - 0.5
    y = row - 0.5
    x0 = xp.floor(x)
    y0 = xp.floor(y)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    x0 = ops.to_index(x0)
    y0 = ops.to_index(y0)

    near_pole = bool((y0 < 0).any()) or bool((y0 + 1 >= mh).any())

    def texel(yy, xx):
        if near_pole:  # across a pole: mirrored row, half a turn away
            over = (yy < 0) | (yy >= mh)
            yy = xp.where(yy < 0, -1 - yy, xp.where(yy >= mh, 2 * mh - 1 - yy, yy))
            xx = xp.where(over, xx + mw // 2, xx)
        return ops.gather(flat, yy * mw + xx % mw)

    top = texel(y0, x0) * (1 - fx) + texel(y0, x0 + 1) * fx
    bottom = texel(y0 + 1, x0) * (1 - fx) + texel(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _lookup(ops: _Ops, level, col, row):
    """Bilinear samples (h, w, 3) at continuous texel coordinates; torch uses ``grid_sample`` on the padded map."""
    if ops.backend == "torch":
        import torch.nn.functional as F

        padded = level["padded"]
        ph, pw = padded.shape[2], padded.shape[3]
        grid = ops.xp.stack([(col + 1) / pw * 2 - 1, (row + 1) / ph * 2 - 1], -1)[None]
        out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0].permute(1, 2, 0)
    img = level["img"]
    mh, mw = int(img.shape[0]), int(img.shape[1])
    return _bilinear_wrap(ops, img.reshape(mh * mw, 3), mh, mw, col, row)


def _filter_axis(ops: _Ops, a, axis: int, n_out: int, k: int, margin: int, weights) -> object:
    """Weighted sum of the supersampled samples that fall under each output pixel's filter, along ``axis``: tap i of
    output pixel p is sample k p + i (a strided view), accumulated in place."""
    out = None
    for i, w in enumerate(weights):
        if w == 0:
            continue
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(i, i + k * n_out, k)
        part = a[tuple(idx)]
        if out is None:
            out = part * float(w)
        elif ops.backend == "torch":
            out.add_(part, alpha=float(w))
        else:
            out += part * np.float32(w)
    return out


BAND_SAMPLES = 1 << 21  # samples per band of output rows (bounds the temporaries at ~8 MB each)


def render_frame(ops: _Ops, level: dict, focal_mm: float, euler, width: int, height: int, k: int,
                 band_rows: int | None = None, rotation=None) -> object:
    """One frame (H, W, 3) from one map level: k x k samples per pixel on a grid shared by neighbouring pixels,
    weighted by the separable filter; processed in bands of output rows to bound memory. ``rotation``: the camera's
    rotation matrix, instead of the Euler triple (a sub-frame pose of motion blur).

    A sample's ray is R (x, y, -f); each of its world components is a column term plus a row term, so a band costs
    three broadcast additions, two ``atan2`` and a ``hypot`` per sample (acos(z / |d|) = atan2(hypot(x, y), z)).
    torch looks up with ``grid_sample`` (the map's padded copy, channels first), numpy gathers texels; both then sum
    the filter's taps as strided views, in place; torch copies each band channels-last into the frame."""
    xp = ops.xp
    mh, mw = int(level["img"].shape[0]), int(level["img"].shape[1])
    r = camera.euler_matrix(euler) if rotation is None else np.asarray(rotation, np.float64)
    sw, sh = camera.sensor_size(width, height)
    margin, weights = filter_weights(k)
    xs = ((np.arange(k * width + 2 * margin) + (0.5 - margin)) / k / width - 0.5) * sw  # sensor mm, right
    zs = -float(focal_mm)
    if band_rows is None:
        band_rows = max(1, BAND_SAMPLES // ((k * width + 2 * margin) * k))
    torch_mode = ops.backend == "torch"
    if torch_mode:
        import torch.nn.functional as F

        padded = level["padded"]
        ph, pw = padded.shape[2], padded.shape[3]
        # grid_sample's normalised coordinates straight from the angles: x = -azimuth mw / (pi pw) (texel col + 1 of
        # the padded map, centre at 0), y = polar 2 mh / (pi ph) + 2 / ph - 1
        gx_scale, gy_scale, gy_offset = -mw / (math.pi * pw), 2 * mh / (math.pi * ph), 2 / ph - 1
    col_terms = [ops.asarray(r[i, 0] * xs) for i in range(3)]
    bands, out = [], None
    for r0 in range(0, height, band_rows):
        r1 = min(height, r0 + band_rows)
        ys = (0.5 - (np.arange(k * (r1 - r0) + 2 * margin) + (k * r0 + 0.5 - margin)) / k / height) * sh
        dx, dy, dz = (col_terms[i][None, :] + ops.asarray(r[i, 1] * ys + r[i, 2] * zs)[:, None] for i in range(3))
        azimuth = xp.arctan2(dy, dx)
        polar = xp.arctan2(xp.hypot(dx, dy), dz)
        del dx, dy, dz
        if torch_mode:  # the grid's two coordinates copied into place (torch.stack along the last axis is slower)
            grid = xp.empty((1, *azimuth.shape, 2), dtype=azimuth.dtype, device=azimuth.device)
            grid[0, :, :, 0].copy_(azimuth.mul_(gx_scale))
            grid[0, :, :, 1].copy_(polar.mul_(gy_scale).add_(gy_offset))
            del azimuth, polar
            samples = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
            del grid
            samples = samples[0]  # (3, h, w): channels first
            if k > 1:
                samples = _filter_axis(ops, samples, 2, width, k, margin, weights)
                samples = _filter_axis(ops, samples, 1, r1 - r0, k, margin, weights)
            if out is None:
                out = xp.empty((height, width, 3), dtype=samples.dtype, device=samples.device)
            out[r0:r1].copy_(samples.permute(1, 2, 0))  # channels last, band by band (no concatenation)
            continue
        col = (0.5 - azimuth / (2 * math.pi)) * mw
        row = polar * (mh / math.pi)
        samples = _lookup(ops, level, col.astype(np.float32), row.astype(np.float32))
        if k > 1:
            samples = _filter_axis(ops, samples, 1, width, k, margin, weights)
            samples = _filter_axis(ops, samples, 0, r1 - r0, k, margin, weights)
        bands.append(samples)
    if torch_mode:
        return out
    return bands[0] if len(bands) == 1 else np.concatenate(bands, 0)


def _keys(plan: ClipPlan) -> tuple[list, list]:
    """The clip's camera keys (focal lengths, Euler triples) of frames 0, 1, ..."""
    return [fc.focal_mm for fc in plan.frames], [fc.rotation_euler for fc in plan.frames]


class DirectEngine(Engine):
    name = "direct"
    needs = "pixels"

    def __init__(self, samples: int | None = None, backend: str = "auto", device: str = "cpu", threads: int = 0,
                 max_samples: int = MAX_K * MAX_K, shutter: float = 0.0):
        self.samples = None if samples is None else int(samples)  # None: QUALITY_RULE; N: at least N per pixel
        self.shutter = float(shutter)
        self.k_max = max(1, math.isqrt(int(max_samples)))
        self.k = None if samples is None else max(1, round(math.sqrt(self.samples)))  # samples per pixel per axis
        self.ops = _Ops(backend, device)
        self.threads = int(threads)
        self._torch_threads = None  # the process's torch thread count before this engine set its own (close restores)
        if self.ops.backend == "torch" and self.threads > 0:
            self._torch_threads = self.ops.xp.get_num_threads()
            self.ops.xp.set_num_threads(self.threads)
        self._levels: list = []
        self._padded: dict = {}

    def info(self) -> dict:
        version = hdr.__version__
        if self.ops.backend == "torch":
            version += f" (torch {self.ops.xp.__version__})"
        if self.k is None:
            grid = QUALITY_RULE
        else:
            grid = f"at least {self.k}x{self.k}, up to {self.k_max}x{self.k_max} (per frame)"
        return {
            "name": self.name,
            "version": version,
            "backend": self.ops.backend,
            "device": str(self.ops.device or "cpu"),
            "samples": self.samples if self.samples is not None else "auto",
            "samples_per_pixel_grid": grid,
            "pixel_filter": "BLACKMAN_HARRIS, separable, on a sample grid shared by neighbouring pixels"
            if self.k is None or self.k > 1 else "none (pixel centre, like Cycles at 1 sample)",
            "filter_width_px": FILTER_WIDTH_PX,
            "env_interpolation": "bilinear, wraps in longitude and across the poles",
            "prefilter": "2x2 box mip levels (see samples_per_pixel_grid)" if self.k is None else
            f"2x2 box mip levels keep samples <= {MAX_SAMPLE_SPACING_TEXELS} texel apart",
            "map_values": "as given (signed where negative texels are kept); output pixels clamped at 0 by the job",
            "threads": self.threads or "auto",
            **({"motion_blur": f"the average of sub-frame renders at stratified shutter times, "
                               f"{camera.SHUTTER_SAMPLE_SPACING_PX} px of image motion apart at most "
                               f"(shutter_samples per frame)"} if self.shutter > 0 else {}),
        }

    def load(self, source: HdriSource) -> None:
        if source.pixels is None:
            raise EngineError("the direct engine needs the HDRI's pixels")
        self._levels = [self.ops.asarray(source.pixels)]  # numpy: no copy of a float32 map; torch: shares memory
        self._padded = {}
        self._level(0)  # torch: the padded copy of the map is part of loading it (as Blender loads its image)

    def _level(self, k: int) -> dict:
        while len(self._levels) <= k:
            prev = self._levels[-1]
            if min(prev.shape[:2]) < 2:
                break
            self._levels.append(self.ops.downsample2(prev))
        k = min(k, len(self._levels) - 1)
        level = {"img": self._levels[k]}
        if self.ops.backend == "torch":
            if k not in self._padded:
                self._padded = {k: self.ops.padded_chw(self._levels[k])}  # one padded level at a time
            level["padded"] = self._padded[k]
        return level

    def frame_extras(self, plan: ClipPlan, width: int, height: int) -> list[dict]:
        mh = int(self._levels[0].shape[0])
        out = []
        for fc in plan.frames:
            tpp = texels_per_pixel(fc.focal_mm, width, height, mh)
            if self.k is None:
                k, level = quality_sampling(tpp, width, height)
            else:
                k, level = sampling_for(tpp, self.k, max(self.k, self.k_max))
            extra = {"texels_per_pixel": tpp, "samples_per_pixel": k * k, "mip_level": level}
            if self.shutter > 0:
                extra["shutter_samples"] = camera.shutter_samples(*_keys(plan), fc.index, self.shutter, width, height)
            out.append(extra)
        return out

    def render(self, plan: ClipPlan, width: int, height: int, scratch: Path, only=None) -> Iterator[np.ndarray]:
        if not self._levels:
            raise EngineError("load() an HDRI before rendering")
        for fc, extra in zip(plan.frames, self.frame_extras(plan, width, height)):
            if only is not None and fc.index not in only:
                continue
            k = round(math.sqrt(extra["samples_per_pixel"]))
            level = self._level(extra["mip_level"])
            if self.shutter > 0:  # the expected exposure: the mean of sub-frame renders over the shutter
                poses = camera.shutter_poses(*_keys(plan), fc.index, self.shutter, extra["shutter_samples"])
                img = None
                for focal, rot in poses:
                    sub = render_frame(self.ops, level, focal, None, width, height, k, rotation=rot)
                    img = sub if img is None else img + sub
                img = img * (1.0 / len(poses))
            else:
                img = render_frame(self.ops, level, fc.focal_mm, fc.rotation_euler, width, height, k)
            yield self.ops.to_numpy(img)

    def close(self) -> None:
        self._levels = []
        self._padded = {}
        if self._torch_threads is not None:  # torch's thread count is process-wide: leave it as it was
            self.ops.xp.set_num_threads(self._torch_threads)
            self._torch_threads = None
