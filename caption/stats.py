"""The ``stats`` backend: descriptions written from image statistics, no model.

It says WHERE the over- and under-exposed regions of the LDR video are (top / bottom / left / right / centre, across a
side, most of the frame), HOW LARGE they are (percent of the frame, growing or shrinking over the clip), WHAT COLOUR
the content under them is in the Reinhard-tonemapped HDR frames (named colours), and HOW BRIGHT it is (words, and the
HDR luminance in stops relative to the rest of the frame). It knows nothing about objects: it lets the pipeline run
end to end without weights, and its region summaries also ground the VLM prompt (:func:`region_hint`).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from hdr.color import luminance

STATS_VERSION = "stats/1"
MASK_THRESHOLD = 0.5  # the masks are EMA-smoothed in [0, 1]; a pixel belongs to a region at >= 0.5
MIN_AREA = 0.002  # regions smaller than 0.2% of the frame count as absent

# hue sectors in degrees (HSV of the displayed sRGB colour) -> name
_HUES = ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (195, "cyan"), (255, "blue"), (290, "purple"),
         (335, "pink"), (361, "red"))
_GREYS = ("white", "light grey", "grey", "dark grey", "black")
_HUE_NAMES = tuple(dict.fromkeys(n for _, n in _HUES))  # unique, in order
NAMES = np.array(_GREYS + tuple(f"{shade}{h}" for h in _HUE_NAMES for shade in ("", "dark ", "pale ")), dtype=object)
MAX_COLOUR_PIXELS = 65536  # colour statistics on an evenly strided subset: names of 4 x 720p frames in ~10 ms


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """Indices into :data:`NAMES` of displayed sRGB colours ``(N, 3)`` in [0, 1]: greys by value, chromatic
    colours by hue sector, 'dark' below value 0.35, 'pale' below saturation 0.4."""
    rgb = np.ascontiguousarray(np.asarray(rgb, np.float32).reshape(-1, 3))
    hsv = cv2.cvtColor(rgb[None], cv2.COLOR_RGB2HSV)[0]  # float input: H in [0, 360), S and V in [0, 1]
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    grey = np.select([v > 0.85, v > 0.6, v > 0.3, v > 0.12], [0, 1, 2, 3], 4)
    hue_of_sector = np.array([_HUE_NAMES.index(n) for _, n in _HUES])
    sector = np.minimum(np.searchsorted(np.array([b for b, _ in _HUES]), h, side="right"), len(_HUES) - 1)
    shade = np.where(v < 0.35, 1, np.where(s < 0.4, 2, 0))
    chrom = len(_GREYS) + 3 * hue_of_sector[sector] + shade
    return np.where((s < 0.2) | (v < 0.12), grey, chrom)


def colour_name(rgb: np.ndarray) -> np.ndarray:
    """Names of displayed sRGB colours ``(N, 3)`` in [0, 1]."""
    return NAMES[colour_codes(rgb)]


def dominant_colours(rgb: np.ndarray, max_names: int = 2, min_share: float = 0.2) -> list[str]:
    """The most frequent colour names of a set of displayed pixels (at least ``min_share`` of them each)."""
    rgb = np.asarray(rgb).reshape(-1, 3)
    if len(rgb) == 0:
        return []
    rgb = rgb[:: max(1, len(rgb) // MAX_COLOUR_PIXELS)]
    counts = np.bincount(colour_codes(rgb), minlength=len(NAMES))
    order = np.argsort(-counts, kind="stable")
    out = [str(NAMES[i]) for i in order[:max_names] if counts[i] / counts.sum() >= min_share]
    return out or [str(NAMES[order[0]])]


def brightness_word(value: float) -> str:
    """A word for the mean displayed (sRGB-encoded) luminance in [0, 1]."""
    for limit, word in ((0.85, "very bright"), (0.65, "bright"), (0.45, "moderately bright"), (0.25, "dim"),
                        (0.1, "dark")):
        if value >= limit:
            return word
    return "very dark"


def location(mask: np.ndarray) -> str:
    """Where a binary region ``(H, W)`` (or an average of several frames) lies in the frame, in words."""
    m = np.asarray(mask, np.float64)
    total = m.sum()
    if total <= 0:
        return "nowhere"
    h, w = m.shape
    cy = float((m.sum(1) * (np.arange(h) + 0.5)).sum() / total / h)
    cx = float((m.sum(0) * (np.arange(w) + 0.5)).sum() / total / w)
    wide = float((m.sum(0) > 0).mean())  # share of columns the region reaches
    tall = float((m.sum(1) > 0).mean())
    area = float((m > 0).mean())
    vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else "middle"
    horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else "centre"
    if area > 0.6 and wide > 0.8 and tall > 0.8:
        return "over most of the frame"
    if wide > 0.8 and vert != "middle":
        return f"across the {vert} of the frame"
    if tall > 0.8 and horiz != "centre":
        return f"along the {horiz} side of the frame"
    if wide > 0.8:
        return "in a band across the middle of the frame"
    if vert == "middle" and horiz == "centre":
        return "in the centre of the frame"
    if vert == "middle":
        return f"on the {horiz} of the frame"
    if horiz == "centre":
        return f"at the {vert} of the frame"
    return f"in the {vert}-{horiz} of the frame"


def region_summary(mask: np.ndarray) -> dict:
    """Area and location of one kind of region over the sampled frames; ``mask`` is ``(K, H, W)`` in [0, 1]."""
    binary = np.asarray(mask) >= MASK_THRESHOLD
    per_frame = binary.reshape(len(binary), -1).mean(1)
    area = float(per_frame.mean())
    present = area >= MIN_AREA
    union = binary.any(0)
    n_patches = 0
    if present:
        n, _, st, _ = cv2.connectedComponentsWithStats(union.astype(np.uint8), connectivity=8)
        n_patches = int((st[1:, cv2.CC_STAT_AREA] >= MIN_AREA * union.size).sum())
    return {
        "present": bool(present),
        "area": area,  # mean fraction of the frame over the sampled frames
        "area_first": float(per_frame[0]),
        "area_last": float(per_frame[-1]),
        "location": location(binary.mean(0)) if present else "nowhere",
        "patches": n_patches,
    }


def _pct(x: float) -> str:
    p = 100.0 * x
    return f"{p:.0f}%" if p >= 1 else "under 1%"


def _area_phrase(s: dict) -> str:
    text = f"{_pct(s['area'])} of the frame"
    a, b = s["area_first"], s["area_last"]
    if max(a, b) >= 0.01 and max(a, b) >= 1.5 * max(min(a, b), 1e-6):
        text += f", {'growing' if b > a else 'shrinking'} from {_pct(a)} to {_pct(b)} over the clip"
    return text


def _stops(x: float) -> str:
    n = int(round(x))
    return f"{n} stop" + ("" if n == 1 else "s")


def region_hint(s: dict) -> str:
    """A short measured summary of one region kind, for the VLM prompt."""
    if not s["present"]:
        return "none"
    parts = f"{s['location']}, {_area_phrase(s)}"
    if s["patches"] > 1:
        parts += f", in {s['patches']} separate patches"
    return parts


def describe(display: np.ndarray, over: np.ndarray, under: np.ndarray, hdr: np.ndarray | None = None) -> dict:
    """``{"overexposed", "underexposed", "scene"}`` for one clip from its sampled frames.

    display: (K, H, W, 3) uint8 Reinhard-tonemapped sRGB frames; over, under: (K, H, W) masks in [0, 1] of the LDR
    video; hdr: (K, H, W, 3) linear radiance (adds the region's median luminance in stops relative to the median of the
    rest of the frame when given).
    """
    disp = np.asarray(display, np.float32) / 255.0
    lum_disp = luminance(disp)  # luma of the displayed frame: what a viewer calls bright or dark
    lum_hdr = luminance(np.asarray(hdr, np.float64)) if hdr is not None else None
    out = {}
    for kind, mask in (("overexposed", over), ("underexposed", under)):
        s = region_summary(mask)
        if not s["present"]:
            out[kind] = "none"
            continue
        sel = np.asarray(mask) >= MASK_THRESHOLD
        colours = " and ".join(dominant_colours(disp[sel]))
        text = f"{colours} area {s['location']} ({brightness_word(float(lum_disp[sel].mean()))}, {_area_phrase(s)}"
        if s["patches"] > 1:
            text += f", {s['patches']} separate patches"
        if lum_hdr is not None:
            rest = lum_hdr[~sel]
            median = float(np.median(rest)) if rest.size else 0.0
            region = float(np.median(lum_hdr[sel]))
            if median > 0 and region > 0:
                stops = math.log2(region / median)
                if abs(stops) >= 0.5:
                    text += f", about {_stops(abs(stops))} {'above' if stops > 0 else 'below'} the rest of the frame"
        out[kind] = text + ")"
    colours = " and ".join(dominant_colours(disp.reshape(-1, 3)))
    scene = f"{brightness_word(float(lum_disp.mean()))} scene, mostly {colours}"
    if lum_hdr is not None:
        pos = lum_hdr[lum_hdr > 0]
        if pos.size:
            lo, hi = np.percentile(pos, [1, 99.9])
            if lo > 0:
                scene += f", about {_stops(math.log2(hi / lo))} of dynamic range"
    out["scene"] = scene
    return out

