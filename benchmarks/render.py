"""Render benchmark, in one run on this machine, through the same code path as ``render.run``:

1. Cycles (one animation job per clip): seconds per frame at 1280x720 and at a small size, EXR bytes per frame, and
   the projected core-hours and disk for the paper's dataset (~5400 clips x 81 frames);
2. Cycles vs the direct engine (numpy and torch-CPU) at 1280x720 at EQUAL QUALITY: every configuration is scored by
   mu-law PSNR against a converged Cycles reference (256 samples), and each direct configuration is compared with the
   cheapest Cycles sample count that reaches the same PSNR.

    python benchmarks/render.py [--frames 9] [--samples 1 16] [--skip-cycles-table]

Everything is measured in this one run, on this machine, through the same code path as ``render.run``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


# this file is named like the package it measures: make `import render` find the package, not this script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.metrics import psnr_t_frame  # noqa: E402
from hdr.io import read_image  # noqa: E402
from hdr.storage import Store  # noqa: E402
from hdr.dataset import layout  # noqa: E402
from render.hdri import default_hdri_dir  # noqa: E402
from render.job import HdriTask, RenderSettings, render_hdri  # noqa: E402

PAPER_CLIPS, PAPER_FRAMES = 5400, 81


def measure(width, height, samples, frames, threads, half=False, hdri="sunrise.exr", engine="blender",
            backend="numpy", program="rotation_000", keep=False) -> dict:
    out = tempfile.mkdtemp(prefix="bench-render-")
    try:
        s = RenderSettings(frames=frames, width=width, height=height, samples=samples, threads=threads,
                           half=half, programs=(program,), engine=engine, backend=backend)
        res = render_hdri(HdriTask(str(default_hdri_dir()), hdri, "bench", out, s))
        if res.error or res.count("rendered") != 1:
            raise SystemExit(f"benchmark render failed: {res}")
        meta = Store(out).read_json(f"bench/{program}/{layout.CLIP_JSON}")
        m = {
            "s_per_frame": meta["timing"]["seconds_per_frame"],
            "write_s_per_frame": meta["timing"]["write_seconds"] / frames,
            "bytes_per_frame": sum(f["bytes"] for f in meta["frames"]) / frames,
        }
        if keep:
            m["frames"] = [read_image(Path(out) / "bench" / program / f["file"]) for f in meta["frames"]]
        return m
    finally:
        shutil.rmtree(out, ignore_errors=True)


def mu_psnr(ref, test) -> float:
    """PSNR_T exactly as the evaluation computes it (``evaluate.metrics.psnr_t_frame``: mu-law, mu = 5000, both
    frames divided by the reference's maximum, the test frame clipped to [0, 1], capped at 100 dB)."""
    return psnr_t_frame(test, ref)


def equal_quality(frames: int, threads: int, hdri: str, program: str) -> None:
    w, h = 1280, 720
    print(f"\n== Cycles vs direct at {w}x{h}, equal quality ({hdri}, {program}, {frames} frames, {threads} threads)")
    ref = measure(w, h, 256, frames, threads, hdri=hdri, program=program, keep=True)
    rows = []
    for eng, backend, spp in ([("blender", "-", n) for n in (1, 4, 16, 64)]
                              + [("direct", b, n) for b in ("numpy", "torch") for n in (1, 4, 16)]):
        m = measure(w, h, spp, frames, threads, hdri=hdri, program=program, engine=eng,
                    backend=backend if backend != "-" else "numpy", keep=True)
        psnr = min(mu_psnr(r, f) for r, f in zip(ref["frames"], m["frames"]))
        ratio = max(abs(f.mean() / r.mean() - 1) for r, f in zip(ref["frames"], m["frames"]))
        rows.append((eng, backend, spp, m["s_per_frame"], psnr, ratio))
        print(f"{eng:>8} {backend:>6} {spp:>4} spp  {m['s_per_frame']:7.3f} s/frame  "
              f"mu-PSNR vs Cycles-256 {psnr:6.1f} dB  |mean-1| {100 * ratio:5.2f}%")
    frames_total = PAPER_CLIPS * PAPER_FRAMES
    cycles = [r for r in rows if r[0] == "blender"]
    for eng, backend, spp, t, psnr, _ in rows:
        if eng != "direct":
            continue
        match = next((c for c in cycles if c[4] >= psnr), None)
        core_h = t * frames_total * threads / 3600
        if match:
            print(f"direct {backend} {spp:>2} spp ({psnr:.1f} dB, {t:.3f} s): Cycles needs {match[2]} spp "
                  f"({match[3]:.3f} s) -> direct is {match[3] / t:.1f}x faster; paper dataset {core_h:.0f} core-h "
                  f"vs {match[3] * frames_total * threads / 3600:.0f}")
        else:
            best = cycles[-1]
            print(f"direct {backend} {spp:>2} spp ({psnr:.1f} dB, {t:.3f} s): no measured Cycles count reaches it "
                  f"(64 spp: {best[4]:.1f} dB, {best[3]:.3f} s) -> direct is > {best[3] / t:.1f}x faster; "
                  f"paper dataset {core_h:.0f} core-h")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=9, help="frames per measured clip")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-cycles-table", action="store_true")
    p.add_argument("--quality-frames", type=int, default=2)
    args = p.parse_args()
    if args.skip_cycles_table:
        equal_quality(args.quality_frames, args.threads, "sunrise.exr", "highlight_zoom_out")
        return
    cores = args.threads
    frames_total = PAPER_CLIPS * PAPER_FRAMES
    print(f"Cycles CPU, {cores} threads, world-only scene, one animation job per clip of {args.frames} frames")
    print(f"{'resolution':>10} {'samples':>7} {'EXR':>7} {'s/frame':>8} {'write s/frame':>13} {'MB/frame':>9} "
          f"{'paper core-h':>12} {'paper disk':>10}")
    rows = {}
    runs = [(w, h, spp, False) for (w, h) in [(256, 144), (1280, 720)] for spp in args.samples]
    runs.append((1280, 720, args.samples[0], True))
    for w, h, spp, half in runs:
        m = measure(w, h, spp, args.frames, cores, half=half)
        rows[(w, spp, half)] = m
        core_h = (m["s_per_frame"] + m["write_s_per_frame"]) * frames_total * cores / 3600
        disk_tb = m["bytes_per_frame"] * frames_total / 1e12
        print(f"{f'{w}x{h}':>10} {spp:>7} {'half' if half else 'float32':>7} {m['s_per_frame']:8.3f} "
              f"{m['write_s_per_frame']:13.3f} {m['bytes_per_frame'] / 1e6:9.2f} {core_h:12.0f} {disk_tb:7.2f} TB")
    if (1280, args.samples[0], False) in rows and (256, args.samples[0], False) in rows:
        r = rows[(1280, args.samples[0], False)]["s_per_frame"] / rows[(256, args.samples[0], False)]["s_per_frame"]
        print(f"ratio 1280x720 / 256x144 at {args.samples[0]} spp: {r:.1f}x time for 25x pixels")
    print("core-h = (render + write) s/frame x paper frames x threads / 3600; disk = EXR bytes/frame x paper frames")
    print(f"paper dataset: {PAPER_CLIPS} clips x {PAPER_FRAMES} frames = {frames_total} frames")
    equal_quality(args.quality_frames, cores, "sunrise.exr", "highlight_zoom_out")


if __name__ == "__main__":
    sys.exit(main())
