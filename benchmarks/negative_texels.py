"""Negative texels of lossy maps: frame means of each ``--negative-texels`` policy and engine against the reference.

A synthetic sun with Lanczos ringing (8.6% negative energy, like real DWAB-decoded PolyHaven maps) is rendered with
both engines at their default samples under ``signed`` (default), ``redistribute`` and ``clamp``; every frame's mean
radiance is compared with the reference: the signed map through the direct engine at >= 256 samples per pixel,
clamped at 0 afterwards. Prints, per output size, the range of frame-mean errors and the Blender clip seconds.

    python benchmarks/negative_texels.py            # 64x36, 160x90 and 640x360 (a few minutes on 2 cores)
    python benchmarks/negative_texels.py --quick    # 64x36 only
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve1d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdr.io import read_image, write_exr  # noqa: E402
from render.engines import HdriSource, get_engine  # noqa: E402
from render.job import NEGATIVE_TEXELS, HdriTask, RenderSettings, render_hdri  # noqa: E402
from render.programs import ClipPlan, FrameCamera  # noqa: E402

PROGRAMS = ("highlight_zoom_in", "rotation_000")  # zoomed onto the sun, and wide
FRAMES = 3


def ringing_sun_map(w: int = 256, sun: float = 2e4, az_deg: float = 10.0, el_deg: float = 8.0) -> np.ndarray:
    """A sky with a small sun disc (radius 1.5 texels) convolved with a Lanczos-3 kernel (scale 1.2 texels, taps
    summing to 1), whose side lobes ring below 0: ~8.5% of the map's positive energy is negative (the worst
    measured real DWAB map: 11%), down to -6% of the sun's peak, all next to the sun."""
    h = w // 2
    el = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    img = np.empty((h, w, 3))
    img[:] = (0.2 + 0.8 * np.clip(np.sin(el), 0, 1))[:, None, None] * np.array([0.55, 0.75, 1.0])
    img[el < 0] = (0.12, 0.1, 0.08)  # ground
    col = (0.5 - math.radians(az_deg) / (2 * math.pi)) * w
    row = (0.5 - math.radians(el_deg) / math.pi) * h
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    disc = ((yy - row) ** 2 + (xx - col) ** 2 <= 1.5**2).astype(float)
    x = np.arange(-4, 5) / 1.2
    taps = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
    taps /= taps.sum()
    rung = convolve1d(convolve1d(disc, taps, axis=0, mode="constant"), taps, axis=1, mode="wrap")
    img += rung[..., None] * sun * np.array([1.0, 0.9, 0.75])
    return img.astype(np.float32)


def reference_frames(signed: np.ndarray, meta: dict, width: int, height: int, backend: str = "numpy") -> list:
    """The signed map through the direct engine at 256+ samples per pixel (k >= 16 per axis), clamped afterwards."""
    eng = get_engine("direct", samples=256, max_samples=4096, backend=backend)
    eng.load(HdriSource(path=None, pixels=signed, width=signed.shape[1], height=signed.shape[0]))
    cams = tuple(FrameCamera(f["index"], f["focal_mm"], tuple(f["rotation_euler"])) for f in meta["frames"])
    return [np.maximum(f, 0.0) for f in eng.render(ClipPlan("ref", "ref", 0, cams), width, height, None)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only the 64x36 case")
    p.add_argument("--sizes", default=None, help="only these output sizes, e.g. 160x90 (comma-separated)")
    p.add_argument("--blender-samples", type=int, default=None,
                   help="Cycles samples (default: the render default, 16); separates Cycles' noise from the policy")
    args = p.parse_args(argv)
    cases = [(64, 36, 256)] + ([] if args.quick else [(160, 90, 1024), (640, 360, 1024)])
    if args.sizes:
        cases = [c for c in cases if f"{c[0]}x{c[1]}" in args.sizes.split(",")]
    ref_backend = "torch" if importlib.util.find_spec("torch") else "numpy"
    print(f"{'size':>18} {'engine':>8} {'policy':>13}  frame mean vs reference (min..max)  clip seconds")
    with tempfile.TemporaryDirectory(prefix="negbench-") as tmp:
        root = Path(tmp)
        for width, height, map_w in cases:
            signed = ringing_sun_map(map_w)
            (root / "in").mkdir(exist_ok=True)
            write_exr(root / "in" / f"sun{map_w}.exr", signed)
            for engine in ("direct", "blender"):
                for policy in NEGATIVE_TEXELS:
                    out = root / f"{engine}-{policy}-{width}"
                    s = RenderSettings(width=width, height=height, frames=FRAMES, engine=engine, programs=PROGRAMS,
                                       negative_texels=policy,  # each engine's default samples unless given
                                       **({"samples": args.blender_samples}
                                          if engine == "blender" and args.blender_samples else {}))
                    t0 = time.perf_counter()
                    res = render_hdri(HdriTask(str(root / "in"), f"sun{map_w}.exr", "sun", str(out), s))
                    seconds = time.perf_counter() - t0
                    if res.error:
                        print(f"{engine} {policy}: {res.error}")
                        return 1
                    errors = []
                    for program in PROGRAMS:
                        d = out / "sun" / program
                        meta = json.loads((d / "clip.json").read_text())
                        refs = reference_frames(signed, meta, width, height, ref_backend)
                        errors += [float(read_image(d / f["file"]).mean() / r.mean() - 1)
                                   for f, r in zip(meta["frames"], refs)]
                    frac = meta["hdri"]["sanitize"]["negative_energy"]["fraction_of_positive"]
                    print(f"{width}x{height} from {map_w}x{map_w // 2:<4} {engine:>8} {policy:>13}  "
                          f"{100 * min(errors):+6.2f}% .. {100 * max(errors):+6.2f}%"
                          f"                 {seconds:6.1f}   (negative energy {100 * max(frac):.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
