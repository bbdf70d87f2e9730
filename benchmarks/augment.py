"""Augment benchmark: frames per second per core of the full degradation (exposure, AR(1) noise, sRGB, clip,
8-bit) plus the paper masks, at 1280x720, numpy and torch-CPU, measured in this one run.

    python benchmarks/augment.py [--frames 9]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.degrade import PRESETS, degrade, sample_params  # noqa: E402
from augment.masks import exposure_masks_paper  # noqa: E402


def bench(fn, repeat=3):
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=9)
    args = p.parse_args()
    import torch

    cores = os.cpu_count()
    torch.set_num_threads(cores)
    hdr = (np.random.default_rng(0).random((args.frames, 720, 1280, 3), dtype=np.float32) * 4)
    params = sample_params(PRESETS["paper"], 1)
    print(f"{args.frames} frames at 1280x720, {cores} cores (torch threads {torch.get_num_threads()})")
    for name, x in (("numpy", hdr), ("torch-cpu", torch.from_numpy(hdr))):
        t_deg = bench(lambda: degrade(x, params))
        t_all = bench(lambda: exposure_masks_paper(degrade(x, params)[0]))
        fps = args.frames / t_all
        print(f"{name:>9}: degrade {args.frames / t_deg:6.1f} frames/s, degrade+masks {fps:6.1f} frames/s "
              f"= {fps / cores:5.1f} frames/s per core")


if __name__ == "__main__":
    main()
