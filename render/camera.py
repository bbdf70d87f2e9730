"""The camera model shared by every engine, the programs and the tests.

Conventions (Blender/Cycles, world Z up):
- the camera sits at the origin and looks down its local -Z axis with local +Y up; its orientation is a Blender
  XYZ Euler triple (radians), i.e. the rotation matrix is Rz @ Ry @ Rx;
- a world direction (x, y, z) has azimuth atan2(y, x) and elevation asin(z);
- Cycles' equirectangular lookup is u = 0.5 - atan2(y, x) / 2pi, v = 1 - acos(z) / pi with v = 0 at the bottom row,
  so +X is the centre column of the map and, in a top-down numpy array, row = acos(z) / pi * H;
- the sensor is 36 mm wide and fits the larger image side (Blender's AUTO fit).
"""
from __future__ import annotations

import math

import numpy as np

SENSOR_WIDTH_MM = 36.0
SENSOR_FIT = "AUTO"
CONVENTION = (
    "Blender camera: looks down local -Z, +Y up, XYZ Euler (R = Rz Ry Rx), world Z up; "
    "Cycles equirect: u = 0.5 - atan2(y, x)/2pi, v = 1 - acos(z)/pi (v = 0 at the bottom)"
)


def direction(azimuth, elevation) -> np.ndarray:
    """Unit world vectors (..., 3) for azimuths/elevations in radians (scalars or broadcastable arrays)."""
    az, el = np.broadcast_arrays(np.asarray(azimuth, np.float64), np.asarray(elevation, np.float64))
    ce = np.cos(el)
    return np.stack([ce * np.cos(az), ce * np.sin(az), np.sin(el)], -1)


ROLL_RULE = (
    "no roll: image right stays horizontal and image up leans toward the zenith (horizon level); looking straight up "
    "or down the azimuth sets it, as the limit of a level camera facing that azimuth tilted to the pole: image up "
    "points to azimuth + 180 deg at the zenith and to the azimuth at the nadir"
)


def look_euler(azimuth: float, elevation: float) -> tuple[float, float, float]:
    """Blender XYZ Euler (radians) of a camera at the origin looking along (azimuth, elevation), horizon level.

    Valid at every elevation, the poles included (see ``ROLL_RULE``): the Y angle is always 0, so the triple never
    nears the XYZ gimbal lock (Y = +-90 deg), and at elevation +-90 deg the azimuth only turns the image about the
    view axis."""
    return (math.pi / 2 + elevation, 0.0, azimuth - math.pi / 2)


def euler_matrix(euler) -> np.ndarray:
    """Rotation matrix of a Blender XYZ Euler triple (R = Rz @ Ry @ Rx)."""
    x, y, z = euler
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def view_direction(euler) -> np.ndarray:
    """World direction of the camera's optical axis (its local -Z)."""
    return euler_matrix(euler) @ np.array([0.0, 0.0, -1.0])


def up_vector(euler) -> np.ndarray:
    """World direction of the image's "up" (the camera's local +Y)."""
    return euler_matrix(euler) @ np.array([0.0, 1.0, 0.0])


def right_vector(euler) -> np.ndarray:
    """World direction of the image's "right" (the camera's local +X)."""
    return euler_matrix(euler) @ np.array([1.0, 0.0, 0.0])


def sensor_size(width: int, height: int, sensor_width_mm: float = SENSOR_WIDTH_MM) -> tuple[float, float]:
    """(horizontal, vertical) sensor extent in mm for Blender's AUTO fit (the sensor spans the larger side)."""
    if width >= height:
        return sensor_width_mm, sensor_width_mm * height / width
    return sensor_width_mm * width / height, sensor_width_mm


def field_of_view(focal_mm: float, width: int, height: int, sensor_width_mm: float = SENSOR_WIDTH_MM):
    """(horizontal, vertical) field of view in radians."""
    sw, sh = sensor_size(width, height, sensor_width_mm)
    return 2 * math.atan(sw / (2 * focal_mm)), 2 * math.atan(sh / (2 * focal_mm))


def pixel_rays(width, height, focal_mm, euler, sensor_width_mm=SENSOR_WIDTH_MM, offsets=(0.5, 0.5), dtype=np.float32):
    """World ray directions (not normalised) through image positions ``(col + ox, row + oy)``, shape (H, W, 3).

    Row 0 is the top of the image, as in the EXR files. ``offsets`` may be arrays broadcastable to (H, W) for
    supersampling.
    """
    sw, sh = sensor_size(width, height, sensor_width_mm)
    cols = np.arange(width, dtype=np.float64)[None, :]
    rows = np.arange(height, dtype=np.float64)[:, None]
    xs = ((cols + offsets[0]) / width - 0.5) * sw
    ys = (0.5 - (rows + offsets[1]) / height) * sh
    xs, ys = np.broadcast_arrays(xs, ys)
    cam = np.stack([xs, ys, np.full_like(xs, -float(focal_mm))], axis=-1)
    return (cam @ euler_matrix(euler).T).astype(dtype)


def direction_to_equirect(dirs, width: int, height: int):
    """Continuous (col, row) coordinates in a top-down equirect map of ``width`` x ``height`` for world directions."""
    d = np.asarray(dirs, dtype=np.float64)
    norm = np.linalg.norm(d, axis=-1)
    u = 0.5 - np.arctan2(d[..., 1], d[..., 0]) / (2 * np.pi)
    row = np.arccos(np.clip(d[..., 2] / norm, -1.0, 1.0)) / np.pi
    return u * width, row * height


def equirect_to_azel(col, row, width: int, height: int):
    """Azimuth and elevation (radians) of continuous map coordinates (pixel centres are at i + 0.5)."""
    azimuth = (0.5 - np.asarray(col) / width) * 2 * np.pi
    elevation = np.pi / 2 - np.asarray(row) / height * np.pi
    return azimuth, elevation


# --- motion blur -------------------------------------------------------------------------------------------------
SHUTTER_MODEL = (
    "shutter open for the fraction s of the frame interval, centred on the frame time ([t - s/2, t + s/2], "
    "Blender's CENTER position, flat shutter curve); the camera is keyed on every frame (lens and XYZ Euler, linear "
    "in time, extrapolated linearly beyond the clip); within the shutter, Cycles' camera motion blur: the rotation "
    "interpolated (slerp) between the poses at open, centre and close, the image-plane scale 1/focal linearly"
)


def keyed_at(keys, t: float) -> np.ndarray:
    """The value at time ``t`` (frames) of a quantity keyed on frames 0, 1, ...: linear interpolation between keys and
    linear extrapolation beyond the ends, as Blender's F-curves with LINEAR interpolation and extrapolation."""
    keys = np.asarray(keys, np.float64)
    n = len(keys)
    if n == 1:
        return keys[0].copy()
    i = min(max(int(math.floor(t)), 0), n - 2)
    u = t - i
    return keys[i] * (1 - u) + keys[i + 1] * u


def _axis_angle(r: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a rotation matrix (angles below pi)."""
    c = max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))
    angle = math.acos(c)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-12:
        return v / 2.0
    return v * (angle / (2.0 * math.sin(angle)))


def _rotvec_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation matrix of a rotation vector."""
    angle = float(np.linalg.norm(v))
    if angle < 1e-15:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def slerp(ra: np.ndarray, rb: np.ndarray, u: float) -> np.ndarray:
    """The rotation a fraction ``u`` of the way from ``ra`` to ``rb`` along the shortest arc."""
    return ra @ _rotvec_matrix(_axis_angle(ra.T @ rb) * u)


def shutter_keys(focals, eulers, index: int, shutter: float) -> list[tuple[float, np.ndarray]]:
    """(focal_mm, rotation matrix) of the keyed camera at shutter open, frame time and shutter close."""
    times = (index - shutter / 2, float(index), index + shutter / 2)
    return [(float(keyed_at(focals, t)), euler_matrix(keyed_at(eulers, t))) for t in times]


SHUTTER_SAMPLE_SPACING_PX = 0.5  # sub-frame poses are at most this far apart in image motion
MAX_SHUTTER_SAMPLES = 128


def shutter_samples(focals, eulers, index: int, shutter: float, width: int, height: int) -> int:
    """Sub-frame poses for frame ``index``: enough that no image point moves more than 0.5 px between two (so the
    3 px pixel filter sees a continuous streak), at most 128; 1 without motion blur or motion."""
    if shutter <= 0:
        return 1
    keys = shutter_keys(focals, eulers, index, shutter)
    motion = image_motion_px(keys[0], keys[1], width, height) + image_motion_px(keys[1], keys[2], width, height)
    return int(min(MAX_SHUTTER_SAMPLES, max(1, math.ceil(motion / SHUTTER_SAMPLE_SPACING_PX))))


def shutter_poses(focals, eulers, index: int, shutter: float, n: int) -> list[tuple[float, np.ndarray]]:
    """(focal_mm, rotation matrix) at ``n`` stratified times within frame ``index``'s shutter (``SHUTTER_MODEL``);
    their average image is the frame's expected exposure. ``focals`` / ``eulers``: the keys of frames 0, 1, ..."""
    f, r = zip(*shutter_keys(focals, eulers, index, shutter))
    poses = []
    for j in range(n):
        tau = (j + 0.5) / n
        a, u = (0, 2 * tau) if tau < 0.5 else (1, 2 * tau - 1)
        inv_f = (1 - u) / f[a] + u / f[a + 1]
        poses.append((1.0 / inv_f, slerp(r[a], r[a + 1], u)))
    return poses


def image_motion_px(pose_a, pose_b, width: int, height: int, sensor_width_mm: float = SENSOR_WIDTH_MM) -> float:
    """Largest distance in pixels that an image point (the centre, the corners and the edge midpoints) moves between
    two (focal_mm, rotation matrix) poses: how finely the shutter must be sampled."""
    sw, sh = sensor_size(width, height, sensor_width_mm)
    (fa, ra), (fb, rb) = pose_a, pose_b
    pts = np.array([[x, y] for x in (-0.5, 0.0, 0.5) for y in (-0.5, 0.0, 0.5)]) * [sw, sh]
    dirs = np.concatenate([pts, np.full((len(pts), 1), -fa)], 1) @ ra.T  # world rays of pose a
    cam = dirs @ rb  # in camera b's frame
    ahead = cam[:, 2] < -1e-9
    if not ahead.all():
        return float("inf")
    proj = cam[:, :2] / -cam[:, 2:3] * fb
    return float(np.max(np.hypot(*((proj - pts) / [sw / width, sh / height]).T)))
