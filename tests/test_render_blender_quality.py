"""Blender at its default sampling against converged Cycles, at a tiny size next to small suns.

Every frame must be >= 45 dB mu-law PSNR from Cycles at a converged fixed sample count (another seed) and within 1%
in mean; Cycles' old fixed 16 samples must fail the mean bound on the small sun (the test can fail). The reference
uses 4096 samples, not 1024: at 64x36 a sub-pixel sun lights a pixel only through the pixel filter's rare tail
samples, and 1024 is 45.5 dB from the filter's expectation (the direct engine) there, 55 dB at 4096
(benchmarks/cycles_quality.py).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmarks import cycles_quality as bench
from hdr.io import read_image, write_exr
from render import analysis
from render.engines import HdriSource, get_engine
from render.engines import blender
from render.job import HdriTask, RenderSettings, render_hdri
from render.programs import plan_clip

W, H, FRAMES = 64, 36, 3
PROGRAMS = ("highlight_zoom_in", "rotation_000")
REFERENCE_SPP = 4096


def _render(path, img, plan, tmp, **options) -> tuple[list[np.ndarray], dict]:
    eng = get_engine("blender", threads=2, **options)
    eng.load(HdriSource(path=path, pixels=None, width=img.shape[1], height=img.shape[0]))
    frames = [np.maximum(f, 0.0) for f in eng.render(plan, W, H, tmp)]  # the job clamps each pixel at 0
    info = eng.info()
    eng.close()
    return frames, info


@pytest.fixture(scope="module")
def renders(bundled_hdris, tmp_path_factory):
    """Per (map, program): the cameras, the default render, the old fixed-16 render, the reference, the direct
    engine's expectation, and the default render's info()."""
    tmp = tmp_path_factory.mktemp("bquality")
    write_exr(tmp / "sun.exr", bench.small_sun_map())
    maps = {"sun": tmp / "sun.exr", "sunrise": bundled_hdris / "sunrise.exr"}
    out = {}
    for name, path in maps.items():
        img = read_image(path)
        aims = analysis.aims(*analysis.luminance_map(img))
        for program in PROGRAMS:
            plan = plan_clip(program, FRAMES, 0, name, aims)
            default, info = _render(path, img, plan, tmp)
            old, _ = _render(path, img, plan, tmp, samples=16, noise_threshold=0.0)
            ref, _ = _render(path, img, dataclasses.replace(plan, seed=plan.seed + 1), tmp, samples=REFERENCE_SPP,
                             noise_threshold=0.0)
            meta = {"frames": [{"index": f.index, "focal_mm": f.focal_mm, "rotation_euler": f.rotation_euler}
                               for f in plan.frames]}
            out[name, program] = {"plan": plan, "default": default, "old": old, "ref": ref, "info": info,
                                  "direct": bench.direct_expectation(img, meta, W, H), "path": path, "img": img}
    return out


def _errors(runs, key):
    return [(name, program, i, psnr, err) for (name, program), r in runs.items()
            for i, (psnr, err) in enumerate(bench.frame_errors(r[key], r["ref"]))]


def test_the_reference_is_converged(renders):
    for (name, program), r in renders.items():
        for psnr, err in bench.frame_errors(r["ref"], r["direct"]):
            assert psnr >= 50 and abs(err) <= 0.005, (name, program, psnr, err)


def test_defaults_are_45_db_and_1_percent_from_converged_cycles(renders):
    errors = _errors(renders, "default")
    print("default sampling (map, program, frame, dB, mean error):",
          [(n, p, i, round(db, 1), round(100 * e, 2)) for n, p, i, db, e in errors])
    for name, program, i, psnr, err in errors:
        assert psnr >= 45.0, (name, program, i, psnr)
        assert abs(err) <= 0.01, (name, program, i, err)


def test_the_old_fixed_16_samples_fail_next_to_the_small_sun(renders):
    errors = _errors(renders, "old")
    print("fixed 16 (map, program, frame, dB, mean error):",
          [(n, p, i, round(db, 1), round(100 * e, 2)) for n, p, i, db, e in errors])
    worst = max(abs(e) for n, _, _, _, e in errors if n == "sun")
    assert worst > 0.05, worst  # measured 30%: a sub-pixel sun is hit by too few of 16 filter samples
    assert min(db for *_, db, _ in errors) < 45.0


def test_info_records_the_sampling(renders):
    info = renders["sun", "highlight_zoom_in"]["info"]
    s = info["sampling"]
    assert s["adaptive"] is True and s["noise_threshold"] == blender.NOISE_THRESHOLD > 0
    assert s["max_samples"] == info["samples"] == blender.SAMPLES and s["min_samples"] == blender.MIN_SAMPLES
    assert s["min_samples_used"] == blender.adaptive_min_samples(blender.NOISE_THRESHOLD, blender.MIN_SAMPLES)
    assert s["samples_per_pixel_at_least"] == min(blender.SAMPLES, blender.first_check(s["min_samples_used"]))
    fixed = get_engine("blender", samples=16, noise_threshold=0.0)
    assert fixed.sampling() == {"adaptive": False, "samples": 16}
    assert blender.adaptive_min_samples(0.01) == 64 and blender.adaptive_min_samples(0.1) == 32  # Cycles' comment
    assert [blender.first_check(m) for m in (4, 14, 15, 16, 64)] == [16, 16, 32, 32, 80]


def test_adaptive_sampling_is_deterministic_for_a_seed(renders, tmp_path):
    r = renders["sun", "highlight_zoom_in"]
    again, _ = _render(r["path"], r["img"], r["plan"], tmp_path)
    for a, b in zip(again, r["default"]):
        np.testing.assert_array_equal(a, b)
    other, _ = _render(r["path"], r["img"], dataclasses.replace(r["plan"], seed=r["plan"].seed + 7), tmp_path)
    assert any(not np.array_equal(a, b) for a, b in zip(other, r["default"]))  # the seed does change the noise


def test_clip_json_records_the_sampling(bundled_hdris, tmp_path):
    s = RenderSettings(width=32, height=18, frames=1, programs=("rotation_000",), threads=2)
    res = render_hdri(HdriTask(str(bundled_hdris), "city.exr", "city", str(tmp_path), s))
    assert res.count("rendered") == 1, res
    meta = json.loads((tmp_path / "city/rotation_000/clip.json").read_text())
    sampling = meta["engine"]["sampling"]
    assert sampling["adaptive"] is True and sampling["noise_threshold"] > 0
    assert sampling["max_samples"] == meta["engine"]["samples"]
