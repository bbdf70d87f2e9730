"""Cycles through ``bpy`` (Blender as a Python module): camera at the origin, the HDRI as the world's environment
texture, no geometry, scene-linear Rec.709 output with no view transform.

Each clip renders as ONE animation job (lens and rotation keyed on every frame, linear keys, persistent data, world
importance map off): 10-20x cheaper than one ``render.render`` call per frame (measured when the engine was
built). After keying, Blender's evaluated camera of every frame is checked against ``camera.euler_matrix`` and
the plan's focal length, so Cycles renders exactly the camera the direct engine and clip.json describe. Frames are
written by Blender as uncompressed float32 EXR into the job's scratch directory in chunks, read back and handed to
the shared writer, so both engines publish through the same code.

Sampling: Cycles' adaptive sampling by default (``SAMPLES`` max, ``NOISE_THRESHOLD``, ``MIN_SAMPLES``), chosen from
``benchmarks/cycles_quality.py`` (docs/render.md, "Blender sampling"); ``noise_threshold=0`` gives fixed sampling.
``adaptive_min_samples`` and ``first_check`` restate Cycles' own rules (``Integrator::get_adaptive_sampling`` and
``AdaptiveSampling::need_filter`` in intern/cycles) so clip.json can say what every pixel got at least.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from hdr.io import read_image
from render import camera
from render.engines.base import Engine, EngineError, HdriSource
from render.programs import ClipPlan

GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
CAMERA_TOLERANCE = 1e-5  # max |matrix entry| / relative lens difference between Blender's evaluated camera and plan

# Default sampling (docs/render.md, "Blender sampling"): adaptive, at most SAMPLES per pixel, stopping a pixel once
# its noise estimate is below NOISE_THRESHOLD; MIN_SAMPLES 0 = Cycles' automatic minimum (adaptive_min_samples).
SAMPLES = 4096
NOISE_THRESHOLD = 0.01
MIN_SAMPLES = 4
ADAPTIVE_STEP = 16  # Cycles tests convergence every 16 samples (Integrator::get_adaptive_sampling)


def adaptive_min_samples(threshold: float, min_samples: int = 0) -> int:
    """The minimum samples per pixel Cycles uses: ``min_samples`` (at least 4), or with 0 its automatic guess
    ceil(16 / threshold^0.3) (0.1 -> 32, 0.01 -> 64), computed in float32 as Cycles does."""
    if threshold > 0 and min_samples == 0:
        guess = np.float32(16.0) / np.power(np.float32(threshold), np.float32(0.3))
        return max(4, math.ceil(float(guess)))
    return max(4, int(min_samples))


def resolve_sampling(samples: int | None = None, noise_threshold: float | None = None,
                     min_samples: int | None = None) -> tuple[int, float, int]:
    """(samples, noise_threshold, min_samples) Cycles is given. Nothing given: the quality default (adaptive,
    SAMPLES, NOISE_THRESHOLD, MIN_SAMPLES); ``samples`` alone: fixed sampling at that count (threshold 0), as
    Cycles' own samples setting means; a threshold > 0: adaptive with ``samples`` as the maximum."""
    if noise_threshold is None:
        noise_threshold = NOISE_THRESHOLD if samples is None else 0.0
    return (SAMPLES if samples is None else int(samples), float(noise_threshold),
            MIN_SAMPLES if min_samples is None else int(min_samples))


def first_check(min_samples: int) -> int:
    """Samples per pixel when Cycles first tests a pixel's convergence, given the minimum it uses: the first 0-based
    sample index above ``min_samples`` that ends a step of ``ADAPTIVE_STEP`` (``(min + 1) | (step - 1)``), plus 1."""
    return ((int(min_samples) + 1) | (ADAPTIVE_STEP - 1)) + 1


def _fcurves(id_data) -> list:
    """The F-curves animating ``id_data`` (layered actions of Blender >= 4.4, legacy ``Action.fcurves`` before)."""
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return []
    action = ad.action
    if getattr(action, "layers", None):
        out = []
        for layer in action.layers:
            for strip in layer.strips:
                bag = strip.channelbag(ad.action_slot)
                if bag is not None:
                    out.extend(bag.fcurves)
        return out
    return list(getattr(action, "fcurves", []))


@contextlib.contextmanager
def _quiet(log_path: Path):
    """Send Blender's C-level stdout/stderr chatter ("Fra: ... Mem: ...") to a log file."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def _chunks(indices: list[int], size: int) -> list[tuple[int, int]]:
    """Runs of consecutive frame indices, at most ``size`` long, as (first, last) pairs."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1 and i - runs[-1][0] < size:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [tuple(r) for r in runs]


class BlenderEngine(Engine):
    name = "blender"
    needs = "file"

    def __init__(self, samples: int | None = None, device: str = "cpu", threads: int = 0, chunk_frames: int = 16,
                 shutter: float = 0.0, noise_threshold: float | None = None, min_samples: int | None = None):
        """``samples``: fixed samples per pixel, or the maximum with adaptive sampling (``noise_threshold`` > 0).
        Neither given: the quality default (adaptive, SAMPLES, NOISE_THRESHOLD, MIN_SAMPLES); ``samples`` alone:
        fixed sampling at that count, as Cycles' own --samples means."""
        import bpy  # noqa: F401  (fails early, with a clear error, where bpy is missing)

        self.samples, self.noise_threshold, self.min_samples = resolve_sampling(samples, noise_threshold, min_samples)
        if self.samples < 1 or self.noise_threshold < 0 or self.min_samples < 0:
            raise EngineError(f"Blender sampling needs samples >= 1, noise_threshold >= 0 and min_samples >= 0 "
                              f"(got {self.samples}, {self.noise_threshold}, {self.min_samples})")
        self.shutter = float(shutter)
        self.device = device
        self.threads = int(threads)
        self.chunk_frames = int(chunk_frames)
        self._device_used = "CPU"
        self._scene = None
        self.camera_check: dict = {}  # of the last keyed clip: Blender's evaluated camera vs the plan

    def sampling(self) -> dict:
        """What Cycles is asked for, and (adaptive) the samples every pixel gets at least: Cycles' minimum, rounded up
        to its first convergence test, capped by the maximum."""
        if self.noise_threshold <= 0:
            return {"adaptive": False, "samples": self.samples}
        used = adaptive_min_samples(self.noise_threshold, self.min_samples)
        return {"adaptive": True, "noise_threshold": self.noise_threshold, "max_samples": self.samples,
                "min_samples": self.min_samples, "min_samples_used": used, "adaptive_step": ADAPTIVE_STEP,
                "samples_per_pixel_at_least": min(self.samples, first_check(used))}

    # --- setup -----------------------------------------------------------------------------------------
    def _setup_device(self, scene) -> str:
        import bpy

        if self.device == "cpu":
            scene.cycles.device = "CPU"
            return "CPU"
        prefs = bpy.context.preferences.addons["cycles"].preferences
        wanted = GPU_BACKENDS if self.device in ("auto", "gpu", "cuda") else (self.device.upper(),)
        if self.device == "cuda":
            wanted = ("OPTIX", "CUDA")
        for backend in wanted:
            try:
                prefs.compute_device_type = backend
            except TypeError:
                continue
            prefs.get_devices()
            devices = [d for d in prefs.devices if d.type == backend]
            if devices:
                for d in prefs.devices:
                    d.use = d.type == backend
                scene.cycles.device = "GPU"
                return backend
        if self.device == "auto":
            scene.cycles.device = "CPU"
            return "CPU"
        raise EngineError(f"Blender sees no {self.device} device on this machine (tried {', '.join(wanted)})")

    def load(self, source: HdriSource) -> None:
        import bpy

        if source.path is None:
            raise EngineError("the Blender engine needs the HDRI as a file")
        # A factory reset per HDRI frees the previous map and keeps bpy's memory from growing across jobs.
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
        scene = bpy.context.scene
        scene.render.engine = "CYCLES"  # the reset selects EEVEE
        with _quiet(Path(os.devnull)):  # Cycles reports every GPU library it cannot open
            self._device_used = self._setup_device(scene)
        cyc = scene.cycles
        cyc.samples = self.samples
        # threshold 0 with adaptive sampling on would be Cycles' automatic threshold: fixed sampling is "off" here
        cyc.use_adaptive_sampling = self.noise_threshold > 0
        cyc.adaptive_threshold = self.noise_threshold
        cyc.adaptive_min_samples = self.min_samples
        cyc.time_limit = 0.0
        cyc.use_denoising = False
        cyc.use_animated_seed = False
        cyc.pixel_filter_type = "BLACKMAN_HARRIS"
        scene.render.filter_size = 1.5
        scene.render.use_persistent_data = True
        scene.render.use_motion_blur = self.shutter > 0  # Cycles' camera motion blur on the keyed camera
        if self.shutter > 0:
            scene.render.motion_blur_shutter = self.shutter
            scene.render.motion_blur_position = "CENTER"
        scene.render.film_transparent = False
        scene.render.resolution_percentage = 100
        if self.threads > 0:
            scene.render.threads_mode = "FIXED"
            scene.render.threads = self.threads
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0
        img_settings = scene.render.image_settings
        img_settings.file_format = "OPEN_EXR"
        img_settings.color_depth = "32"
        img_settings.color_mode = "RGB"
        img_settings.exr_codec = "NONE"

        world = bpy.data.worlds.new("hdri")
        scene.world = world
        with warnings.catch_warnings():  # deprecated in 5.x (node trees become implicit), still needed on 5.0
            warnings.simplefilter("ignore", DeprecationWarning)
            world.use_nodes = True
        world.cycles.sampling_method = "NONE"  # no geometry: the world importance map is never used
        nodes, links = world.node_tree.nodes, world.node_tree.links
        background = next(n for n in nodes if n.bl_idname == "ShaderNodeBackground")
        output = next(n for n in nodes if n.bl_idname == "ShaderNodeOutputWorld")
        env = nodes.new("ShaderNodeTexEnvironment")
        try:
            env.image = bpy.data.images.load(str(source.path), check_existing=False)
        except RuntimeError as e:
            raise EngineError(f"Blender could not load {source.path}: {e}") from e
        env.image.colorspace_settings.name = "Linear Rec.709"
        env.interpolation = "Linear"
        env.projection = "EQUIRECTANGULAR"
        background.inputs["Strength"].default_value = 1.0
        links.new(env.outputs["Color"], background.inputs["Color"])
        links.new(background.outputs["Background"], output.inputs["Surface"])

        cam_data = bpy.data.cameras.new("camera")
        cam_data.sensor_width = camera.SENSOR_WIDTH_MM
        cam_data.sensor_fit = camera.SENSOR_FIT
        cam_data.clip_start = 0.01
        cam_obj = bpy.data.objects.new("camera", cam_data)
        scene.collection.objects.link(cam_obj)
        cam_obj.location = (0.0, 0.0, 0.0)
        cam_obj.rotation_mode = "XYZ"
        cam_obj.cycles.use_motion_blur = True
        cam_obj.cycles.motion_steps = 1  # poses at shutter open, frame time and close (camera.SHUTTER_MODEL)
        scene.camera = cam_obj
        self._scene = scene

    def info(self) -> dict:
        import bpy

        return {
            "name": self.name,
            "version": bpy.app.version_string,
            "renderer": "CYCLES",
            "device": self._device_used,
            "samples": self.samples,
            "sampling": self.sampling(),
            "pixel_filter": "BLACKMAN_HARRIS",
            "filter_width_px": 1.5,
            "threads": self.threads or "auto",
            "world_sampling_method": "NONE",
            "env_interpolation": "Linear",
            "animation_job": True,
            "camera_keys": "rotation_euler (XYZ) and lens keyed on every frame, LINEAR interpolation and extrapolation",
            **({"motion_blur": {"shutter": self.shutter, "position": "CENTER", "camera_motion_steps": 3,
                                "model": camera.SHUTTER_MODEL}} if self.shutter > 0 else {}),
            **({"camera_check": self.camera_check} if self.camera_check else {}),
        }

    # --- rendering -------------------------------------------------------------------------------------
    def _key_camera(self, plan: ClipPlan) -> None:
        scene = self._scene
        cam_obj = scene.camera
        cam_obj.animation_data_clear()
        cam_obj.data.animation_data_clear()
        for fc in plan.frames:
            cam_obj.data.lens = fc.focal_mm
            cam_obj.data.keyframe_insert("lens", frame=fc.index)
            cam_obj.rotation_euler = fc.rotation_euler
            cam_obj.keyframe_insert("rotation_euler", frame=fc.index)
        # bpy 5.0 keys Python inserts as BEZIER whatever the preference says: make them linear (only integer frames
        # are rendered, so this matters only for sub-frame evaluation, e.g. motion blur)
        for curve in _fcurves(cam_obj) + _fcurves(cam_obj.data):
            curve.extrapolation = "LINEAR"  # the camera keeps moving beyond the clip (motion blur of the end frames)
            for point in curve.keyframe_points:
                point.interpolation = "LINEAR"
        # what Cycles will render: the evaluated camera of every frame (and, with motion blur, at shutter open and
        # close), against the camera model
        focals = [fc.focal_mm for fc in plan.frames]
        eulers = [fc.rotation_euler for fc in plan.frames]
        offsets = (0.0, -self.shutter / 2, self.shutter / 2) if self.shutter > 0 else (0.0,)
        rot_err = lens_err = 0.0
        for fc in plan.frames:
            for dt in offsets:
                t = fc.index + dt
                scene.frame_set(int(np.floor(t)), subframe=float(t - np.floor(t)))
                m = np.array(cam_obj.matrix_world, dtype=np.float64)[:3, :3]
                want = camera.euler_matrix(camera.keyed_at(eulers, t))
                focal = float(camera.keyed_at(focals, t))
                rot_err = max(rot_err, float(np.abs(m - want).max()))
                lens_err = max(lens_err, abs(cam_obj.data.lens - focal) / focal)
        self.camera_check = {"max_rotation_matrix_error": rot_err, "max_lens_rel_error": lens_err}
        if rot_err > CAMERA_TOLERANCE or lens_err > CAMERA_TOLERANCE:
            raise EngineError(f"Blender's keyed camera differs from the plan (rotation {rot_err:.2e}, "
                              f"lens {lens_err:.2e})")

    def render(self, plan: ClipPlan, width: int, height: int, scratch: Path, only=None) -> Iterator[np.ndarray]:
        import bpy

        if self._scene is None:
            raise EngineError("load() an HDRI before rendering")
        scene = self._scene
        scene.render.resolution_x = width
        scene.render.resolution_y = height
        scene.cycles.seed = plan.seed % (2**31 - 1)
        self._key_camera(plan)
        log = scratch / f"blender-{plan.clip_id}.log"
        for start, end in _chunks([fc.index for fc in plan.frames if only is None or fc.index in only],
                                  self.chunk_frames):
            scene.frame_start, scene.frame_end = start, end
            scene.render.filepath = str(scratch / "bl_####")
            t0 = time.perf_counter()
            try:
                with _quiet(log):
                    result = bpy.ops.render.render(animation=True, write_still=False)
            except RuntimeError as e:
                raise EngineError(f"Cycles failed on frames {start}-{end}: {e} ({_tail(log)})") from e
            if "FINISHED" not in result:
                raise EngineError(f"Cycles did not finish frames {start}-{end} ({_tail(log)})")
            self.last_chunk_seconds = time.perf_counter() - t0
            for i in range(start, end + 1):
                f = scratch / f"bl_{i:04d}.exr"
                if not f.exists():
                    raise EngineError(f"Cycles wrote no file for frame {i} ({_tail(log)})")
                img = read_image(f)
                f.unlink()
                if img.shape[:2] != (height, width):
                    raise EngineError(f"frame {i} is {img.shape[1]}x{img.shape[0]}, expected {width}x{height}")
                yield img

    def close(self) -> None:
        import bpy

        bpy.ops.wm.read_factory_settings(use_empty=True)
        self._scene = None
