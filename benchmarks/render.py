"""Render benchmark: seconds per frame with Blender Cycles (one animation job per clip) at 1280x720 and at a small
size, and the projected core-hours and disk for the paper's dataset (800 HDRIs, ~5400 clips x 81 frames).

    python benchmarks/render.py [--frames 9] [--samples 1 16]

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

from hdr.storage import Store
from render import layout
from render.hdri import default_hdri_dir
from render.job import HdriTask, RenderSettings, render_hdri

PAPER_CLIPS, PAPER_FRAMES = 5400, 81


def measure(width, height, samples, frames, threads, half=False, hdri="sunrise.exr") -> dict:
    out = tempfile.mkdtemp(prefix="bench-render-")
    try:
        s = RenderSettings(frames=frames, width=width, height=height, samples=samples, threads=threads,
                           half=half, programs=("rotation_000",))
        res = render_hdri(HdriTask(str(default_hdri_dir()), hdri, "bench", out, s))
        if res.error or res.count("rendered") != 1:
            raise SystemExit(f"benchmark render failed: {res}")
        meta = Store(out).read_json(f"bench/rotation_000/{layout.CLIP_JSON}")
        return {
            "s_per_frame": meta["timing"]["seconds_per_frame"],
            "write_s_per_frame": meta["timing"]["write_seconds"] / frames,
            "bytes_per_frame": sum(f["bytes"] for f in meta["frames"]) / frames,
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=9, help="frames per measured clip")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
