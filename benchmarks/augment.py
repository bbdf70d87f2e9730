"""Augment benchmark: frames per second per core of the full degradation (exposure, AR(1) noise, sRGB, clip,
8-bit) plus the exposure masks, at 1280x720, numpy and torch-CPU, per preset; then every camera step alone (white
balance, a response curve in the quantiser, JPEG, the H.264/HEVC round trip) and each preset's whole pipeline
(``hdr.dataset.ldr.make_ldr``: what augment.run and the on-the-fly loader run), measured in this one run.

Everything runs on ONE thread (numpy is single-threaded; torch is set to one thread), so frames/s is frames/s per
core; a data loader with N workers scales by N. "torch-cpu" is the library called with CPU tensors (which it routes
through its numpy path, zero-copy); "torch ops" times the torch code a GPU runs, here on the CPU. The noise is
forced on (the diffhdr-code preset applies it to 5% of clips) so both presets pay for the AR(1) field.

    python benchmarks/augment.py [--frames 9] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdr.degrade import curves  # noqa: E402
from hdr.degrade.presets import (  # noqa: E402
    PRESETS, apply_overrides, ar1_frames, degrade, degrade_torch, sample_params)
from hdr.degrade.masks import MASK_MODES, exposure_masks  # noqa: E402
from hdr.degrade import steps as S  # noqa: E402
from hdr.degrade.presets import linear_to_ldr8  # noqa: E402
from hdr.dataset.ldr import make_ldr  # noqa: E402


def best_of(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    n = args.frames
    hdr = np.random.default_rng(0).random((n, 720, 1280, 3), dtype=np.float32) * 4
    print(f"{n} frames at 1280x720, one thread; frames/s = frames/s per core (best of {args.repeat})")
    shape = hdr.shape
    t_field = best_of(lambda: [None for _ in ar1_frames(shape, 0.5, 1)], args.repeat)
    print(f"AR(1) noise field alone (numpy): {n / t_field:6.1f} frames/s ({1e3 * t_field / n:.1f} ms/frame)")
    tmp = tempfile.TemporaryDirectory()
    dorf = Path(tmp.name) / "dorf-like.txt"  # singlehdr needs a DoRF file: synthetic gamma curves, for timing only
    curves.write_dorf_gammas(dorf)
    presets = {k: apply_overrides(v, [("step.curve.file", str(dorf))]) if k == "singlehdr" else v
               for k, v in PRESETS.items()}
    for preset_name, preset in presets.items():
        params = sample_params(preset.with_overrides(noise_probability=1.0), 1, frames=hdr)
        th = torch.from_numpy(hdr)
        runs = (  # (label, degrade, masks, input): torch CPU tensors take the numpy path (zero-copy); "torch ops" is
            ("numpy", degrade, exposure_masks, hdr),  # the GPU path's torch code, timed here on the CPU
            ("torch-cpu", degrade, exposure_masks, th),
            ("torch ops", degrade_torch, lambda ldr, mode: MASK_MODES[mode](ldr), th),
        )
        for lib, deg_fn, mask_fn, x in runs:
            t_deg = best_of(lambda: deg_fn(x, params), args.repeat)
            ldr, _ = deg_fn(x, params)
            t_mask = best_of(lambda: mask_fn(ldr, preset.mask_mode), args.repeat)
            deg, both = n / t_deg, n / (t_deg + t_mask)
            print(f"{preset_name:>15} {lib:>9}: core degradation {deg:6.1f} frames/s per core "
                  f"({'>=' if deg >= 30 else '< '} the 30 aim), masks ({preset.mask_mode}) {n / t_mask:6.1f}, "
                  f"degradation + masks {both:6.1f} frames/s per core")

    print("camera steps alone (numpy, one thread):")
    ldr, _ = degrade(hdr, sample_params(PRESETS["paper"], 1))
    gains = [{"step": "white_balance", "applied": True, "gains": S.white_balance_gains(4500.0)}]
    lin = np.clip(hdr, 0, 1)
    hue = [{"step": "hue_saturation", "applied": True, "hue": 7.0, "saturation": 0.1}]
    cases = (("white balance", lambda: S.apply_linear(hdr, gains)),
             ("hue/saturation", lambda: S.apply_linear(hdr, hue)),
             ("8-bit sRGB (the quantiser)", lambda: linear_to_ldr8(lin, "round", "srgb")),
             ("8-bit sigmoid curve", lambda: linear_to_ldr8(lin, "round", "sigmoid:0.9:0.6")),
             ("JPEG q75 round trip", lambda: S.jpeg_roundtrip(ldr, 75)))
    cases += tuple((f"{c} CRF 23 round trip", lambda c=c: S.video_roundtrip(ldr, c, crf=23, gop=12))
                   for c in S.video_codecs())
    for label, fn in cases:
        t = best_of(fn, args.repeat)
        print(f"  {label:>30}: {n / t:7.1f} frames/s per core")
    print("whole pipeline per preset (make_ldr: steps, core, masks; numpy; content exposures drawn on the clip):")
    for preset_name, preset in presets.items():
        params = sample_params(preset.with_overrides(noise_probability=1.0), 1, frames=hdr)
        t = best_of(lambda: make_ldr(hdr, "single", preset, params), args.repeat)
        print(f"  {preset_name:>30}: {n / t:7.1f} frames/s per core")
    tmp.cleanup()


if __name__ == "__main__":
    main()
