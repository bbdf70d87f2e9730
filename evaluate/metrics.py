"""Full-reference HDR metrics on arrays: PSNR_T / SSIM_T (mu-law), linear PSNR, PU21 PSNR, temporal stability.

Arrays are numpy arrays or torch tensors of scene-linear Rec.709 radiance, one frame ``(H, W, 3)`` or a clip
``(T, H, W, 3)`` (``dim_order="TCHW"`` for channels-first torch batches). Clips stay in their dtype (float32 from
EXR files); every frame is computed in float64 numpy, one frame at a time (an 81-frame 720p clip is ~0.9 GB in
float32).

Conventions (the ones the HDR video literature uses -- Kalantari & Ramamoorthi 2017/2019, Chen et al. 2021,
HDR-V-Diff §4 -- and documented in the README):

* **Normalisation.** Per frame, the ground truth is divided by its own maximum (so it lies in [0, 1]) and the
  prediction is divided by the *same* factor and then clipped to [0, 1]. A frame whose ground truth is all zero uses
  factor 1. PSNR_T, SSIM_T and PSNR-L are computed on these normalised frames, per frame, and averaged over frames.
* **PSNR_T / SSIM_T** use the mu-law tonemap ``hdr.color.mu_law`` with mu = 5000 on the normalised frames.
  SSIM_T is scikit-image's ``structural_similarity`` with the settings of Wang et al. 2004 (Gaussian window sigma 1.5,
  population covariance, K1 = 0.01, K2 = 0.03, data range 1) over the three channels, averaged.
* **PSNR cap.** Identical frames have MSE = 0 and PSNR = inf; every PSNR here is capped at ``PSNR_CAP_DB`` = 100 dB
  (reported as exactly 100.0), so means stay finite. 100 dB is far above any real reconstruction (float32 rounding
  of a [0, 1] image is ~150 dB only for bit-identical frames).
* **PU21 PSNR** encodes each RGB channel in absolute units (cd/m^2, see :func:`nits_scale`) with
  ``hdr.color.pu21_encode`` and uses the PU21 value at 10000 cd/m^2 as the peak (as pyfvvdp/pycvvdp's PU-PSNR do).
* **Temporal stability** (``temporal_t``, lower is better): the RMS difference between the frame-to-frame changes of
  prediction and ground truth, ``sqrt(mean((T(p[t+1]) - T(p[t])) - (T(g[t+1]) - T(g[t])))^2)``, in the mu-law
  domain, with ONE normalisation factor for the whole sequence (the ground truth's clip maximum; per-frame factors
  would themselves flicker). Flicker that the ground truth does not have raises it; a perfect prediction, or on
  a static shot any prediction whose error does not change over time, scores 0. No optical flow is needed: both
  sequences share the camera motion (the metric is blind to errors that move exactly with the content).
* **Absolute luminance** (PU21, PU21-PIQE, FovVideoVDP, ColorVideoVDP): scene-linear radiance has no absolute scale,
  so a clip is mapped to cd/m^2 by one factor k = ``peak_nits`` / A (default 1000 cd/m^2), the prediction scaled by
  the same k. The anchor A (:func:`anchor_luminance`, Rec.709 luminance of the frames clipped at 0) is, with
  ``anchor="per-frame"`` (the default, the public DiffHDR evaluation code's ``eval/cal_metrics.py``), the MEAN over
  frames of each frame's 99.9th percentile; with ``anchor="clip"`` one 99.9th percentile of all the clip's pixels.
  They differ when the highlight is in only some frames (a zoom onto the sun). A fixed factor (``nits_per_unit``,
  e.g. 100 = SDR reference white) can be given instead. An all-black anchor gives k = 1.
* **IQA tonemap** (CLIP-IQA, MUSIQ; :func:`iqa_tonemap`): ``"public"`` (default) is the public evaluation's rule, per
  frame: if 0 < P99.9(Y) < 1 the frame is only rescaled by 1 / P99.9(Y) (no compression); otherwise luminance
  Reinhard (``hdr.color.reinhard_luminance``); then clip to [0, 1] and the sRGB OETF. A frame whose P99.9 is below 1
  therefore scores the same at any absolute scale. ``"per-channel"`` is this toolkit's earlier reading of the
  paper's "Reinhard": ``x / (1 + x)`` per channel on the raw radiance (scale-dependent).
* **PU21-PIQE** (:func:`pu21_piqe`, no reference, lower is better): as the public code, per frame: Rec.709 luminance of
  the frame in cd/m^2 (factor k from the anchor of the SCORED frames themselves by default, since the metric has no
  reference; or from the ground truth), PU21 ``banding_glare``, negative values to 0, divided by 600 and clipped to
  [0, 1] (the public mapping into the PIQE input range), then PIQE (Venkatanath et al. 2015) through ``pypiqe`` (the
  MATLAB ``piqe`` port; the public code calls pyiqa's port of the same MATLAB algorithm, not compared numerically
  here, which pads frames whose sides are not multiples of 16 differently). Mean over frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hdr.color import (MU_LAW_MU, PU21_PEAK, luminance, mu_law, pu21_encode, reinhard_per_channel, reinhard_luminance,
                       srgb_oetf)

PSNR_CAP_DB = 100.0
DEFAULT_PEAK_NITS = 1000.0
DEFAULT_ANCHOR_PERCENTILE = 99.9
ANCHORS = ("per-frame", "clip")  # per-frame: the public DiffHDR evaluation code
DEFAULT_ANCHOR = "per-frame"
IQA_TONEMAPS = ("public", "per-channel")  # public: the public DiffHDR evaluation code
DEFAULT_IQA_TONEMAP = "public"
IQA_RESCALE_PERCENTILE = 99.9  # the public rule: rescale instead of Reinhard when P99.9(Y) < 1
PU21_PIQE_DIVISOR = 600.0  # public code: PIQE input = clip(max(PU21(Y), 0) / 600, 0, 1)
PIQE_UNIFORM = 100.0  # PIQE's score for a uniform (e.g. all-black) image


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    higher_is_better: bool
    description: str


# Every metric this package can report, in table order.
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("psnr_t", "dB", True, "PSNR of mu-law (mu=5000) tonemapped frames, GT-max normalised per frame"),
    MetricInfo("ssim_t", "", True, "SSIM (skimage, Gaussian sigma 1.5) of the same mu-law tonemapped frames"),
    MetricInfo("psnr_l", "dB", True, "PSNR of the normalised linear frames"),
    MetricInfo("psnr_pu21", "dB", True, "PSNR of PU21-encoded (banding_glare) RGB in cd/m^2, peak = PU21(10000)"),
    MetricInfo("temporal_t", "", False, "RMS mismatch of frame-to-frame changes, mu-law, per-sequence normalised"),
    MetricInfo("fvvdp", "JOD", True, "FovVideoVDP (pyfvvdp), 10 = no visible difference"),
    MetricInfo("cvvdp", "JOD", True, "ColorVideoVDP (pycvvdp), 10 = no visible difference"),
    MetricInfo("lpips", "", False, "LPIPS (AlexNet, local weights) on the mu-law tonemapped frames"),
    MetricInfo("pu21_piqe", "", False, "PIQE (pypiqe, no reference; 0 best, 100 worst) of the PU21-encoded luminance"
               " of the prediction"),
    MetricInfo("clipiqa", "", True, "CLIP-IQA (no reference, local CLIP) of the tonemapped prediction (iqa_tonemap)"),
    MetricInfo("musiq", "", True, "MUSIQ (no reference; pyiqa, local weights) of the tonemapped prediction"),
)}
CORE_METRICS = ("psnr_t", "ssim_t", "psnr_l", "psnr_pu21", "temporal_t")


# ---------------------------------------------------------------------------------------------------- array plumbing
def as_numpy(x, dim_order: str = "THWC") -> np.ndarray:
    """numpy float64 channels-last view of a numpy array / torch tensor (``dim_order`` THWC, HWC, TCHW or CHW)."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().to("cpu").float().numpy()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if dim_order in ("TCHW", "CHW"):
        x = np.moveaxis(x, -3, -1)
    elif dim_order not in ("THWC", "HWC"):
        raise ValueError(f"dim_order must be THWC, HWC, TCHW or CHW, not {dim_order!r}")
    if x.shape[-1] != 3 or x.ndim not in (3, 4):
        raise ValueError(f"expected (H, W, 3) or (T, H, W, 3) RGB frames, got shape {x.shape}")
    return x


def _clip(pred, gt, dim_order: str) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_numpy(pred, dim_order), as_numpy(gt, dim_order)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    if p.ndim == 3:
        p, g = p[None], g[None]
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise ValueError("NaN or inf in the frames (radiance must be finite)")
    return p, g


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0, cap: float = PSNR_CAP_DB) -> float:
    """10 log10(peak^2 / MSE), capped at ``cap`` dB (MSE = 0 -> exactly ``cap``)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    if mse <= 0.0:
        return float(cap)
    return float(min(10.0 * math.log10(peak * peak / mse), cap))


def normalise(pred_frame: np.ndarray, gt_frame: np.ndarray, scale: float | None = None):
    """(pred / s clipped to [0, 1], gt / s) in float64, with s = max(gt) (or ``scale``); s = 1 for an all-zero
    ground truth."""
    pred_frame, gt_frame = np.asarray(pred_frame, np.float64), np.asarray(gt_frame, np.float64)
    s = float(gt_frame.max()) if scale is None else float(scale)
    s = s if s > 0 else 1.0
    return np.clip(pred_frame / s, 0.0, 1.0), np.clip(gt_frame / s, 0.0, 1.0)


def tonemap_pair(pred_frame, gt_frame, mu: float = MU_LAW_MU, scale: float | None = None):
    """mu-law tonemapped (prediction, ground truth), normalised as in :func:`normalise`."""
    p, g = normalise(pred_frame, gt_frame, scale)
    return mu_law(p, mu), mu_law(g, mu)


# ---------------------------------------------------------------------------------------------------- frame metrics
def psnr_t_frame(pred_frame, gt_frame, mu: float = MU_LAW_MU) -> float:
    p, g = tonemap_pair(pred_frame, gt_frame, mu)
    return psnr(p, g)


def ssim_t_frame(pred_frame, gt_frame, mu: float = MU_LAW_MU) -> float:
    from skimage.metrics import structural_similarity

    p, g = tonemap_pair(pred_frame, gt_frame, mu)
    if min(p.shape[:2]) < 11:
        raise ValueError(f"SSIM_T needs frames of at least 11x11 pixels, got {p.shape[1]}x{p.shape[0]}")
    return float(structural_similarity(p, g, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def psnr_l_frame(pred_frame, gt_frame) -> float:
    p, g = normalise(pred_frame, gt_frame)
    return psnr(p, g)


def psnr_pu21_frame(pred_nits, gt_nits) -> float:
    """PSNR of PU21-encoded RGB; inputs already in cd/m^2 (see :func:`nits_scale`)."""
    return psnr(pu21_encode(np.asarray(pred_nits, np.float64)), pu21_encode(np.asarray(gt_nits, np.float64)),
                peak=PU21_PEAK)


# ---------------------------------------------------------------------------------------------------- clip metrics
def anchor_luminance(x, percentile: float = DEFAULT_ANCHOR_PERCENTILE, anchor: str = DEFAULT_ANCHOR,
                     dim_order: str = "THWC") -> float:
    """The anchor A of a clip (see the module docstring): ``per-frame`` = mean over frames of P_percentile(Y_t),
    ``clip`` = P_percentile over all pixels of the clip; Y = Rec.709 luminance of the frames clipped at 0."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, not {anchor!r}")
    x = as_numpy(x, dim_order)
    ys = [luminance(np.clip(f, 0.0, None)) for f in (x[None] if x.ndim == 3 else x)]  # one frame at a time
    if anchor == "clip":
        return float(np.percentile(np.stack(ys), percentile))
    return float(np.mean([np.percentile(y, percentile) for y in ys]))


def nits_scale(gt, peak_nits: float = DEFAULT_PEAK_NITS, percentile: float = DEFAULT_ANCHOR_PERCENTILE,
               nits_per_unit: float | None = None, dim_order: str = "THWC", anchor: str = DEFAULT_ANCHOR) -> float:
    """The factor k (cd/m^2 per radiance unit) for a clip: ``nits_per_unit`` if given, else
    ``peak_nits / anchor_luminance(gt, percentile, anchor)`` (1.0 for an all-black clip)."""
    if nits_per_unit is not None:
        return float(nits_per_unit)
    p = anchor_luminance(gt, percentile, anchor, dim_order)
    return float(peak_nits / p) if p > 0 else 1.0


def iqa_tonemap(frame, mode: str = DEFAULT_IQA_TONEMAP) -> np.ndarray:
    """One linear frame ``(H, W, 3)`` -> the sRGB [0, 1] float32 image that CLIP-IQA / MUSIQ score (see the module
    docstring). ``public``: rescale by 1 / P99.9(Y) when 0 < P99.9(Y) < 1, else ``reinhard_luminance``; ``per-channel``:
    ``reinhard_per_channel`` per channel. Either way clipped to [0, 1] before the sRGB OETF."""
    if mode not in IQA_TONEMAPS:
        raise ValueError(f"iqa tonemap must be one of {', '.join(IQA_TONEMAPS)}, not {mode!r}")
    x = np.clip(np.asarray(frame, np.float64), 0.0, None)
    if mode == "per-channel":
        lin = reinhard_per_channel(x)
    else:
        p = float(np.percentile(luminance(x), IQA_RESCALE_PERCENTILE))
        lin = x / p if 0.0 < p < 1.0 else reinhard_luminance(x)
    return np.clip(srgb_oetf(np.clip(lin, 0.0, 1.0)), 0.0, 1.0).astype(np.float32)


def pu21_piqe_input(nits_frame) -> np.ndarray:
    """The public code's PIQE input for one frame in cd/m^2: ``clip(max(PU21(Y), 0) / 600, 0, 1)``, (H, W) float32."""
    v = np.maximum(pu21_encode(luminance(np.clip(np.asarray(nits_frame, np.float64), 0.0, None))), 0.0)
    return np.clip(v / PU21_PIQE_DIVISOR, 0.0, 1.0).astype(np.float32)


def piqe_score(gray01) -> float:
    """PIQE (Venkatanath et al. 2015; 0 best, 100 worst) of one grey image through ``pypiqe``; a uniform image scores
    :data:`PIQE_UNIFORM`, as PIQE defines it. ``ImportError`` with a one-line hint when pypiqe is absent."""
    g = np.asarray(gray01, np.float32)
    if not g.size or float(g.max()) <= float(g.min()):
        return PIQE_UNIFORM
    try:
        from pypiqe import piqe
    except ImportError:
        raise ImportError("pu21_piqe needs pypiqe (pip install 'hdr-video-toolkit[evaluate]')") from None
    return float(piqe(g)[0])


def pu21_piqe(frames, k: float, dim_order: str = "THWC") -> float:
    """Mean PU21-PIQE over the frames of a clip of linear radiance, mapped to cd/m^2 by the factor ``k``."""
    x = as_numpy(frames, dim_order)
    x = x[None] if x.ndim == 3 else x
    return float(np.mean([piqe_score(pu21_piqe_input(f * k)) for f in x]))


def temporal_t(pred, gt, mu: float = MU_LAW_MU, dim_order: str = "THWC") -> float:
    """Temporal instability (lower is better; 0 = the prediction changes exactly as the ground truth does). NaN for
    a single frame. See the module docstring."""
    p, g = _clip(pred, gt, dim_order)
    if p.shape[0] < 2:
        return float("nan")
    scale = float(g.max())
    prev, total = None, 0.0
    for a, b in zip(p, g):  # one frame at a time
        cur = tonemap_pair(a, b, mu, scale=scale)
        if prev is not None:
            d = (cur[0] - prev[0]) - (cur[1] - prev[1])
            total += float(np.mean(d * d))
        prev = cur
    return float(np.sqrt(total / (p.shape[0] - 1)))


def dynamic_range_stops(gt, dim_order: str = "THWC") -> float | None:
    """Dynamic range of a ground-truth clip in stops, with the render stage's definition
    (``hdr.color.radiance_stats``: log2 of P99.9 over the P0.1 of the positive Rec.709 luminance)."""
    from hdr.color import radiance_stats

    return radiance_stats(luminance(as_numpy(gt, dim_order)))["dynamic_range_stops"]


def clip_metrics(pred, gt, metrics=CORE_METRICS, *, mu: float = MU_LAW_MU, peak_nits: float = DEFAULT_PEAK_NITS,
                 percentile: float = DEFAULT_ANCHOR_PERCENTILE, nits_per_unit: float | None = None,
                 dim_order: str = "THWC", anchor: str = DEFAULT_ANCHOR) -> dict[str, float]:
    """The core metrics of one clip (frame metrics averaged over frames). ``metrics`` selects from
    :data:`CORE_METRICS`; VDP and learned metrics live in :mod:`evaluate.vdp` / :mod:`evaluate.perceptual`."""
    unknown = set(metrics) - set(CORE_METRICS)
    if unknown:
        raise ValueError(f"not core metrics: {sorted(unknown)} (core: {', '.join(CORE_METRICS)})")
    p, g = _clip(pred, gt, dim_order)
    out: dict[str, float] = {}
    per_frame = {"psnr_t": lambda a, b: psnr_t_frame(a, b, mu), "ssim_t": lambda a, b: ssim_t_frame(a, b, mu),
                 "psnr_l": psnr_l_frame}
    for name in ("psnr_t", "ssim_t", "psnr_l"):
        if name in metrics:
            out[name] = float(np.mean([per_frame[name](a, b) for a, b in zip(p, g)]))
    if "psnr_pu21" in metrics:
        k = nits_scale(g, peak_nits, percentile, nits_per_unit, anchor=anchor)
        out["psnr_pu21"] = float(np.mean([psnr_pu21_frame(a * k, b * k) for a, b in zip(p, g)]))
    if "temporal_t" in metrics:
        out["temporal_t"] = temporal_t(p, g, mu)
    return out
