"""Issue 15 item 2: highlight aims reach a sun at any elevation (85 deg, the zenith), and both engines render the
zoom toward it with the recorded camera, "up" included."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hdr.color import luminance
from hdr.io import read_image, write_exr
from render import analysis, camera
from render.job import HdriTask, RenderSettings, render_hdri
from render.programs import plan_clip
from tests.test_render_direct import mu_psnr

MW, MH = 512, 256  # map
W, H = 64, 36  # frames
SUN = {"sun85": (37.0, 85.0), "sun90": (0.0, 90.0)}  # (azimuth, elevation) in degrees
MARKER_OFF_DEG = 14.0  # a dim marker this far from the sun toward the recorded image "up": visible in frame 0 only


def _dirs(h=MH, w=MW):
    return analysis.texel_grid(h, w)[0]


def _disc(img, d, centre, radius_deg, value):
    img[np.degrees(np.arccos(np.clip(d @ centre, -1, 1))) < radius_deg] = value


def sky_map(sun_az, sun_el, marker=None):
    """Sky gradient (brighter up and toward +X), a 1-deg sun (5e3), and a decoy lower down whose texels are brighter
    than the sun's (1e4) but whose blurred luminance is half of it."""
    d = _dirs()
    base = 0.3 + 0.35 * (d[..., 2] + 1) + 0.2 * d[..., 0]
    img = np.stack([base * 0.8, base, base * 1.3], -1).astype(np.float32)
    sun = camera.direction(math.radians(sun_az), math.radians(sun_el))
    _disc(img, d, sun, 1.0, 5e3)
    _disc(img, d, camera.direction(math.radians(-100), math.radians(15)), 0.5, 1e4)
    if marker is not None:
        _disc(img, d, marker, 0.8, 200.0)
    return img, sun


def _angle_deg(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("name", sorted(SUN))
def test_highlight_aim_reaches_a_high_sun_past_the_decoy(name):
    img, sun = sky_map(*SUN[name])
    aim = analysis.aims(luminance(img), 1)["brightest"]
    assert _angle_deg(aim.direction, sun) < 0.3, aim
    assert aim.elevation_range_deg == (-90.0, 90.0)
    if name == "sun90":  # exactly the zenith, its azimuth recorded as undefined (0 used)
        assert aim.direction == (0.0, 0.0, 1.0) and aim.elevation_deg == 90.0
        assert aim.azimuth_defined is False and aim.azimuth_deg == 0.0
    else:
        assert aim.azimuth_defined and abs(aim.azimuth_deg - 37.0) < 3.0
    # the old search (band stopping at +80 deg) went to the decoy, 70+ deg away
    old = analysis.find_aim(luminance(img), 1, "brightest", 2.0, (-45.0, 80.0))
    assert _angle_deg(old.direction, sun) > 60


def test_sphere_mode_is_exact_at_the_pole_where_the_equirect_blur_is_not():
    d, omega = analysis.texel_grid(MH, MW)
    lum = np.full((MH, MW), 1.0, np.float32)
    sun = camera.direction(0.0, math.radians(88.5))
    _disc(lum, d, sun, 1.0, 5e3)
    blurred = analysis.sphere_blur(lum, 2.0)
    r, c = np.unravel_index(np.argmax(blurred), blurred.shape)
    coarse = d[r, c]
    x, value, _ = analysis.sphere_mode(lum, coarse, 2.0)
    assert _angle_deg(x, sun) < 0.1 < _angle_deg(coarse, sun)

    def gauss_blur(y):  # brute force over the whole sphere: Gaussian of the angle, solid-angle weighted
        k = np.exp(-np.arccos(np.clip(d @ y, -1, 1)) ** 2 / (2 * math.radians(2.0) ** 2)) * omega[:, None]
        return float((k * lum).sum() / k.sum())

    assert gauss_blur(x) > gauss_blur(coarse) and value == pytest.approx(gauss_blur(x), rel=0.01)
    for axis in np.eye(3):  # a local maximum of the spherical blur
        y = x + math.radians(0.2) * np.cross(x, axis)
        assert gauss_blur(y / np.linalg.norm(y)) < gauss_blur(x)


def test_shadow_search_still_excludes_the_nadir():
    d = _dirs()
    lum = np.full((MH, MW), 2.0, np.float32)
    _disc(lum, d, np.array([0.0, 0.0, -1.0]), 15, 1e-4)  # dark tripod around the nadir
    _disc(lum, d, np.array([0.0, 0.0, 1.0]), 1, 1e4)  # sun at the zenith
    _disc(lum, d, camera.direction(1.0, 0.1), 8, 0.05)  # a dark region in the scene
    a = analysis.aims(lum, 1)
    assert a["brightest"].direction == (0.0, 0.0, 1.0)
    assert _angle_deg(a["darkest"].direction, camera.direction(1.0, 0.1)) < 3
    lo, hi = a["darkest"].elevation_range_deg
    assert lo >= -35 and lo <= a["darkest"].elevation_deg <= hi


@pytest.mark.parametrize("az", [0.0, 0.7, -2.0, math.pi])
def test_camera_looking_straight_up_or_down(az):
    up_e = camera.look_euler(az, math.pi / 2)
    np.testing.assert_allclose(camera.view_direction(up_e), [0, 0, 1], atol=1e-12)
    assert up_e[1] == 0.0  # XYZ Euler with Y = 0: never near gimbal lock (Y = +-90 deg)
    # image up at the zenith = the limit of a level camera facing ``az`` tilted up: it points to az + 180 deg
    np.testing.assert_allclose(camera.up_vector(up_e), [-math.cos(az), -math.sin(az), 0], atol=1e-12)
    near = camera.up_vector(camera.look_euler(az, math.radians(89.999)))
    assert _angle_deg(near, camera.up_vector(up_e)) < 0.01  # continuous
    down = camera.look_euler(az, -math.pi / 2)
    np.testing.assert_allclose(camera.view_direction(down), [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(camera.up_vector(down), [math.cos(az), math.sin(az), 0], atol=1e-12)
    for e in (up_e, down):
        assert abs(camera.right_vector(e)[2]) < 1e-12  # image right stays horizontal


def test_pole_aim_records_its_orientation():
    img, _ = sky_map(*SUN["sun90"])
    plan = plan_clip("highlight_zoom_in", 3, 0, "m", analysis.aims(luminance(img), 1))
    o = plan.params["orientation"]
    assert o["azimuth_defined"] is False and o["azimuth_used_deg"] == 0.0 and "pole_convention" in o
    np.testing.assert_allclose(o["image_up_world"], [-1, 0, 0], atol=1e-12)  # toward -X, as the rule says
    for fc in plan.frames:
        np.testing.assert_allclose(fc.view_direction(), [0, 0, 1], atol=1e-12)
        np.testing.assert_allclose(camera.up_vector(fc.rotation_euler), o["image_up_world"], atol=1e-12)


def _centroid_direction(frame, focal, euler):
    """Direction of the brightness centroid of a frame (pixels above 20% of the peak, sky level removed), through
    the camera model."""
    lum = luminance(frame).astype(np.float64)
    w = np.where(lum > 0.2 * lum.max(), lum - np.median(lum), 0.0)
    rays = camera.pixel_rays(W, H, focal, euler).astype(np.float64)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    return (w[..., None] * rays).sum((0, 1))


def _project(d, focal, euler):
    """(col, row) where world direction d lands in a W x H frame (continuous, pixel centres at i + 0.5)."""
    dc = camera.euler_matrix(euler).T @ d
    sw, sh = camera.sensor_size(W, H)
    return (dc[0] / -dc[2] * focal / sw + 0.5) * W, (0.5 - dc[1] / -dc[2] * focal / sh) * H


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("zenith")
    src = root / "maps"
    src.mkdir()
    markers = {}
    for name, (az, el) in SUN.items():
        img, sun = sky_map(az, el)
        aim = analysis.aims(luminance(img), 1)["brightest"]
        euler = camera.look_euler(math.radians(aim.azimuth_deg), math.radians(aim.elevation_deg))
        up = camera.up_vector(euler)  # the marker sits toward the image up the clip will record
        markers[name] = marker = math.cos(math.radians(MARKER_OFF_DEG)) * sun + math.sin(
            math.radians(MARKER_OFF_DEG)) * up
        write_exr(src / f"{name}.exr", sky_map(az, el, marker)[0])
    for eng, spp in (("blender", 256), ("direct", 16)):
        s = RenderSettings(width=W, height=H, frames=3, samples=spp, engine=eng, threads=2,
                           programs=("highlight_zoom_in",))
        for name in SUN:
            res = render_hdri(HdriTask(str(src), f"{name}.exr", name, str(root / eng), s))
            assert res.error is None and res.count("rendered") == 1, res
    return root, markers


@pytest.mark.parametrize("name", sorted(SUN))
def test_zoom_in_frames_centre_on_the_sun_in_both_engines(rendered, name):
    root, markers = rendered
    sun = camera.direction(*(math.radians(v) for v in SUN[name]))
    frames = {}
    for eng in ("blender", "direct"):
        clip = root / eng / name / "highlight_zoom_in"
        meta = json.loads((clip / "clip.json").read_text())
        o = meta["program_params"]["orientation"]
        frames[eng] = [read_image(clip / f["file"]) for f in meta["frames"]]
        for f, img in zip(meta["frames"], frames[eng]):
            np.testing.assert_allclose(camera.up_vector(f["rotation_euler"]), o["image_up_world"], atol=1e-9)
        last = meta["frames"][-1]
        assert last["focal_mm"] >= 50  # the most zoomed-in frame
        centre = _centroid_direction(frames[eng][-1], last["focal_mm"], last["rotation_euler"])
        assert _angle_deg(centre, sun) < 2.0, (eng, _angle_deg(centre, sun))
        # frame 0 (wide): the marker placed toward the recorded "up" is above the centre, where the model puts it
        first = meta["frames"][0]
        col, row = _project(markers[name], first["focal_mm"], first["rotation_euler"])
        assert abs(col - W / 2) < 0.5 and row < H / 2 - 8
        lum = luminance(frames[eng][0]).copy()
        yy, xx = np.mgrid[0:H, 0:W] + 0.5
        lum[np.hypot(yy - H / 2, xx - W / 2) < 5] = 0  # the sun and its filtered halo
        r, c = np.unravel_index(np.argmax(lum), lum.shape)
        assert abs(c + 0.5 - col) <= 1.5 and abs(r + 0.5 - row) <= 1.5, (eng, r, c, row, col)
        if eng == "blender":  # Blender's evaluated camera equals camera.euler_matrix on every frame
            assert meta["engine"]["camera_check"]["max_rotation_matrix_error"] < 1e-5
    for i, (cyc, direct) in enumerate(zip(frames["blender"], frames["direct"])):
        psnr, ratio = mu_psnr(cyc, direct), direct.mean() / cyc.mean()
        assert psnr >= 40.0 or abs(ratio - 1) <= 0.01, (name, i, psnr, ratio)


def test_blender_keys_are_linear_and_equal_the_camera_model(tmp_path):
    import bpy  # noqa: F401

    from render.engines.base import HdriSource
    from render.engines.blender import BlenderEngine, _fcurves

    write_exr(tmp_path / "m.exr", np.ones((8, 16, 3), np.float32))
    eng = BlenderEngine(samples=1, threads=1)
    eng.load(HdriSource(path=tmp_path / "m.exr", pixels=None, width=16, height=8))
    img, _ = sky_map(*SUN["sun90"])
    aims = analysis.aims(luminance(img), 1)
    try:
        for plan in (plan_clip("highlight_zoom_in", 5, 0, "m", aims), plan_clip("rotation_240", 9, 0, "m")):
            eng._key_camera(plan)
            assert eng.camera_check["max_rotation_matrix_error"] < 1e-6  # evaluated matrix_world vs euler_matrix
            cam = eng._scene.camera
            curves = _fcurves(cam) + _fcurves(cam.data)
            assert len(curves) == 4 and all(p.interpolation == "LINEAR" for c in curves for p in c.keyframe_points)
            for a, b in zip(plan.frames, plan.frames[1:]):  # between keys: the mean, no 2 pi wrap
                eng._scene.frame_set(a.index, subframe=0.5)
                np.testing.assert_allclose(np.array(cam.rotation_euler), np.add(a.rotation_euler, b.rotation_euler) / 2,
                                           atol=1e-5)
    finally:
        eng.close()
