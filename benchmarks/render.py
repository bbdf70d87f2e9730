"""Render speed and quality at the defaults a user gets (issue 18's goals), measured in one run on this machine:

1. clip seconds (clip.json ``timing.total_seconds``: render + write; plus, for Blender, the render of a signed map's
   negative part, which the job does before the clips) of the direct engine at its defaults (its
   quality rule, backend auto) and of the Blender engine at ITS defaults, through ``render.job.render_hdri``, at
   each size: the ratio (goal >= 20x);
2. quality of both engines' default frames against converged Cycles (``cycles_quality.cycles_reference``: >= 1024
   fixed samples, another seed): the worst frame's mu-law PSNR (``evaluate.metrics.psnr_t_frame``, goal >= 45 dB)
   and the worst |frame mean / reference mean - 1| (goal <= 1%);
3. the whole run: ``python -m render.run`` in a subprocess (driver, Ray, map loads, writes) with each engine's
   defaults, wall seconds and their ratio (goal >= 5x at 320x180);
4. synthetic detailed maps of 2k, 8k and 16k (``synthetic_maps.detailed_map``): the direct engine's default seconds
   per frame at 1280x720 (O(1) in the map's size) and, on the largest map, its quality against the dense direct
   expectation (``cycles_quality.direct_expectation``: samples <= 0.2 texel apart on the full-resolution map, no mip);
5. the physical limit: one bilinear lookup (4 float32 RGB texels, 48 bytes) per output pixel, read at this machine's
   streaming bandwidth (measured here: numpy copy of a 256 MB array, read + write bytes), against the direct
   engine's default render seconds per frame at the largest size.

Then one table: goal, measured, pass. The defaults give the full table in ~15-20 minutes on 2 idle cores.

    python benchmarks/render.py [--json results.json]
    python benchmarks/render.py --sizes 320x180 --skip-whole-run --skip-16k      # ~3 minutes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this file is named like the package it measures: make `import render` find the package, not this script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cycles_quality import (  # noqa: E402
    MEAN_MAX, PSNR_MIN, cycles_reference, direct_expectation, frame_errors, reference_samples, small_sun_map)
from evaluate.metrics import psnr_t_frame  # noqa: E402
from hdr import cli  # noqa: E402
from hdr.io import read_image, write_exr  # noqa: E402
from hdr.dataset import layout  # noqa: E402
from render import analysis  # noqa: E402
from render.engines import HdriSource, get_engine  # noqa: E402
from render.hdri import default_hdri_dir  # noqa: E402
from render.job import HdriTask, RenderSettings, render_hdri  # noqa: E402
from render.programs import PROGRAMS, parse_programs, plan_clip  # noqa: E402

CLIP_RATIO_MIN, RUN_RATIO_MIN = 20.0, 5.0  # the goals: direct / Blender speed
O1_RATIO_MAX = 1.5  # bounded cost: the largest map's seconds per frame within 1.5x the next largest's (both at the
# frame's sample budget: a larger map adds only prefiltered levels, no samples)
TEXEL_BYTES, LOOKUP_TEXELS = 12, 4  # float32 RGB; a bilinear lookup reads 4 texels
BIG = 1280 * 720  # sizes from here on use the cheaper 720p scope (programs, quality programs)


def mu_psnr(ref, test) -> float:
    """PSNR_T exactly as the evaluation computes it (``evaluate.metrics.psnr_t_frame``: mu-law, mu = 5000, both
    frames divided by the reference's maximum, the test frame clipped to [0, 1], capped at 100 dB)."""
    return psnr_t_frame(test, ref)


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def spread(n: int, k: int) -> list[int]:
    """``k`` frame indices spread over 0 .. n - 1 (first and last included)."""
    k = min(k, n)
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


# --------------------------------------------------------------------------------------------------- the machine
def memory_bandwidth(mb: int = 256, repeats: int = 5) -> dict:
    """Streaming bandwidth: the best of ``repeats`` numpy copies of an ``mb`` MB float32 array, counting the bytes
    read plus the bytes written."""
    src = np.ones(mb * (1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return {"gb_per_s": 2 * src.nbytes / best / 1e9, "array_mb": mb,
            "method": f"np.copyto of {mb} MB float32, best of {repeats}, (read + write bytes) / seconds"}


def lookup_limit(width: int, height: int, gb_per_s: float) -> dict:
    """The physical limit of a frame: one bilinear lookup per output pixel, every texel read once from memory."""
    nbytes = width * height * LOOKUP_TEXELS * TEXEL_BYTES
    return {"bytes": nbytes, "seconds": nbytes / (gb_per_s * 1e9),
            "assumed": f"{LOOKUP_TEXELS} float32 RGB texels ({LOOKUP_TEXELS * TEXEL_BYTES} B) per output pixel, each "
                       "read once at the measured streaming bandwidth (no cache reuse, the frame's own 12 B/pixel "
                       "write and the trigonometry not counted)"}


# ------------------------------------------------------------------------------------------------------- inputs
def prepare_maps(names, folder: Path) -> Path:
    """A folder with ``<name>.exr`` for every name: a bundled map (copied) or ``sun`` (cycles_quality.small_sun_map,
    written)."""
    folder.mkdir(parents=True, exist_ok=True)
    bundled = default_hdri_dir()
    for name in names:
        dst = folder / f"{name}.exr"
        if name == "sun":
            write_exr(dst, small_sun_map())
        elif bundled is None or not (bundled / f"{name}.exr").exists():
            raise SystemExit(f"error: map {name!r}: not a bundled map (bpy's studio lights) nor 'sun'")
        else:
            shutil.copyfile(bundled / f"{name}.exr", dst)
    return folder


# --------------------------------------------------------------------------------------------------- clip seconds
def render_clips(hdri_dir: Path, name: str, out: Path, engine: str, size, frames: int, programs, threads: int,
                 keep=()) -> dict:
    """One map's clips through ``render_hdri`` at the engine's defaults (no samples given): wall seconds around the
    call, clip.json seconds summed over clips, and the frames of indices ``keep`` (read back from the EXRs)."""
    w, h = size
    s = RenderSettings(frames=frames, width=w, height=h, programs=tuple(programs), engine=engine, threads=threads)
    t0 = time.perf_counter()
    res = render_hdri(HdriTask(str(hdri_dir), f"{name}.exr", name, str(out), s))
    wall = time.perf_counter() - t0
    if res.error or res.count("rendered") != len(programs):
        raise SystemExit(f"error: {engine} render of {name} at {w}x{h} failed: {res}")
    m = {"wall_s": wall, "clip_s": 0.0, "render_s": 0.0, "write_s": 0.0, "frames": 0, "clips": {}}
    for program in programs:
        d = out / name / program
        meta = json.loads((d / layout.CLIP_JSON).read_text())
        t = meta["timing"]
        # the Blender engine renders a signed map's negative part first, outside the clip's total: counted here
        m["clip_s"] += t["total_seconds"] + meta["output"].get("negative_part", {}).get("render_seconds", 0.0)
        m["render_s"] += t["render_seconds"]
        m["write_s"] += t["write_seconds"]
        m["frames"] += len(meta["frames"])
        m["engine"] = meta["engine"]
        m["clips"][program] = (meta, {f["index"]: read_image(d / f["file"]) for f in meta["frames"]
                                      if f["index"] in keep})
    return m


def _engine_label(info: dict) -> str:
    """The engine's sampling as clip.json records it (direct: backend and samples; Blender: its sampling)."""
    s = info.get("sampling")
    if isinstance(s, dict):
        return (f"adaptive, threshold {s['noise_threshold']:g}, {s.get('min_samples_used', '?')}-{s['max_samples']} "
                f"samples" if s.get("adaptive") else f"fixed {s['samples']} samples")
    return ", ".join(f"{k} {info[k]}" for k in ("backend", "samples") if k in info)


def measure_size(size, hdri_dir: Path, maps, programs, quality_programs, frames: int, quality_frames: int,
                 ref_samples: int | None, threads: int, scratch: Path, log=print, quality_maps=None) -> dict:
    """Clip seconds of both engines on every map, then both engines' frames of ``quality_frames`` spread indices of
    ``quality_programs`` on ``quality_maps`` (default: every map) against one Cycles reference per clip."""
    w, h = size
    keep = spread(frames, quality_frames)
    samples = ref_samples or reference_samples(w, h)
    out = {"size": f"{w}x{h}", "maps": list(maps), "programs": list(programs), "frames": frames,
           "quality_maps": list(quality_maps or maps), "quality_programs": list(quality_programs),
           "quality_frames": keep, "reference_samples": samples, "engines": {},
           "reference": {"frames": 0, "s_per_frame": 0.0}}
    runs = {}
    for engine in ("direct", "blender"):
        tot = {"wall_s": 0.0, "clip_s": 0.0, "render_s": 0.0, "write_s": 0.0, "frames": 0}
        for name in maps:
            m = render_clips(hdri_dir, name, scratch / f"{engine}-{w}x{h}", engine, size, frames, programs, threads,
                             keep)
            runs[engine, name] = m
            for k in ("wall_s", "clip_s", "render_s", "write_s", "frames"):
                tot[k] += m[k]
            tot["engine"] = _engine_label(m["engine"])
            log(f"  {w}x{h} {engine:>7} {name:>9}: {m['clip_s']:7.2f} clip s ({m['render_s']:.2f} render, "
                f"{m['write_s']:.2f} write) for {m['frames']} frames; {m['wall_s']:.2f} s wall")
        tot["s_per_frame"] = tot["clip_s"] / max(1, tot["frames"])
        tot["render_s_per_frame"] = tot["render_s"] / max(1, tot["frames"])
        tot.update(psnr=100.0, mean_err=0.0, worst="")
        out["engines"][engine] = tot
    out["clip_ratio"] = out["engines"]["blender"]["clip_s"] / max(out["engines"]["direct"]["clip_s"], 1e-9)
    ref_time = 0.0
    for name in quality_maps or maps:
        for program in quality_programs:
            meta = runs["blender", name]["clips"][program][0]
            other = runs["direct", name]["clips"][program][0]
            if [(f["focal_mm"], f["rotation_euler"]) for f in meta["frames"]] != [
                    (f["focal_mm"], f["rotation_euler"]) for f in other["frames"]]:
                raise SystemExit(f"error: {name}/{program}: the engines' clips have different cameras")
            # the kept frames' cameras as consecutive frames 0, 1, ... (Blender keys and checks a contiguous clip)
            trimmed = {**meta, "frames": [{**f, "index": j}
                                          for j, f in enumerate(f for f in meta["frames"] if f["index"] in keep)]}
            refs, ref_s = cycles_reference(hdri_dir / f"{name}.exr", trimmed, w, h, samples, threads, scratch)
            ref_time += ref_s * len(refs)
            out["reference"]["frames"] += len(refs)
            line = []
            for engine in ("direct", "blender"):
                got = runs[engine, name]["clips"][program][1]
                row = out["engines"][engine]
                errs = frame_errors([got[i] for i in keep], refs)
                for i, (psnr, err) in zip(keep, errs):
                    if psnr < row["psnr"]:
                        row["psnr"], row["worst"] = psnr, f"{name}/{program}/{i}"
                    row["mean_err"] = max(row["mean_err"], abs(err))
                line.append(f"{engine} {min(e[0] for e in errs):5.1f} dB {100 * max(abs(e[1]) for e in errs):5.2f}%")
            log(f"  {w}x{h} {name:>9} {program:<18} vs Cycles {samples} ({ref_s:.1f} s/frame): {'; '.join(line)}")
    out["reference"]["s_per_frame"] = ref_time / max(1, out["reference"]["frames"])
    return out


# ------------------------------------------------------------------------------------------------------ whole run
def whole_run(engine: str, size, hdri_dir: Path, programs, frames: int, root: Path) -> dict:
    """``python -m render.run`` as a user types it, wall seconds of the process. Each engine's defaults: Blender
    through a private local Ray, the direct engine in the driver where that Ray would run one task at a time."""
    w, h = size
    cmd = [sys.executable, "-m", "render.run", "--hdris", str(hdri_dir), "--root", str(root), "--frames", str(frames),
           "--resolution", f"{w}x{h}", "--engine", engine, "--programs", ",".join(programs), "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    clips = list(root.glob(f"*/*/{layout.CLIP_JSON}"))
    return {"wall_s": wall, "clips": len(clips), "command": " ".join(cmd[1:])}


def measure_whole_runs(size, hdri_dir: Path, programs, frames: int, scratch: Path, log=print) -> dict:
    out = {"size": f"{size[0]}x{size[1]}", "programs": list(programs), "frames": frames}
    for engine in ("direct", "blender"):
        out[engine] = whole_run(engine, size, hdri_dir, programs, frames, scratch / f"run-{engine}-{out['size']}")
        log(f"  whole run {out['size']} {engine:>7}: {out[engine]['wall_s']:.1f} s wall, {out[engine]['clips']} clips")
    out["ratio"] = out["blender"]["wall_s"] / max(out["direct"]["wall_s"], 1e-9)
    return out


# -------------------------------------------------------------------------------------------- synthetic 2k..16k
def synthetic_maps(widths, size, frames: int, quality_frames: int, program: str, threads: int, log=print) -> dict:
    """The direct engine's default seconds per frame on ``detailed_map`` of each width (render only: per frame, the
    median; the first frame also builds the mip levels), and on the largest map its frames against the dense direct
    expectation."""
    from benchmarks.synthetic_maps import detailed_map

    w, h = size
    out = {"size": f"{w}x{h}", "program": program, "frames": frames, "maps": []}
    for mw in widths:
        t0 = time.perf_counter()
        img = detailed_map(mw)
        gen_s = time.perf_counter() - t0
        plan = plan_clip(program, frames, 0, f"synthetic{mw}", analysis.aims(*analysis.luminance_map(img)))
        eng = get_engine("direct", threads=threads)
        eng.load(HdriSource(path=None, pixels=img, width=mw, height=mw // 2))
        extras = eng.frame_extras(plan, w, h)
        got, times = [], []
        t0 = time.perf_counter()
        for f in eng.render(plan, w, h, None):
            times.append(time.perf_counter() - t0)
            got.append(np.maximum(f, 0.0))
            t0 = time.perf_counter()
        eng.close()
        row = {"width": mw, "generate_s": gen_s, "s_per_frame": float(np.median(times)), "first_s": times[0],
               "mean_s": float(np.mean(times)), "samples_per_pixel": sorted({e["samples_per_pixel"] for e in extras}),
               "mip_levels": sorted({e["mip_level"] for e in extras}),
               "texels_per_pixel": [min(e["texels_per_pixel"] for e in extras),
                                    max(e["texels_per_pixel"] for e in extras)]}
        if mw == max(widths):
            keep = spread(frames, quality_frames)
            meta = {"seed": 0, "frames": [{"index": fc.index, "focal_mm": fc.focal_mm,
                                           "rotation_euler": list(fc.rotation_euler)}
                                          for fc in plan.frames if fc.index in keep]}
            t0 = time.perf_counter()
            refs = direct_expectation(img, meta, w, h)
            row["reference_s_per_frame"] = (time.perf_counter() - t0) / len(refs)
            errs = frame_errors([got[i] for i in keep], refs)
            row["psnr"] = min(e[0] for e in errs)
            row["mean_err"] = max(abs(e[1]) for e in errs)
            row["quality_frames"] = keep
        out["maps"].append(row)
        log(f"  synthetic {mw}x{mw // 2} at {w}x{h}: {1000 * row['s_per_frame']:.1f} ms/frame (median; first "
            f"{1000 * row['first_s']:.0f} ms), spp {row['samples_per_pixel']}, mip {row['mip_levels']}, map made in "
            f"{gen_s:.1f} s" + (f"; vs dense {row['psnr']:.1f} dB, |mean-1| {100 * row['mean_err']:.2f}%"
                                 if "psnr" in row else ""))
        del img, got
    small, large = out["maps"][-2] if len(out["maps"]) > 1 else out["maps"][0], out["maps"][-1]
    out["o1_ratio"] = large["s_per_frame"] / max(small["s_per_frame"], 1e-9)  # the two largest maps
    return out


# ---------------------------------------------------------------------------------------------------- the table
def goal_table(res: dict) -> list[dict]:
    """Goal, measured, pass, from the measurements in ``res`` (nothing here is measured)."""
    rows = []

    def add(goal, measured, ok, note=""):
        rows.append({"goal": goal, "measured": measured, "pass": ok, "note": note})

    for s in res.get("sizes", []):
        d, b = s["engines"]["direct"], s["engines"]["blender"]
        ratio = b["clip_s"] / max(d["clip_s"], 1e-9)
        add(f"{s['size']} clip seconds, direct >= {CLIP_RATIO_MIN:g}x Blender", f"{ratio:.1f}x",
            ratio >= CLIP_RATIO_MIN,
            f"{d['s_per_frame']:.3f} vs {b['s_per_frame']:.3f} s/frame (render + write), {d['frames']} frames each")
        for name, e in (("direct", d), ("blender", b)):
            add(f"{s['size']} {name} worst frame >= {PSNR_MIN:g} dB vs Cycles {s['reference_samples']}",
                f"{e['psnr']:.1f} dB", e["psnr"] >= PSNR_MIN, f"worst {e['worst']}")
            add(f"{s['size']} {name} worst |mean-1| <= {100 * MEAN_MAX:g}%", f"{100 * e['mean_err']:.2f}%",
                e["mean_err"] <= MEAN_MAX, f"{s['reference']['frames']}"
                " frames")
    for r in res.get("whole_runs", []):
        ratio = r["blender"]["wall_s"] / max(r["direct"]["wall_s"], 1e-9)
        add(f"{r['size']} whole run (render.run defaults), direct >= {RUN_RATIO_MIN:g}x Blender", f"{ratio:.1f}x",
            ratio >= RUN_RATIO_MIN, f"{r['direct']['wall_s']:.1f} vs {r['blender']['wall_s']:.1f} s wall, "
            f"{r['direct']['clips']} clips")
    syn = res.get("synthetic")
    if syn:
        # bounded cost: once a map is large enough for the frame's sample budget (direct.QUALITY_BUDGET), a larger
        # map costs no more samples, only prefiltered levels: compare the two largest maps
        small, large = syn["maps"][-2] if len(syn["maps"]) > 1 else syn["maps"][0], syn["maps"][-1]
        ratio = large["s_per_frame"] / max(small["s_per_frame"], 1e-9)
        add(f"{syn['size']} direct s/frame bounded in map size: {large['width']} / {small['width']} "
            f"<= {O1_RATIO_MAX:g}", f"{ratio:.2f}", ratio <= O1_RATIO_MAX,
            ", ".join(f"{m['width']} {1000 * m['s_per_frame']:.0f} ms ({'/'.join(map(str, m['samples_per_pixel']))} "
                      "spp)" for m in syn["maps"]))
        if "psnr" in large:
            add(f"{syn['size']} direct on {large['width']} map worst frame >= {PSNR_MIN:g} dB vs dense direct",
                f"{large['psnr']:.1f} dB", large["psnr"] >= PSNR_MIN, f"|mean-1| {100 * large['mean_err']:.2f}%")
    lim = res.get("limit")
    if lim:
        add(f"{lim['size']} direct render s/frame vs one lookup per pixel at {lim['gb_per_s']:.1f} GB/s",
            f"{lim['ratio']:.0f}x the limit", None,
            f"{1000 * lim['direct_s_per_frame']:.1f} ms vs {1000 * lim['seconds']:.2f} ms "
            f"({lim['bytes'] / 1e6:.1f} MB)")
    return rows


def format_table(rows: list[dict]) -> str:
    g = max([len(r["goal"]) for r in rows] + [4])
    lines = [f"{'goal':<{g}} {'measured':>16}  pass  note"]
    for r in rows:
        ok = "-" if r["pass"] is None else ("yes" if r["pass"] else "NO")
        lines.append(f"{r['goal']:<{g}} {r['measured']:>16}  {ok:<4}  {r['note']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="320x180,1280x720", help="comma list of WIDTHxHEIGHT")
    p.add_argument("--maps", default="sunrise,city", help="comma list of bundled map names (or 'sun': the small "
                   "bright sun of cycles_quality)")
    p.add_argument("--frames", type=int, default=9, help="frames per clip")
    p.add_argument("--programs", default="all", help="programs below 1280x720")
    p.add_argument("--programs-720p", default="highlight_zoom_in,rotation_000", help="programs at 1280x720 and up")
    p.add_argument("--quality-programs", default="all", help="programs scored against Cycles below 1280x720")
    p.add_argument("--quality-programs-720p", default="highlight_zoom_in",
                   help="programs scored against Cycles at 1280x720 and up (~1 min per reference frame)")
    p.add_argument("--quality-maps-720p", default=None, help="maps scored at 1280x720 and up [--maps]")
    p.add_argument("--quality-frames", type=int, default=3, help="frames per clip scored (spread over the clip)")
    p.add_argument("--reference-samples", type=int, default=None,
                   help="Cycles reference samples [cycles_quality.reference_samples: 1024, 16384 below 160x90]")
    p.add_argument("--threads", type=int, default=cli.default_cpus(), help="threads per job (render.run's default)")
    p.add_argument("--skip-whole-run", action="store_true")
    p.add_argument("--whole-run-sizes", default="320x180,1280x720",
                   help="sizes of the whole run (1280x720 and up use --programs-720p)")
    p.add_argument("--skip-16k", action="store_true")
    p.add_argument("--synthetic-widths", default="2048,8192,16384")
    p.add_argument("--synthetic-size", default="1280x720")
    p.add_argument("--synthetic-program", default="highlight_zoom_in")
    p.add_argument("--json", default=None, help="also write every measurement and the table here")
    return p


def _progs(spec: str) -> tuple[str, ...]:
    return PROGRAMS if spec == "all" else parse_programs(spec)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    maps = args.maps.split(",")
    res = {"command": " ".join(["benchmarks/render.py", *(argv if argv is not None else sys.argv[1:])]),
           "threads": args.threads, "cpus": os.cpu_count(), "sizes": [], "whole_runs": []}
    t_start = time.perf_counter()
    res["bandwidth"] = memory_bandwidth()
    log(f"memory bandwidth {res['bandwidth']['gb_per_s']:.1f} GB/s ({res['bandwidth']['method']})")

    def save():
        res["table"] = goal_table(res)
        res["seconds"] = time.perf_counter() - t_start
        if args.json:
            tmp = Path(args.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str))
            os.replace(tmp, args.json)

    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        scratch = Path(tmp)
        hdri_dir = prepare_maps(maps, scratch / "maps")
        sizes = [parse_size(t) for t in args.sizes.split(",") if t]
        for size in sizes:
            big = size[0] * size[1] >= BIG
            log(f"== {size[0]}x{size[1]}: clip seconds and quality")
            res["sizes"].append(measure_size(
                size, hdri_dir, maps, _progs(args.programs_720p if big else args.programs),
                _progs(args.quality_programs_720p if big else args.quality_programs), args.frames,
                args.quality_frames, args.reference_samples, args.threads, scratch, log,
                args.quality_maps_720p.split(",") if big and args.quality_maps_720p else None))
            shutil.rmtree(scratch / f"direct-{size[0]}x{size[1]}", ignore_errors=True)
            shutil.rmtree(scratch / f"blender-{size[0]}x{size[1]}", ignore_errors=True)
            save()
        if not args.skip_whole_run:
            for size in (parse_size(t) for t in args.whole_run_sizes.split(",") if t):
                big = size[0] * size[1] >= BIG
                log(f"== whole run {size[0]}x{size[1]}")
                res["whole_runs"].append(measure_whole_runs(
                    size, hdri_dir, _progs(args.programs_720p if big else args.programs), args.frames, scratch, log))
                save()
        if not args.skip_16k:
            log("== synthetic maps")
            res["synthetic"] = synthetic_maps([int(v) for v in args.synthetic_widths.split(",")],
                                              parse_size(args.synthetic_size), args.frames, args.quality_frames,
                                              args.synthetic_program, args.threads, log)
    if res["sizes"]:
        largest = max(res["sizes"], key=lambda s: parse_size(s["size"])[0] * parse_size(s["size"])[1])
        w, h = parse_size(largest["size"])
        lim = lookup_limit(w, h, res["bandwidth"]["gb_per_s"])
        d = largest["engines"]["direct"]["render_s_per_frame"]
        res["limit"] = {"size": largest["size"], **lim, "gb_per_s": res["bandwidth"]["gb_per_s"],
                        "direct_s_per_frame": d, "ratio": d / lim["seconds"]}
    save()
    print(f"\nrender benchmark, {args.threads} threads on {os.cpu_count()} CPUs, {res['seconds'] / 60:.1f} min; "
          f"each engine at its defaults:")
    for s in res["sizes"]:
        for engine, e in s["engines"].items():
            print(f"  {s['size']} {engine:>7} ({e['engine']}): {e['s_per_frame']:.3f} s/frame clip "
                  f"({e['render_s_per_frame']:.3f} render), worst {e['psnr']:.1f} dB, |mean-1| "
                  f"{100 * e['mean_err']:.2f}%")
        print(f"  {s['size']} Cycles reference: {s['reference_samples']} samples, {s['reference']['frames']} frames, "
              f"{s['reference']['s_per_frame']:.1f} s/frame")
    if "limit" in res:
        print(f"  limit: {res['limit']['assumed']}")
    print()
    print(format_table(res["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
