"""The paper's camera programs (DiffHDR §3.1.1), as plain per-frame camera lists independent of any renderer.

Per HDRI: highlight zoom-in/out aimed at the brightest region, shadow zoom-in/out aimed at the darkest region, and
three rotations about the vertical axis of 120 degrees each. Zoom focal lengths: start ~ U(18, 30) mm, end
~ U(50, 70) mm, linear in focal length over the clip; zoom-out runs from its own end draw back to its start draw.
The camera never rolls (``camera.ROLL_RULE``); an aim at a pole has no azimuth and uses 0 deg, i.e. image up = -X at
the zenith; the rule, the azimuth used and the resulting image up/right vectors are recorded in the clip's params.
Rotation segments are endpoint-exclusive (yaw_i = start + 120 * i / N), so the three segments tile 360 degrees with
no repeated frame and no gap; they share one focal length drawn per HDRI so they join into one continuous pan.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from hdr.seeding import derive_seed, rng
from render import camera

ZOOM_START_MM = (18.0, 30.0)
ZOOM_END_MM = (50.0, 70.0)
ROTATION_SEGMENT_DEG = 120.0

PROGRAMS = (
    "highlight_zoom_in",
    "highlight_zoom_out",
    "shadow_zoom_in",
    "shadow_zoom_out",
    "rotation_000",
    "rotation_120",
    "rotation_240",
)
GROUPS = {
    "all": PROGRAMS,
    "zoom": PROGRAMS[:4],
    "highlight": PROGRAMS[:2],
    "shadow": PROGRAMS[2:4],
    "rotation": PROGRAMS[4:],
}


def parse_programs(spec: str | None) -> tuple[str, ...]:
    """``"highlight_zoom_in,rotation"`` -> program names in canonical order. Raises ValueError on unknown names."""
    if not spec:
        return PROGRAMS
    chosen = set()
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in PROGRAMS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown camera program {name!r}; "
                             f"choose from {', '.join(PROGRAMS)} or {', '.join(GROUPS)}")
    return tuple(p for p in PROGRAMS if p in chosen)


@dataclass(frozen=True)
class FrameCamera:
    index: int
    focal_mm: float
    rotation_euler: tuple[float, float, float]  # Blender XYZ, radians

    def view_direction(self) -> tuple[float, ...]:
        return tuple(float(x) for x in camera.view_direction(self.rotation_euler))


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str
    program: str
    seed: int
    frames: tuple[FrameCamera, ...]
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("frames")
        return d


def _zoom(program: str, aim, n: int, r) -> tuple[list[FrameCamera], dict]:
    f_start = float(r.uniform(*ZOOM_START_MM))
    f_end = float(r.uniform(*ZOOM_END_MM))
    if program.endswith("zoom_out"):
        f_start, f_end = f_end, f_start
    euler = camera.look_euler(math.radians(aim.azimuth_deg), math.radians(aim.elevation_deg))  # 0 deg at a pole
    frames = [
        FrameCamera(i, f_start + (f_end - f_start) * (i / (n - 1) if n > 1 else 0.0), euler) for i in range(n)
    ]
    params = {
        "focal_start_mm": f_start,
        "focal_end_mm": f_end,
        "focal_interpolation": "linear in focal length, every frame keyed",
        "aim": aim.to_json(),
        "orientation": _orientation(euler, aim.azimuth_deg, aim.azimuth_defined),
    }
    return frames, params


def _orientation(euler, azimuth_deg: float, azimuth_defined: bool = True) -> dict:
    """How the image is turned about the view axis, as recorded in clip.json."""
    return {
        "roll_rule": camera.ROLL_RULE,
        "azimuth_used_deg": float(azimuth_deg),
        "azimuth_defined": bool(azimuth_defined),
        **({} if azimuth_defined else {"pole_convention": "the aim is a pole (no azimuth): azimuth 0 deg (+X) used"}),
        "image_up_world": [float(v) for v in camera.up_vector(euler)],
        "image_right_world": [float(v) for v in camera.right_vector(euler)],
    }


def _rotation(program: str, n: int, focal_mm: float) -> tuple[list[FrameCamera], dict]:
    start = float(program.rsplit("_", 1)[1])
    yaws = [start + ROTATION_SEGMENT_DEG * i / n for i in range(n)]
    frames = [FrameCamera(i, focal_mm, camera.look_euler(math.radians(y), 0.0)) for i, y in enumerate(yaws)]
    params = {
        "yaw_start_deg": start,
        "yaw_end_deg": start + ROTATION_SEGMENT_DEG,
        "yaw_step_deg": ROTATION_SEGMENT_DEG / n,
        "endpoint_inclusive": False,
        "elevation_deg": 0.0,
        "focal_mm": focal_mm,
        "focal_source": "one draw of U(18, 30) mm per HDRI, shared by its three rotation clips",
        "yaw_definition": "camera azimuth atan2(y, x) of the view direction; 0 = +X = centre of the map",
        "roll_rule": camera.ROLL_RULE,
    }
    return frames, params


def plan_clip(program: str, n_frames: int, dataset_seed: int, hdri_id: str, aims: dict | None = None) -> ClipPlan:
    """Camera of every frame of one clip. ``aims`` maps "brightest"/"darkest" to :class:`render.analysis.Aim`
    (needed for the zoom programs only)."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown camera program {program!r}")
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    seed = derive_seed(dataset_seed, hdri_id, program)
    if program.startswith("rotation"):
        focal = float(rng(dataset_seed, hdri_id, "rotation").uniform(*ZOOM_START_MM))
        frames, params = _rotation(program, n_frames, focal)
    else:
        if not aims:
            raise ValueError(f"{program} needs the HDRI's aim directions")
        aim = aims["brightest" if program.startswith("highlight") else "darkest"]
        frames, params = _zoom(program, aim, n_frames, rng(seed))
    return ClipPlan(clip_id=program, program=program, seed=seed, frames=tuple(frames), params=params)
