"""Camera model, camera programs and HDRI analysis (pure numpy, no renderer)."""
import math

import numpy as np
import pytest

from render import analysis, camera
from render.programs import GROUPS, PROGRAMS, ZOOM_END_MM, ZOOM_START_MM, parse_programs, plan_clip


@pytest.mark.parametrize("az,el", [(0, 0), (1.0, 0.3), (-2.5, -0.6), (3.0, 1.2), (0.4, 1.5707), (-1.0, -1.5707)])
def test_look_euler_points_the_optical_axis(az, el):
    euler = camera.look_euler(az, el)
    np.testing.assert_allclose(camera.view_direction(euler), camera.direction(az, el), atol=1e-12)
    up = camera.up_vector(euler)
    assert up[2] > 0  # horizon level, never upside down
    np.testing.assert_allclose(up, camera.euler_matrix(euler) @ np.array([0.0, 1.0, 0.0]))
    right = camera.right_vector(euler)
    assert abs(right[2]) < 1e-12  # no roll
    # image up is the world zenith projected onto the image plane (the level-horizon camera)
    axis = camera.view_direction(euler)
    z_proj = np.array([0.0, 0.0, 1.0]) - axis[2] * axis
    np.testing.assert_allclose(up, z_proj / np.linalg.norm(z_proj), atol=1e-9)


@pytest.mark.parametrize("program", PROGRAMS)
def test_euler_keys_never_jump(program):
    """Keys interpolate linearly between frames: consecutive Euler triples must not wrap by 2 pi."""
    for n in (2, 9, 81):
        plan = plan_clip(program, n, 1, "map", _aims())
        e = np.array([fc.rotation_euler for fc in plan.frames])
        step = 2 * math.pi / 3 / n + 1e-12 if program.startswith("rotation") else 0.0
        assert (np.abs(np.diff(e, axis=0)) <= step).all()
        assert (e[:, 1] == 0).all()  # Y = 0: far from the XYZ gimbal lock at +-90 deg


def test_pixel_rays_field_of_view_and_centre():
    w, h, f = 64, 32, 36.0
    euler = camera.look_euler(0.4, 0.2)
    rays = camera.pixel_rays(w, h, f, euler, offsets=(0.0, 0.0)).astype(np.float64)
    hfov, vfov = camera.field_of_view(f, w, h)
    assert math.isclose(hfov, 2 * math.atan(18 / 36))
    axis = camera.view_direction(euler)
    left = rays[h // 2, 0] / np.linalg.norm(rays[h // 2, 0])  # left edge, vertically centred
    assert math.isclose(math.acos(left @ axis), hfov / 2, rel_tol=1e-6)
    top = rays[0, w // 2] / np.linalg.norm(rays[0, w // 2])
    assert math.isclose(math.acos(top @ axis), vfov / 2, rel_tol=1e-6)
    assert top[2] > axis[2]  # row 0 is the top of the image
    # portrait: AUTO fit puts the 36 mm on the vertical side
    assert math.isclose(camera.field_of_view(f, 32, 64)[1], hfov)


def test_equirect_convention():
    w, h = 360, 180
    col, row = camera.direction_to_equirect(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, -1.0]]), w, h)
    np.testing.assert_allclose(col[:2], [180, 90])  # +X centre, +Y (azimuth +90) left of centre
    np.testing.assert_allclose(row, [90, 90, 0, 180])
    az, el = camera.equirect_to_azel(col[1], row[1], w, h)
    assert math.isclose(az, math.pi / 2) and math.isclose(el, 0, abs_tol=1e-12)


def test_parse_programs():
    assert parse_programs(None) == PROGRAMS
    assert parse_programs("rotation,highlight_zoom_in") == ("highlight_zoom_in",) + GROUPS["rotation"]
    with pytest.raises(ValueError, match="unknown camera program 'spin'"):
        parse_programs("spin")


def _aims():
    lum = np.ones((64, 128), np.float32)
    lum[20, 30] = 1e4
    lum[40, 100] = 1e-4
    return analysis.aims(lum, 1)


@pytest.mark.parametrize("program", GROUPS["zoom"])
def test_zoom_focal_lengths_in_range_and_monotone(program):
    aims = _aims()
    for seed in range(20):
        plan = plan_clip(program, 9, seed, "map", aims)
        f = np.array([fc.focal_mm for fc in plan.frames])
        start, end = (f[0], f[-1]) if program.endswith("in") else (f[-1], f[0])
        assert ZOOM_START_MM[0] <= start <= ZOOM_START_MM[1]
        assert ZOOM_END_MM[0] <= end <= ZOOM_END_MM[1]
        d = np.diff(f)
        assert (d > 0).all() if program.endswith("in") else (d < 0).all()
        eulers = {fc.rotation_euler for fc in plan.frames}
        assert len(eulers) == 1  # the camera keeps aiming at the region


def test_zoom_aims_at_the_region():
    aims = _aims()
    plan = plan_clip("highlight_zoom_in", 5, 0, "map", aims)
    np.testing.assert_allclose(plan.frames[0].view_direction(), aims["brightest"].direction, atol=1e-9)
    assert plan.params["aim"]["kind"] == "brightest"
    o = plan.params["orientation"]
    assert o["azimuth_defined"] and o["roll_rule"] == camera.ROLL_RULE and o["image_up_world"][2] > 0
    np.testing.assert_allclose(o["image_up_world"], camera.up_vector(plan.frames[-1].rotation_euler))
    assert plan_clip("shadow_zoom_out", 5, 0, "map", aims).params["aim"]["kind"] == "darkest"


@pytest.mark.parametrize("n", [1, 5, 81])
def test_rotations_cover_360_without_gap_or_repeat(n):
    yaws = []
    focals = set()
    for p in GROUPS["rotation"]:
        plan = plan_clip(p, n, 3, "map")
        assert plan.params["endpoint_inclusive"] is False
        for fc in plan.frames:
            d = fc.view_direction()
            assert abs(d[2]) < 1e-12  # level
            yaws.append(math.degrees(math.atan2(d[1], d[0])) % 360)
            focals.add(fc.focal_mm)
    yaws = np.sort(np.array(yaws))
    gaps = np.diff(np.concatenate([yaws, [yaws[0] + 360]]))
    np.testing.assert_allclose(gaps, 360 / (3 * n), atol=1e-9)
    assert len(focals) == 1 and ZOOM_START_MM[0] <= focals.pop() <= ZOOM_START_MM[1]


def test_plans_are_deterministic_per_seed_and_clip():
    aims = _aims()
    a = plan_clip("highlight_zoom_in", 5, 7, "map", aims)
    b = plan_clip("highlight_zoom_in", 5, 7, "map", aims)
    c = plan_clip("highlight_zoom_in", 5, 8, "map", aims)
    d = plan_clip("highlight_zoom_in", 5, 7, "other_map", aims)
    assert a == b
    assert a.frames[0].focal_mm != c.frames[0].focal_mm
    assert a.seed != d.seed


def _disc(lum, az_deg, el_deg, radius_deg, value):
    h, w = lum.shape
    cols = (np.arange(w) + 0.5)
    rows = (np.arange(h) + 0.5)
    az, el = camera.equirect_to_azel(cols[None, :], rows[:, None], w, h)
    d = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)
    c = camera.direction(math.radians(az_deg), math.radians(el_deg))
    lum[np.degrees(np.arccos(np.clip(d @ c, -1, 1))) < radius_deg] = value


def _angle_deg(aim, az_deg, el_deg):
    c = camera.direction(math.radians(az_deg), math.radians(el_deg))
    return math.degrees(math.acos(np.clip(np.dot(aim.direction, c), -1, 1)))


def test_brightest_is_a_region_not_a_hot_pixel():
    lum = np.full((256, 512), 0.5, np.float32)
    _disc(lum, 120, 25, 1.5, 300.0)  # the sun
    lum[100, 40] = 2e3  # one hot pixel: brighter than any sun texel, far less energy than the sun
    aim = analysis.aims(lum, 1)["brightest"]
    assert _angle_deg(aim, 120, 25) < 1.0


def test_darkest_avoids_black_border_and_nadir():
    lum = np.full((256, 512), 2.0, np.float32)
    lum[-20:] = 0.0  # black (no data) border at the bottom
    _disc(lum, 0, -80, 10, 1e-4)  # dark tripod at the nadir
    _disc(lum, -60, 10, 8, 0.01)  # a dark region in the scene
    aim = analysis.aims(lum, 1)["darkest"]
    assert _angle_deg(aim, -60, 10) < 3.0
    lo, hi = aim.elevation_range_deg
    assert lo <= aim.elevation_deg <= hi


def test_luminance_map_area_average():
    img = np.random.default_rng(0).random((64, 2048 * 2 // 2, 3)).astype(np.float32)[:, :2048]
    img = np.ascontiguousarray(np.concatenate([img] * 16, 0)[:1024])
    lum, f = analysis.luminance_map(img, max_width=1024, chunk_rows=100)
    assert f == 2 and lum.shape == (512, 1024)
    full = 0.2126 * img[..., 0] + 0.7152 * img[..., 1] + 0.0722 * img[..., 2]
    np.testing.assert_allclose(lum, full.reshape(512, 2, 1024, 2).mean((1, 3)), rtol=1e-5)
