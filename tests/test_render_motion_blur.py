"""Motion blur (``--shutter``): the camera's own motion integrated over the shutter, in HDR, by both engines."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluate.metrics import psnr_t_frame
from hdr.io import read_image, write_exr
from render import analysis, camera
from render.engines import HdriSource, get_engine
from render.job import HdriTask, RenderSettings, render_hdri
from render.programs import ClipPlan, FrameCamera, plan_clip

W, H, FRAMES, SHUTTER = 64, 36, 4, 0.5
CYCLES_SPP = 256  # motion blur adds time to Cycles' sampling noise; at 256 samples it stays far below 40 dB


def test_keyed_camera_and_shutter_poses_follow_blender_linear_keys():
    keys = [20.0, 30.0, 50.0]
    assert camera.keyed_at(keys, 0.5) == pytest.approx(25.0)
    assert camera.keyed_at(keys, -0.25) == pytest.approx(17.5)  # linear extrapolation: the motion continues
    assert camera.keyed_at(keys, 2.25) == pytest.approx(55.0)
    eulers = [camera.look_euler(math.radians(10.0 * i), 0.0) for i in range(3)]
    poses = camera.shutter_poses(keys, eulers, 1, 0.5, 8)
    yaws = [math.degrees(math.atan2(*(r @ [0, 0, -1])[[1, 0]])) for _, r in poses]
    np.testing.assert_allclose(yaws, 7.5 + 5.0 * (np.arange(8) + 0.5) / 8, atol=1e-9)  # uniform over the shutter
    # the image-plane scale (1/focal) is linear within each half of the shutter, as in Cycles' perspective motion
    inv = [1 / f for f, _ in poses[:4]]
    np.testing.assert_allclose(np.diff(inv), np.diff(inv)[0], rtol=1e-9)
    assert 1 / inv[0] > 27.5 and 1 / inv[-1] < 30.0
    assert camera.shutter_samples(keys, eulers, 1, 0.0, W, H) == 1
    assert camera.shutter_samples([24.0] * 3, [eulers[0]] * 3, 1, 0.5, W, H) == 1  # no motion, no sub-frames


def test_streak_length_of_a_point_light_matches_the_rotation(tmp_path):
    """A point light panned across the view: the blur adds the variance of a uniform streak, L^2 / 12, with L the
    angle the camera turns while the shutter is open, in pixels."""
    mw, mh = 2048, 1024
    img = np.zeros((mh, mw, 3), np.float32)
    img[mh // 2 - 1 : mh // 2 + 1, mw // 2 - 1 : mw // 2 + 1] = 1000.0  # on the horizon at azimuth 0
    yaw_step = 12.0
    cams = tuple(FrameCamera(i, 30.0, camera.look_euler(math.radians(yaw_step * (i - 1)), 0.0)) for i in range(3))
    plan = ClipPlan("pan", "rotation_000", 0, cams)
    frames = {}
    for shutter in (0.0, 0.5):
        eng = get_engine("direct", samples=16, shutter=shutter)
        eng.load(HdriSource(None, img, mw, mh))
        frames[shutter] = list(eng.render(plan, 96, 48, tmp_path))[1]
        eng.close()

    def moments(f):
        w = f[..., 1].sum(0)
        x = np.arange(w.size) + 0.5
        m = (w * x).sum() / w.sum()
        return m, (w * (x - m) ** 2).sum() / w.sum()

    (m0, v0), (m1, v1) = moments(frames[0.0]), moments(frames[0.5])
    px_per_rad = 96 / camera.sensor_size(96, 48)[0] * 30.0
    length = math.radians(yaw_step * 0.5) * px_per_rad
    assert length > 5  # a real streak
    assert m1 == pytest.approx(m0, abs=0.05)  # centred on the frame time
    assert v1 - v0 == pytest.approx(length**2 / 12, rel=0.03)
    assert frames[0.5].sum() == pytest.approx(frames[0.0].sum(), rel=1e-3)  # blur moves energy, never adds it


@pytest.fixture(scope="module")
def blurred(bundled_hdris, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blur")
    path = bundled_hdris / "city.exr"
    img = read_image(path)
    aims = analysis.aims(*analysis.luminance_map(img))
    out = {}
    for program in ("rotation_000", "highlight_zoom_in"):
        plan = plan_clip(program, FRAMES, 0, "city", aims)
        for name, kw, src in (("direct", {"samples": 4, "backend": "torch"}, HdriSource(None, img, 1024, 512)),
                              ("blender", {"samples": CYCLES_SPP, "threads": 2}, HdriSource(path, None, 1024, 512))):
            for shutter in (0.0, SHUTTER):
                eng = get_engine(name, shutter=shutter, **kw)
                eng.load(src)
                out[program, name, shutter] = list(eng.render(plan, W, H, tmp))
                if name == "blender":
                    out[program, "camera_check", shutter] = eng.camera_check
                eng.close()
    return out


@pytest.mark.parametrize("program", ["rotation_000", "highlight_zoom_in"])
def test_direct_and_cycles_motion_blur_agree(blurred, program):
    check = blurred[program, "camera_check", SHUTTER]
    assert check["max_rotation_matrix_error"] < 1e-5 and check["max_lens_rel_error"] < 1e-5  # at open and close too
    blur_vs_sharp = []
    for i in range(FRAMES):
        direct, cycles = blurred[program, "direct", SHUTTER][i], blurred[program, "blender", SHUTTER][i]
        assert psnr_t_frame(direct, cycles) >= 40.0, (program, i, psnr_t_frame(direct, cycles))
        assert direct.mean() / cycles.mean() == pytest.approx(1.0, abs=0.01)
        blur_vs_sharp.append(psnr_t_frame(blurred[program, "direct", 0.0][i], direct))
    # not vacuous: the blur is far larger than the engines' disagreement
    assert min(blur_vs_sharp) < 35.0, blur_vs_sharp


def test_clip_json_records_the_shutter_and_reruns_respect_it(tmp_path):
    img = np.full((64, 128, 3), 0.5, np.float32)
    img[20:24, 60:64] = 200.0
    write_exr(tmp_path / "sun.exr", img)
    s = RenderSettings(width=32, height=18, frames=3, samples=4, engine="direct", programs=("rotation_000",),
                       shutter=0.5)
    res = render_hdri(HdriTask(str(tmp_path), "sun.exr", "sun", str(tmp_path / "out"), s))
    assert res.count("rendered") == 1, res
    meta = json.loads((tmp_path / "out/sun/rotation_000/clip.json").read_text())
    assert meta["camera"]["shutter"] == 0.5 and "CENTER" in meta["camera"]["shutter_model"]
    assert meta["settings"]["shutter"] == 0.5 and "motion_blur" in meta["engine"]
    assert all(f["shutter_samples"] >= 2 for f in meta["frames"])
    sharp = RenderSettings(width=32, height=18, frames=3, samples=4, engine="direct", programs=("rotation_000",))
    res = render_hdri(HdriTask(str(tmp_path), "sun.exr", "sun", str(tmp_path / "out"), sharp))
    assert res.clips["rotation_000"]["status"] == "conflict"  # never silently re-rendered without the blur
    with pytest.raises(ValueError, match="--shutter"):
        RenderSettings(shutter=1.5)


def test_blurred_frames_of_a_ringing_sun_agree_between_engines(tmp_path):
    """The signed map's two-part Blender render (positive minus negative part) with motion blur: the negative part
    is rendered on the same keyed camera, only for the frames whose shutter sweep can see the negatives."""
    from benchmarks import negative_texels as bench

    (tmp_path / "in").mkdir()
    write_exr(tmp_path / "in" / "sun.exr", bench.ringing_sun_map())
    frames = {}
    for engine, spp in (("direct", 16), ("blender", 512)):  # 128: 39.8 dB from Cycles noise near the sun
        s = RenderSettings(width=W, height=H, frames=3, engine=engine, programs=("highlight_zoom_in",), threads=2,
                           samples=spp, shutter=SHUTTER, backend="torch")
        res = render_hdri(HdriTask(str(tmp_path / "in"), "sun.exr", "sun", str(tmp_path / engine), s))
        assert res.count("rendered") == 1, res
        d = tmp_path / engine / "sun" / "highlight_zoom_in"
        meta = json.loads((d / "clip.json").read_text())
        frames[engine] = [read_image(d / f["file"]) for f in meta["frames"]]
        if engine == "blender":
            assert meta["output"]["negative_part"]["frames"] == [0, 1, 2]  # zoomed onto the sun: all see it
    for a, b in zip(frames["direct"], frames["blender"]):
        assert a.mean() / b.mean() == pytest.approx(1.0, abs=0.01)
        assert psnr_t_frame(a, b) >= 40.0
