"""Smoke test of benchmarks/render.py: its functions at a tiny size (32x18, one map, one frame) and its table, whose
ratios and pass flags must come from the measurements (no timing assertions)."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(render_bench):
    return render_bench


@pytest.fixture(scope="module")
def tiny(bench, tmp_path_factory):
    """Both engines at their defaults on one bundled map, one clip of 3 frames, frames 0 and 2 scored against Cycles
    (not consecutive: the reference renders them as a clip of their own)."""
    root = tmp_path_factory.mktemp("bench")
    maps = bench.prepare_maps(["sunrise"], root / "maps")
    return bench.measure_size((32, 18), maps, ["sunrise"], ("rotation_000",), ("rotation_000",), frames=3,
                              quality_frames=2, ref_samples=64, threads=2, scratch=root, log=lambda m: None)


def test_helpers(bench):
    assert bench.spread(9, 3) == [0, 4, 8] and bench.spread(2, 3) == [0, 1] and bench.spread(5, 1) == [0]
    assert bench.lookup_limit(1280, 720, 10.0)["bytes"] == 1280 * 720 * 4 * 12  # the issue's ~44 MB per frame
    assert bench.lookup_limit(1280, 720, 10.0)["seconds"] == pytest.approx(44236800 / 10e9)
    bw = bench.memory_bandwidth(mb=8, repeats=2)
    assert bw["gb_per_s"] > 0.1 and bw["array_mb"] == 8


def test_size_measurement_and_its_table(bench, tiny):
    d, b = tiny["engines"]["direct"], tiny["engines"]["blender"]
    for e in (d, b):
        assert e["frames"] == 3 and e["clip_s"] > 0 and e["s_per_frame"] == pytest.approx(e["clip_s"] / 3)
        assert 10 < e["psnr"] <= 100 and 0 <= e["mean_err"] < 1 and e["worst"].startswith("sunrise/rotation_000/")
    assert "torch" in d["engine"] and "adaptive" in b["engine"]  # each engine's defaults, as clip.json records them
    assert tiny["quality_frames"] == [0, 2] and tiny["reference"]["frames"] == 2
    assert tiny["clip_ratio"] == pytest.approx(b["clip_s"] / d["clip_s"])
    # the direct engine is the pixel filter's expectation: it is closer to converged Cycles than 64 samples are noisy
    assert d["psnr"] > 30

    rows = bench.goal_table({"sizes": [tiny]})
    assert [r["goal"].split(",")[0] for r in rows[:1]] == ["32x18 clip seconds"]
    assert rows[0]["measured"] == f"{b['clip_s'] / d['clip_s']:.1f}x"
    assert rows[0]["pass"] == (b["clip_s"] / d["clip_s"] >= bench.CLIP_RATIO_MIN)
    assert len(rows) == 5 and rows[1]["measured"] == f"{d['psnr']:.1f} dB"
    fast = copy.deepcopy(tiny)
    fast["engines"]["blender"]["clip_s"] = 25 * fast["engines"]["direct"]["clip_s"]
    fast["engines"]["direct"]["psnr"] = 44.0
    rows = bench.goal_table({"sizes": [fast]})
    assert rows[0]["measured"] == "25.0x" and rows[0]["pass"] is True and rows[1]["pass"] is False
    assert "32x18 clip seconds" in bench.format_table(rows)


def test_whole_run_synthetic_and_limit_rows(bench):
    syn = bench.synthetic_maps([64, 128], (32, 18), frames=2, quality_frames=1, program="highlight_zoom_in",
                               threads=1, log=lambda m: None)
    small, large = syn["maps"]
    assert syn["o1_ratio"] == pytest.approx(large["s_per_frame"] / small["s_per_frame"])
    assert "psnr" in large and "psnr" not in small and large["psnr"] > 30 and large["quality_frames"] == [0]
    res = {"whole_runs": [{"size": "320x180", "direct": {"wall_s": 10.0, "clips": 14},
                           "blender": {"wall_s": 60.0, "clips": 14}}],
           "synthetic": syn,
           "limit": {"size": "1280x720", "gb_per_s": 10.0, "direct_s_per_frame": 0.05, "seconds": 0.005,
                     "bytes": 44236800, "ratio": 10.0}}
    rows = {r["goal"].split(" ")[1]: r for r in bench.goal_table(res)}
    assert rows["whole"]["measured"] == "6.0x" and rows["whole"]["pass"] is True
    res["whole_runs"][0]["direct"]["wall_s"] = 20.0
    assert bench.goal_table(res)[0]["measured"] == "3.0x" and bench.goal_table(res)[0]["pass"] is False
    o1 = next(r for r in bench.goal_table(res) if "bounded in map size" in r["goal"])
    assert o1["measured"] == f"{large['s_per_frame'] / small['s_per_frame']:.2f}"
    assert o1["pass"] == (large["s_per_frame"] / small["s_per_frame"] <= bench.O1_RATIO_MAX)
    limit = next(r for r in bench.goal_table(res) if "lookup" in r["goal"])
    assert limit["measured"] == "10x the limit" and limit["pass"] is None
    assert all(math.isfinite(float(r["measured"].split()[0].rstrip("x%"))) for r in bench.goal_table(res))
    assert np.isfinite(syn["maps"][1]["mean_err"])
