"""The direct engine against Cycles: same camera programs, same frames."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluate.metrics import psnr_t_frame
from hdr.io import read_image, write_exr
from render import camera
from render.engines.direct import filter_weights, quality_sampling, sampling_for, texels_per_pixel
from render.job import HdriTask, RenderSettings, render_hdri
from render.programs import PROGRAMS
from tests.test_render_cli import cli

W, H, FRAMES = 128, 64, 3
CYCLES_SPP = 1024  # converged: 2048 vs 8192 samples differ by < 0.3% in frame mean on these maps


def mu_psnr(ref, test) -> float:
    """The toolkit's mu-law PSNR (PSNR_T, ``evaluate.metrics.psnr_t_frame``: normalised by the reference), reference
    first -- the same function the render benchmark and the evaluation use."""
    return psnr_t_frame(test, ref)


@pytest.fixture(scope="module")
def cycles_and_direct(bundled_hdris, tmp_path_factory):
    root = tmp_path_factory.mktemp("equiv")
    for name in ("sunrise", "city", "night"):
        for eng, spp, backend in (("blender", CYCLES_SPP, "numpy"), ("direct", 16, "numpy"), ("direct", 16, "torch"),
                                  ("direct", None, "auto")):
            s = RenderSettings(width=W, height=H, frames=FRAMES, samples=spp, engine=eng, backend=backend, threads=2)
            res = render_hdri(HdriTask(str(bundled_hdris), f"{name}.exr", name, str(root / f"{eng}-{backend}"), s))
            assert res.error is None and res.count("rendered") == len(PROGRAMS), res
    return root


@pytest.mark.parametrize("name", ["sunrise", "city", "night"])
def test_direct_frames_equal_cycles(cycles_and_direct, name):
    root = cycles_and_direct
    for program in PROGRAMS:
        meta = json.loads((root / "direct-numpy" / name / program / "clip.json").read_text())
        assert meta["engine"]["name"] == "direct" and meta["settings"]["engine"] == "direct"
        for i in range(FRAMES):
            f = f"frame_{i:04d}.exr"
            cyc = read_image(root / "blender-numpy" / name / program / f)
            direct = read_image(root / "direct-numpy" / name / program / f)
            psnr = mu_psnr(cyc, direct)
            ratio = direct.mean() / cyc.mean()
            assert psnr >= 40.0, (name, program, i, psnr)
            assert abs(ratio - 1) <= 0.01, (name, program, i, ratio)
            # the torch path computes the same frames
            torch_frame = read_image(root / "direct-torch" / name / program / f)
            # (float32 ray angles in torch, float64 in numpy: next to a sun 2e-4 apart)
            np.testing.assert_allclose(torch_frame, direct, rtol=5e-4, atol=1e-6 * direct.max())
            fr = meta["frames"][i]
            assert fr["texels_per_pixel"] == pytest.approx(texels_per_pixel(fr["focal_mm"], W, H, 512))
            assert fr["mip_level"] == 0
            # the defaults (quality rule, torch): the bar, >= 45 dB and the mean within 1%
            default = read_image(root / "direct-auto" / name / program / f)
            assert mu_psnr(cyc, default) >= 45.0, (name, program, i, mu_psnr(cyc, default))
            assert abs(default.mean() / cyc.mean() - 1) <= 0.01, (name, program, i)


def test_default_sampling_on_a_detailed_map_with_mip_levels_equals_cycles(tmp_path):
    """An 8k map with texture down to the texel and small suns, seen at 160x90 from 16 texels per pixel (beyond the
    per-frame budget at level 0: the quality rule takes mip levels) to 4 (level 0): every frame >= 45 dB from
    converged Cycles, the mean within 1%."""
    from benchmarks.synthetic_maps import detailed_map

    write_exr(tmp_path / "detail.exr", detailed_map(8192), compression="none")
    for eng, spp in (("blender", CYCLES_SPP), ("direct", None)):
        s = RenderSettings(width=160, height=90, frames=3, samples=spp, engine=eng, threads=2,
                           programs=("highlight_zoom_in", "rotation_000"))
        res = render_hdri(HdriTask(str(tmp_path), "detail.exr", "detail", str(tmp_path / eng), s))
        assert res.count("rendered") == 2, res
    levels = set()
    for program in ("highlight_zoom_in", "rotation_000"):
        meta = json.loads((tmp_path / "direct/detail" / program / "clip.json").read_text())
        assert meta["engine"]["samples"] == "auto" and meta["engine"]["backend"] == "torch"
        for fr in meta["frames"]:
            levels.add(fr["mip_level"])
            cyc = read_image(tmp_path / "blender/detail" / program / fr["file"])
            direct = read_image(tmp_path / "direct/detail" / program / fr["file"])
            assert mu_psnr(cyc, direct) >= 45.0, (program, fr["index"], mu_psnr(cyc, direct))
            assert abs(direct.mean() / cyc.mean() - 1) <= 0.01, (program, fr["index"])
    assert 0 in levels and max(levels) >= 1  # both the level-0 and the mip path were measured


def test_single_bright_texel_lands_where_the_camera_model_says(tmp_path):
    mw, mh = 1024, 512
    img = np.full((mh, mw, 3), 0.01, np.float32)
    row, col = 200, 600  # 19.5 deg above the horizon, 31 deg to the right of +X
    img[row, col] = 5000.0
    write_exr(tmp_path / "dot.exr", img)
    s = RenderSettings(width=96, height=48, frames=5, samples=16, engine="direct", programs=("rotation_240",))
    res = render_hdri(HdriTask(str(tmp_path), "dot.exr", "dot", str(tmp_path / "out"), s))
    assert res.count("rendered") == 1
    meta = json.loads((tmp_path / "out/dot/rotation_240/clip.json").read_text())
    az, el = camera.equirect_to_azel(col + 0.5, row + 0.5, mw, mh)
    d = camera.direction(float(az), float(el))
    seen = 0
    for fr in meta["frames"]:
        frame = read_image(tmp_path / "out/dot/rotation_240" / fr["file"])
        dc = camera.euler_matrix(fr["rotation_euler"]).T @ d  # camera space: looks down -Z, +Y up
        sw, sh = camera.sensor_size(96, 48)
        x = dc[0] / -dc[2] * fr["focal_mm"]
        y = dc[1] / -dc[2] * fr["focal_mm"]
        expect_col = (x / sw + 0.5) * 96
        expect_row = (0.5 - y / sh) * 48
        if dc[2] >= 0 or not (-2 < expect_col < 98 and -2 < expect_row < 50):
            assert frame.max() < 1.0  # out of view (with the filter's reach): nothing bright anywhere
            continue
        if not (2 < expect_col < 94 and 2 < expect_row < 46):
            continue  # at the border: partly in view
        r, c = np.unravel_index(frame[..., 0].argmax(), frame.shape[:2])
        assert abs(c + 0.5 - expect_col) <= 1.0 and abs(r + 0.5 - expect_row) <= 1.0, (r, c, expect_row, expect_col)
        seen += 1
    assert seen >= 2  # the rotation sweeps the texel through the view


def test_prefilter_removes_aliasing_of_a_fine_pattern(tmp_path):
    mw, mh = 4096, 2048
    yy, xx = np.mgrid[0:mh, 0:mw]
    img = np.repeat((((yy + xx) % 2) * 2.0).astype(np.float32)[..., None], 3, -1)  # 1-texel checkerboard, mean 1
    write_exr(tmp_path / "checker.exr", img)
    del img, yy, xx
    s = RenderSettings(width=32, height=16, frames=2, samples=4, engine="direct", programs=("rotation_000",))
    render_hdri(HdriTask(str(tmp_path), "checker.exr", "checker", str(tmp_path / "out"), s))
    meta = json.loads((tmp_path / "out/checker/rotation_000/clip.json").read_text())
    fr = meta["frames"][0]
    assert fr["texels_per_pixel"] > 20 and fr["mip_level"] >= 1
    frame = read_image(tmp_path / "out/checker/rotation_000/frame_0000.exr")
    np.testing.assert_allclose(frame, 1.0, atol=0.02)  # the checkerboard averages out instead of aliasing


def test_filter_and_sampling_rules():
    m, w = filter_weights(4)
    assert m == 6 and len(w) == 4 + 2 * m and math.isclose(w.sum(), 1.0)
    np.testing.assert_allclose(w, w[::-1])  # symmetric about the pixel centre
    assert filter_weights(1) == (0, pytest.approx(np.ones(1)))
    assert sampling_for(0.3, 4) == (4, 0)  # magnified map: the requested grid
    assert sampling_for(2.0, 4) == (10, 0)  # samples at most 0.2 texel apart
    assert sampling_for(3.2, 4, 4) == (4, 2)  # a lower cap: mip levels instead of samples
    k, level = sampling_for(100.0, 4)
    assert k == 16 and level >= 1 and 100.0 / 2**level / k <= 0.2
    assert sampling_for(5.0, 1) == (1, 0)  # one sample: the pixel centre, like Cycles
    # the default: samples <= 0.25 texel apart, at least 2x2 per pixel, at most 9 x 1280 x 720 per frame
    assert quality_sampling(0.2, 1280, 720) == (2, 0) and quality_sampling(0.7, 1280, 720) == (3, 0)
    assert quality_sampling(1.9, 128, 64) == (8, 0)
    # past the budget, the full-resolution map while the budget samples it <= 1/3 texel apart: a 4k map at 720p (0.8
    # texels per pixel) at the budget's 3x3 (its 2x2-box level at 2x2 was 49 dB from the dense expectation next to a
    # small sun, level 0 at 3x3 69 dB); a 4k map at 320x180 at 12x12
    assert quality_sampling(0.8, 1280, 720) == (3, 0) and quality_sampling(1.01, 1280, 720) == (3, 1)
    assert quality_sampling(3.3, 320, 180) == (12, 0) and quality_sampling(4.1, 320, 180)[1] == 1
    for w, h in ((1280, 720), (320, 180)):  # a 16k map: mip levels keep the cost per frame bounded
        tpp_16k = texels_per_pixel(18.0, w, h, 8192)
        k, level = quality_sampling(tpp_16k, w, h)
        assert level >= 1 and (k * w) * (k * h) <= max(9 * 1280 * 720, 4 * w * h)
        assert tpp_16k / 2**level / k <= 0.5  # samples <= 0.5 texel apart on the prefiltered level ...
        assert quality_sampling(tpp_16k, w, h)[1] == level and tpp_16k / 2 ** (level - 1) / k > 0.5  # ... the finest


def test_cli_direct_engine_through_ray(hdri_dir, tmp_path):
    src = hdri_dir("courtyard", "studio")
    out = tmp_path / "out"
    args = ["--hdris", src, "--out", out, "--engine", "direct", "--programs", "shadow,rotation_120", "--frames", "3",
            "--resolution", "32x16", "--samples", "4", "--cpus-per-task", "1"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("rendered 6 clips")
    meta = json.loads((out / "studio/rotation_120/clip.json").read_text())
    assert meta["engine"]["name"] == "direct" and meta["host"].get("node_id")
    r = cli(*args)
    assert r.returncode == 0 and "rendered 0 clips, 6 already complete" in r.stderr
    # the same output folder cannot silently switch engines
    r = cli(*[a if a != "direct" else "blender" for a in args])
    assert r.returncode == 1 and "engine 'direct' -> 'blender'" in (out / "render_failures.json").read_text()


def test_numpy_and_torch_lookups_agree_at_the_seam_and_the_poles():
    import torch

    from render.engines.direct import _lookup, _Ops

    rng = np.random.default_rng(1)
    img = rng.random((8, 16, 3)).astype(np.float32)
    col = np.concatenate([[0.0, 0.2, 15.9, 16.0, 7.3, 0.5], rng.random(200) * 16]).astype(np.float32)[None]
    row = np.concatenate([[0.0, 0.1, 7.9, 8.0, 4.0, 0.25], rng.random(200) * 8]).astype(np.float32)[None]
    np_ops, t_ops = _Ops("numpy", "cpu"), _Ops("torch", "cpu")
    a = _lookup(np_ops, {"img": img}, col, row)
    timg = torch.from_numpy(img)
    b = _lookup(t_ops, {"img": timg, "padded": t_ops.padded_chw(timg)}, torch.from_numpy(col), torch.from_numpy(row))
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-5, atol=1e-6)
    # at the top edge (row 0) the value is the mean of the first row and its mirror half a turn away
    expect = 0.5 * (img[0, 0] + img[0, 8]) * 0.5 + 0.5 * (img[0, 15] + img[0, 7]) * 0.5
    np.testing.assert_allclose(a[0, 0], expect, rtol=1e-5)


def test_direct_engine_renders_in_the_driver_where_a_local_ray_buys_nothing(hdri_dir, tmp_path):
    from types import SimpleNamespace

    from render.run import in_process_reason

    def args(**kw):
        return SimpleNamespace(**{"no_ray": False, "ray": False, "engine": "direct", "address": None, **kw})

    assert "one task at a time here (2 cores, 2 per task)" in in_process_reason(args(), 2, 8, cores=2)
    assert "one HDRI" in in_process_reason(args(), 4, 1, cores=16)
    assert in_process_reason(args(), 4, 8, cores=16) is None  # 4 tasks at once: Ray
    assert in_process_reason(args(), 1, 2, cores=2) is None
    assert in_process_reason(args(engine="blender"), 2, 1, cores=2) is None  # Blender keeps its recycled workers
    assert in_process_reason(args(ray=True), 2, 1, cores=2) is None
    assert in_process_reason(args(address="10.0.0.1:6379"), 2, 1, cores=2) is None

    out = tmp_path / "out"
    r = cli("--hdris", hdri_dir("studio"), "--out", out, "--engine", "direct", "--programs", "rotation_000",
            "--frames", "2", "--resolution", "32x16")
    assert r.returncode == 0, r.stderr
    assert "rendering in this process: one HDRI to render" in r.stderr
    assert json.loads((out / "studio/rotation_000/clip.json").read_text())["host"].get("node_id") is None
    record = json.loads(next((out / "_runs").glob("render-*.json")).read_text())
    assert record["execution"]["ray"] is False and "one HDRI" in record["execution"]["why"]
    r = cli("--hdris", hdri_dir("studio"), "--out", out, "--ray", "--no-ray")
    assert r.returncode == 2 and "contradict" in r.stderr
