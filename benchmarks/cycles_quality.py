"""Cycles' sampling against quality: fixed sample counts and adaptive sampling (a noise threshold), each scored
against converged Cycles (1024 fixed samples, 4096 below 160x90; another seed) on the same cameras and resolution.

Every setting renders through the real pipeline (``render.job.render_hdri``: the signed-map split, the clamp at 0,
clip.json timing) with the Blender engine's sampling options; per setting it prints the worst frame's mu-law PSNR
(``evaluate.metrics.psnr_t_frame``), the worst |frame mean / reference mean - 1|, the render seconds per frame
(clip.json ``timing``, the negative part included), and the same two errors against the direct engine (the pixel
filter's noise-free expectation; the reference is checked against it too: ``ref vs direct``). The maps: the 8 bundled
PolyHaven maps and a synthetic small, very bright sun (``small_sun_map``); the programs highlight_zoom_in (aimed at
the sun) and rotation_000.

    python benchmarks/cycles_quality.py                                # 64x36 and 320x180 (all maps), 1280x720 (3)
    python benchmarks/cycles_quality.py --sizes 320x180 --maps sun,sunrise --settings f16,a0.01/0/256
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.metrics import psnr_t_frame  # noqa: E402
from hdr.io import read_image, write_exr  # noqa: E402
from hdr.storage import atomic_write_json  # noqa: E402
from render import job  # noqa: E402
from render.engines import HdriSource, get_engine  # noqa: E402
from render.hdri import default_hdri_dir  # noqa: E402
from render.programs import ClipPlan, FrameCamera  # noqa: E402

PROGRAMS = ("highlight_zoom_in", "rotation_000")
REFERENCE_SAMPLES = 1024
# below 160x90 a sub-pixel sun's filter tail is too rare an event for 1024 samples: the synthetic sun at 64x36 is
# 45.5 dB from the direct engine at 1024, 53-56 dB at 4096 and 16384 (its systematic floor vs the direct engine)
SMALL_REFERENCE_SAMPLES, SMALL = 4096, 160 * 90
BUNDLED = ("sunrise", "city", "night", "interior", "forest", "courtyard", "studio", "sunset")
SYNTHETIC = "sun"  # small_sun_map(): a 1.5-texel sun of 1e5 on a dim sky
PSNR_MIN, MEAN_MAX = 45.0, 0.01  # the bounds: every frame


def reference_samples(width: int, height: int) -> int:
    """Fixed samples of the converged reference at this size."""
    return SMALL_REFERENCE_SAMPLES if width * height < SMALL else REFERENCE_SAMPLES


@dataclass(frozen=True)
class Sampling:
    """One Cycles sampling setting: fixed ``samples`` (threshold 0) or adaptive up to ``samples``."""

    samples: int
    noise_threshold: float = 0.0
    min_samples: int = 0

    @classmethod
    def parse(cls, text: str) -> "Sampling":
        """``f64`` = fixed 64; ``a0.01/16/256`` = adaptive, threshold 0.01, min 16 (0 = auto), max 256."""
        if text.startswith("f"):
            return cls(int(text[1:]))
        t, lo, hi = text[1:].split("/")
        return cls(int(hi), float(t), int(lo))

    @property
    def label(self) -> str:
        if self.noise_threshold <= 0:
            return f"fixed {self.samples}"
        return f"adaptive {self.noise_threshold:g} min {self.min_samples or 'auto'} max {self.samples}"

    def options(self) -> dict:
        return {"samples": self.samples, "noise_threshold": self.noise_threshold, "min_samples": self.min_samples}


DEFAULT_SETTINGS = ("f16", "f32", "f64", "f128", "f256",
                    "a0.1/0/1024", "a0.05/0/1024", "a0.02/0/1024", "a0.01/0/1024", "a0.005/0/1024",
                    "a0.02/16/1024", "a0.01/16/1024", "a0.005/16/1024")


def small_sun_map(w: int = 1024, radiance: float = 1e5, az_deg: float = 25.0, el_deg: float = 10.0,
                  radius_texels: float = 1.5) -> np.ndarray:
    """A dim sky (0.05..0.3, ground 0.04) with a sun disc of ``radius_texels`` at ``radiance``: a few texels, far
    brighter than everything else in view, at moderate elevation (in view of rotation_000's first frames too)."""
    h = w // 2
    el = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    img = np.empty((h, w, 3), np.float32)
    img[:] = (0.05 + 0.25 * np.clip(np.sin(el), 0, 1))[:, None, None] * np.array([0.55, 0.75, 1.0])
    img[el < 0] = 0.04
    col = (0.5 - math.radians(az_deg) / (2 * math.pi)) * w
    row = (0.5 - math.radians(el_deg) / math.pi) * h
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    img[(yy - row) ** 2 + (xx - col) ** 2 <= radius_texels**2] = radiance * np.array([1.0, 0.9, 0.75])
    return img


@contextlib.contextmanager
def engine_options(**options):
    """Hand the Blender engine ``options`` when ``render_hdri`` builds it (over what the job passes)."""
    base = job._engine_options
    job._engine_options = lambda s: {**base(s), **options} if s.engine == "blender" else base(s)
    try:
        yield
    finally:
        job._engine_options = base


def render_clips(hdri_dir: Path, name: str, out: Path, width: int, height: int, frames: int, sampling: Sampling,
                 programs=PROGRAMS, threads: int = 2) -> dict:
    """The pipeline's clips of one map with ``sampling``: {program: (clip.json, frames)}."""
    s = job.RenderSettings(width=width, height=height, frames=frames, samples=sampling.samples, programs=programs,
                           threads=threads, engine="blender")
    with engine_options(**sampling.options()):
        res = job.render_hdri(job.HdriTask(str(hdri_dir), f"{name}.exr", name, str(out), s))
    if res.error or res.count("rendered") != len(programs):
        raise RuntimeError(f"{name} {sampling.label}: {res}")
    clips = {}
    for program in programs:
        d = out / name / program
        meta = json.loads((d / "clip.json").read_text())
        clips[program] = meta, [read_image(d / f["file"]) for f in meta["frames"]]
    return clips


def _plan(meta: dict, seed: int) -> ClipPlan:
    cams = tuple(FrameCamera(f["index"], f["focal_mm"], tuple(f["rotation_euler"])) for f in meta["frames"])
    return ClipPlan("ref", "ref", seed, cams)


def cycles_reference(path: Path, meta: dict, width: int, height: int, samples: int = REFERENCE_SAMPLES,
                     threads: int = 2, scratch: Path | None = None) -> tuple[list[np.ndarray], float]:
    """Cycles at ``samples`` fixed samples on the map as decoded (signed texels kept) with the clip's cameras and
    ANOTHER seed (independent noise), each pixel clamped at 0 as the job does; and its seconds per frame."""
    eng = get_engine("blender", samples=samples, noise_threshold=0.0, threads=threads)
    h = meta["hdri"]
    eng.load(HdriSource(path=path, pixels=None, width=h["width"], height=h["height"]))
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        t0 = time.perf_counter()
        frames = [np.maximum(f, 0.0) for f in eng.render(_plan(meta, meta["seed"] + 1), width, height, Path(tmp))]
        seconds = (time.perf_counter() - t0) / len(frames)
    eng.close()
    return frames, seconds


def direct_expectation(img: np.ndarray, meta: dict, width: int, height: int, samples: int = 64) -> list[np.ndarray]:
    """The direct engine (the pixel filter's noise-free expectation of Cycles) on the same cameras, clamped at 0."""
    backend = "torch" if importlib.util.find_spec("torch") else "numpy"
    eng = get_engine("direct", samples=samples, max_samples=4096, backend=backend, device="cpu")
    eng.load(HdriSource(path=None, pixels=img, width=img.shape[1], height=img.shape[0]))
    return [np.maximum(f, 0.0) for f in eng.render(_plan(meta, 0), width, height, None)]


def frame_errors(frames, refs) -> list[tuple[float, float]]:
    """(mu-law PSNR, frame mean / reference mean - 1) of every frame."""
    return [(psnr_t_frame(f, r), float(f.mean(dtype=np.float64) / r.mean(dtype=np.float64) - 1))
            for f, r in zip(frames, refs)]


def measure(size: tuple[int, int], names, settings, frames: int, threads: int = 2, log=print,
            programs=PROGRAMS) -> list[dict]:
    """Every setting on every map at one size: one row per setting (worst frame over maps, programs and frames)."""
    width, height = size
    bundled = default_hdri_dir()
    rows = {s: {"setting": s.label, "size": f"{width}x{height}", "psnr": 100.0, "mean_err": 0.0, "seconds": 0.0,
                "frames": 0, "worst": "", "psnr_direct": 100.0, "mean_err_direct": 0.0} for s in settings}
    checks = []
    with tempfile.TemporaryDirectory(prefix="cycles-quality-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for name in names:
            if name == SYNTHETIC:
                img = small_sun_map()
                write_exr(root / "in" / f"{name}.exr", img)
                src = root / "in"
            else:
                src = bundled
                img = read_image(bundled / f"{name}.exr")
            refs, directs = {}, {}
            for k, s in enumerate(settings):
                clips = render_clips(src, name, root / f"out{k}", width, height, frames, s, programs, threads)
                for program, (meta, got) in clips.items():
                    if program not in refs:  # the cameras are the same for every setting: one reference per clip
                        ref, ref_s = cycles_reference(src / f"{name}.exr", meta, width, height,
                                                      reference_samples(width, height), threads, root)
                        directs[program] = direct_expectation(img, meta, width, height)
                        errs = frame_errors(ref, directs[program])
                        checks.append((name, program, min(e[0] for e in errs), max(abs(e[1]) for e in errs), ref_s))
                        log(f"  reference {width}x{height} {name:>9} {program:<17} {reference_samples(width, height)} "
                            f"samples {ref_s:7.2f} s/frame; vs direct "
                            f"{checks[-1][2]:5.1f} dB, |mean-1| {100 * checks[-1][3]:.2f}%")
                        refs[program] = ref
                    row = rows[s]
                    for i, (psnr, err) in enumerate(frame_errors(got, refs[program])):
                        if psnr < row["psnr"]:
                            row["psnr"], row["worst"] = psnr, f"{name}/{program}/{i}"
                        row["mean_err"] = max(row["mean_err"], abs(err))
                    for psnr, err in frame_errors(got, directs[program]):  # vs the noise-free expectation
                        row["psnr_direct"] = min(row["psnr_direct"], psnr)
                        row["mean_err_direct"] = max(row["mean_err_direct"], abs(err))
                    row["seconds"] += meta["timing"]["render_seconds"]
                    row["frames"] += len(got)
                errs = [e for program, (meta, got) in clips.items() for e in frame_errors(got, refs[program])]
                seconds = sum(m["timing"]["render_seconds"] for m, _ in clips.values())
                log(f"  {width}x{height} {name:>9} {s.label:<36} worst {min(e[0] for e in errs):5.1f} dB "
                    f"{100 * max(abs(e[1]) for e in errs):5.2f}%  "
                    f"{seconds / sum(len(g) for _, g in clips.values()):.3f} s/frame")
    for r in rows.values():
        r["s_per_frame"] = r["seconds"] / max(1, r["frames"])
        r["ok"] = r["psnr"] >= PSNR_MIN and r["mean_err"] <= MEAN_MAX
    out = list(rows.values())
    out.append({"reference_checks": checks})
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'size':>9} {'setting':<34} {'worst PSNR':>10} {'worst |mean-1|':>14} {'s/frame':>8}  pass  "
             f"{'vs direct':>9} {'|mean-1|':>8}  worst frame"]
    for r in rows:
        if "setting" in r:
            lines.append(f"{r['size']:>9} {r['setting']:<34} {r['psnr']:7.1f} dB {100 * r['mean_err']:13.2f}% "
                         f"{r['s_per_frame']:8.3f}  {'yes ' if r['ok'] else 'NO  '}  {r['psnr_direct']:6.1f} dB "
                         f"{100 * r['mean_err_direct']:7.2f}%  {r['worst']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64x36,320x180,1280x720")
    p.add_argument("--maps", default=None, help=f"comma list of {SYNTHETIC} and bundled map names [all]")
    p.add_argument("--maps-720p", default="sun,sunrise,night", help="maps at 1280x720 (its reference is slow)")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                   help="fNNN = fixed NNN samples; aT/MIN/MAX = adaptive threshold T, min samples (0 auto), max")
    p.add_argument("--settings-720p", default=None, help="settings at 1280x720 [--settings]")
    p.add_argument("--programs", default=",".join(PROGRAMS))
    p.add_argument("--programs-720p", default=None, help="programs at 1280x720 [--programs]")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--frames-720p", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    settings = [Sampling.parse(t) for t in args.settings.split(",")]
    names = args.maps.split(",") if args.maps else [SYNTHETIC, *BUNDLED]
    all_rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        big = w * h >= 1280 * 720
        at = [Sampling.parse(t) for t in args.settings_720p.split(",")] if big and args.settings_720p else settings
        rows = measure((w, h), args.maps_720p.split(",") if big else names, at,
                       args.frames_720p if big else args.frames, args.threads,
                       log=lambda m: print(m, file=sys.stderr, flush=True),
                       programs=tuple(((big and args.programs_720p) or args.programs).split(",")))
        all_rows += rows
        print(table(rows), flush=True)
        if args.json:
            atomic_write_json(args.json, all_rows)
    print(f"pass = every frame >= {PSNR_MIN:g} dB mu-law PSNR and frame mean within {100 * MEAN_MAX:g}% of Cycles "
          f"at {REFERENCE_SAMPLES} samples ({SMALL_REFERENCE_SAMPLES} below 160x90; another seed); "
          f"s/frame = Cycles render seconds per frame, {args.threads} threads, negative part included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
