"""One render job = one HDRI: load it once, render all its clips, publish frames, then clip.json.

This is the plain function a Ray task runs (the driver in :mod:`render.run` stays thin). The same code serves every
engine: planning, the bad-value policy, statistics, the writer, resume and bookkeeping live here once. The writer
(:class:`_FrameWriter`) runs inline or, where the renderer leaves the CPUs free, on a background thread
(:func:`_pipelined`); each published frame is reported to the driver's progress bar (:func:`hdr.cluster.progress`).
"""
from __future__ import annotations

import datetime as dt
import math
import os
import platform
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import hdr
from hdr.cluster import error_line, progress
from hdr.color import luminance, radiance_stats
from hdr.io import (EXR_COMPRESSIONS, HdrImageError, equirect_problem, read_header, read_image, sanitize,
                    sanitize_policy, write_exr)
from hdr.seeding import SEED_DERIVATION
from hdr.storage import Store, sha256_file
from hdr.dataset import layout
from hdr.dataset.records import ClipMeta
from render import analysis, camera
from render.engines import EngineError, HdriSource, get_engine
from render.programs import PROGRAMS, ClipPlan, plan_clip

STATS_SAMPLE = 16384  # luminance values kept per frame for clip percentiles
# The writer (clamp, statistics, EXR, publish) runs on a background thread, fed by a queue of WRITE_QUEUE frames, when
# the renderer leaves the CPUs free or the output is uploaded (_pipelined); PIPELINE True/False forces it either way.
PIPELINE: bool | None = None
WRITE_QUEUE = 2
# What a map's negative texels become (README, "Bad input"): "signed" renders the decoded map as it is and clamps each
# filtered pixel at 0 (Blender renders its positive and negative parts as two non-negative maps and subtracts);
# "redistribute" fills them from their positive neighbours (hdr.io.redistribute_negative); "clamp" sets them to 0.
NEGATIVE_TEXELS = ("signed", "redistribute", "clamp")
_SANITIZE_NEGATIVE = {"signed": "keep", "redistribute": "redistribute", "clamp": "clamp"}


@dataclass(frozen=True)
class RenderSettings:
    frames: int = 81
    width: int = 1280
    height: int = 720
    samples: int | None = None  # None: each engine's default (direct: its quality rule)
    seed: int = 0
    programs: tuple[str, ...] = PROGRAMS
    engine: str = "blender"
    backend: str = "auto"  # direct engine: auto (torch when installed), numpy or torch
    max_samples: int = 256  # direct engine: cap of its adaptive sample grid (mip prefiltering beyond)
    noise_threshold: float | None = None  # blender: Cycles' adaptive threshold (None: default, or fixed with samples)
    min_samples: int | None = None  # blender, adaptive: samples before the first convergence test (None: default)
    half: bool = False
    compression: str = "auto"  # an EXR codec, or auto (exr_compression)
    device: str = "auto"
    threads: int = 0
    overwrite: bool = False
    negative_texels: str = "signed"  # one of NEGATIVE_TEXELS
    shutter: float = 0.0  # motion blur: shutter open for this fraction of the frame interval (0 = instantaneous)

    def __post_init__(self):
        if not 0.0 <= self.shutter <= 1.0:
            raise ValueError(f"--shutter {self.shutter}: a fraction of the frame interval in [0, 1] "
                             "(0 = no motion blur, 0.5 = a 180 degree shutter)")
        if (self.noise_threshold is not None and self.noise_threshold < 0) or \
                (self.min_samples is not None and self.min_samples < 0):
            raise ValueError(f"--noise-threshold {self.noise_threshold} / --min-samples {self.min_samples}: "
                             "must be >= 0 (threshold 0 = fixed sampling)")
        if self.compression != "auto" and self.compression not in EXR_COMPRESSIONS:
            raise ValueError(f"--compression {self.compression}: one of auto, {', '.join(EXR_COMPRESSIONS)}")
        if self.negative_texels not in NEGATIVE_TEXELS:
            raise ValueError(f"unknown negative-texel policy {self.negative_texels!r}; "
                             f"one of {', '.join(NEGATIVE_TEXELS)}")

    def _blender_sampling(self) -> dict:
        """Blender's resolved sampling for the fingerprint: the adaptive settings when adaptive (the quality default
        records its numbers, so clips made at another default conflict); fixed sampling adds nothing to ``samples``."""
        from render.engines.blender import resolve_sampling  # no bpy import at module level

        samples, threshold, min_samples = resolve_sampling(self.samples, self.noise_threshold, self.min_samples)
        if threshold <= 0:
            return {}
        return {"samples": samples, "noise_threshold": threshold, "min_samples": min_samples}

    def fingerprint(self) -> dict:
        """What a finished clip must have been rendered with to be reused on a rerun."""
        return {
            "frames": self.frames,
            "resolution": [self.width, self.height],
            "samples": self.samples,
            "seed": self.seed,
            "engine": self.engine,
            **({"max_samples": self.max_samples} if self.engine == "direct" else {}),
            **(self._blender_sampling() if self.engine == "blender" else {}),
            "half": self.half,
            "compression": self.compression,
            "negative_texels": self.negative_texels,
            **({"shutter": self.shutter} if self.shutter > 0 else {}),
        }


@dataclass(frozen=True)
class HdriTask:
    hdris_url: str
    hdri_rel: str
    hdri_id: str
    out_url: str
    settings: RenderSettings
    source: dict | None = field(default=None, hash=False)  # _sources.json record -> clip.json hdri.source


@dataclass
class HdriResult:
    hdri_id: str
    hdri: str
    error: str | None = None
    clips: dict = field(default_factory=dict)  # clip_id -> {"status": rendered|skipped|conflict|failed, ...}
    seconds: float = 0.0
    node: dict = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for c in self.clips.values() if c["status"] == status)


class InputError(Exception):
    """The HDRI itself is unusable; retrying will not help."""


def _node() -> dict:
    info = {"hostname": platform.node(), "pid": os.getpid()}
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
    return info


FAULT_ENV = "HDRVID_FAULT"


def fault_point(name: str) -> None:
    """Fault injection for the crash tests: with ``HDRVID_FAULT=<name>:<marker file>`` in the environment the
    process dies here (``os._exit``, like a kill -9: nothing is cleaned up) the first time, and leaves the marker
    file so that the retry or rerun goes through. Unset, this does nothing."""
    spec = os.environ.get(FAULT_ENV, "")
    point, _, marker = spec.partition(":")
    if point != name or not marker or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"{name} {os.getpid()}\n")
    os._exit(77)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Hdri:
    """An HDRI ready to render: header, hash, sanitisation record, statistics and aims; with the ``signed`` policy
    and an engine that needs a file, also the map's negative part (``negative``) and where on the sphere it is."""

    meta: dict
    aims: dict
    source: HdriSource
    negative: HdriSource | None = None
    negative_cells: tuple[np.ndarray, float] | None = None  # unit directions of map cells holding negatives, radius


NEGATIVE_CELLS_MAX_WIDTH = 512  # the negative part's footprint is tracked on cells of at most 512x256 per map


def _split_negative(img: np.ndarray, scratch: Path, chunk_rows: int = 256) -> tuple[Path, tuple[np.ndarray, float]]:
    """Move the negative part of a signed map into its own non-negative map, in place: ``img`` becomes max(x, 0), the
    file written holds max(-x, 0) (so x = positive - negative, and a renderer that is linear in the map renders x as
    the difference of two renders of non-negative maps). Also returns where the negatives are: the unit directions of
    the centres of the cells (f x f texels) that hold any, and an angular radius covering a cell plus the one-texel
    reach of bilinear lookups."""
    h, w = img.shape[:2]
    f = max(1, -(-w // NEGATIVE_CELLS_MAX_WIDTH))
    while w % f or h % f:
        f -= 1
    neg = np.zeros_like(img)  # calloc: pages that stay zero take no memory
    cells = np.zeros((h // f, w // f), bool)
    step = max(f, chunk_rows // f * f)
    for r0 in range(0, h, step):
        c = img[r0 : r0 + step]
        below = c < 0
        if below.any():
            neg[r0 : r0 + step] = np.where(below, -c, 0.0)
            np.maximum(c, 0.0, out=c)
            rows = c.shape[0] // f
            cells[r0 // f : r0 // f + rows] = below.any(axis=2).reshape(rows, f, w // f, f).any(axis=(1, 3))
    path = scratch / "hdri_negative.exr"
    write_exr(path, neg, compression="zip")  # almost all zeros: small and quick
    del neg
    r, c = np.nonzero(cells)
    az, el = camera.equirect_to_azel((c + 0.5) * f, (r + 0.5) * f, w, h)
    dirs = camera.direction(az, el)
    texel = np.pi / h
    return path, (dirs, (f * 0.75 + 1.0) * texel)


def _sees(cells: tuple[np.ndarray, float], plan: ClipPlan, fc, width: int, height: int,
          shutter: float = 0.0) -> bool:
    """Whether any cell of ``cells`` can reach a pixel of the frame: within the cone around the view axis that holds
    the image's diagonal, widened by the cell radius and the pixel filter's reach (2 pixels at the image centre,
    where pixels subtend the largest angle); with motion blur, that cone at shutter open, frame time and close,
    widened by the angle the view turns between them. Conservative: a frame it rejects sees none of those texels."""
    dirs, radius = cells
    if not len(dirs):
        return False
    sw, sh = camera.sensor_size(width, height)
    if shutter > 0:
        keys = camera.shutter_keys([f.focal_mm for f in plan.frames], [f.rotation_euler for f in plan.frames],
                                   fc.index, shutter)
    else:
        keys = [(fc.focal_mm, camera.euler_matrix(fc.rotation_euler))]
    views = [r @ np.array([0.0, 0.0, -1.0]) for _, r in keys]
    turn = max((math.acos(min(1.0, float(a @ b))) for a, b in zip(views, views[1:])), default=0.0)
    for focal, view in zip((f for f, _ in keys), views):
        half_diag = math.atan(math.hypot(sw / 2, sh / 2) / focal)
        reach = half_diag + radius + 2 * sw / width / focal + turn
        if reach >= math.pi or (dirs @ view >= math.cos(reach)).any():
            return True
    return False


def _prepare_hdri(local: Path, task: HdriTask, needs: str, scratch: Path) -> _Hdri:
    name = f"{task.hdri_rel}"
    policy = task.settings.negative_texels
    try:
        header = read_header(local, name=name)
    except HdrImageError as e:
        raise InputError(str(e)) from e
    problem = equirect_problem(header.width, header.height)
    if problem:
        raise InputError(f"{name}: {problem}")
    try:
        img = read_image(local, name=name)
    except HdrImageError as e:
        raise InputError(str(e)) from e
    bad = sanitize(img, negative=_SANITIZE_NEGATIVE[policy], equirect=True)
    bad["negative_texels"] = policy
    lum_small, factor = analysis.luminance_map(img)
    aims = analysis.aims(lum_small, factor)
    meta = {
        "rel": task.hdri_rel,
        "uri": Store(task.hdris_url).uri(task.hdri_rel),
        "sha256": sha256_file(local),
        "bytes": local.stat().st_size,
        "format": header.format,
        "width": header.width,
        "height": header.height,
        "pixel_type": header.pixel_type,
        "compression": header.compression,
        "sanitize": bad,
        "radiance": radiance_stats(lum_small, max_channel=float(img.max())),
        "radiance_note": f"statistics of the luminance map area-averaged {factor}x{factor}",
    }
    signed = policy == "signed" and bad["negative"] > 0
    changed = any(bad[k] for k in ("nan", "posinf", "neginf", "negative"))
    negative = cells = None
    if needs == "pixels":
        source = HdriSource(path=None, pixels=img, width=header.width, height=header.height)
        if signed:
            meta["engine_input"] = "the signed map (negative texels kept): the pixel filter sees them"
    elif header.format == "exr" and not changed:
        source = HdriSource(path=local, pixels=None, width=header.width, height=header.height)
        del img
    else:  # .hdr, or texels were repaired: hand the engine the sanitised radiance
        if signed:  # Cycles is given only non-negative maps: the positive part here, the negative part on its own
            neg_path, cells = _split_negative(img, scratch)
            negative = HdriSource(path=neg_path, pixels=None, width=header.width, height=header.height)
            meta["engine_input"] = ("the signed map as two non-negative float32 copies, positive part max(x, 0) and "
                                    "negative part max(-x, 0); a frame is render(positive) - render(negative), the "
                                    "same camera and samples, i.e. the pixel-filtered signed map")
        else:
            meta["engine_input"] = "sanitised float32 copy (see sanitize)"
        clean = scratch / "hdri_clean.exr"
        write_exr(clean, img, compression="none")
        source = HdriSource(path=clean, pixels=None, width=header.width, height=header.height)
        del img
    return _Hdri(meta=meta, aims=aims, source=source, negative=negative, negative_cells=cells)


def _render_negative_part(engine, hdri: _Hdri, task: HdriTask, programs, scratch: Path) -> dict:
    """With the map's negative part loaded, render it for every frame of ``programs`` that can see it (same camera,
    same seed, so the same samples as the positive part's render) and keep each frame in scratch.
    Returns {program: {"frames": {index: path}, "seconds": render seconds}}."""
    s = task.settings
    engine.load(hdri.negative)
    parts = {}
    for program in programs:
        plan = plan_clip(program, s.frames, s.seed, task.hdri_id, hdri.aims)
        seen = [fc for fc in plan.frames if _sees(hdri.negative_cells, plan, fc, s.width, s.height, s.shutter)]
        parts[program] = {"frames": {}, "seconds": 0.0}
        if not seen:
            continue
        t0 = time.perf_counter()  # the same keyed camera and seed as the positive part: the same samples
        for fc, img in zip(seen, engine.render(plan, s.width, s.height, scratch, only={fc.index for fc in seen})):
            path = scratch / f"neg_{program}_{fc.index:04d}.npy"
            np.save(path, img)
            parts[program]["frames"][fc.index] = path
        parts[program]["seconds"] = time.perf_counter() - t0
    return parts


def _clip_record(task, plan, hdri, engine_info, frames, pooled, out_info, timing) -> dict:
    s = task.settings
    lum = np.concatenate(pooled) if pooled else np.zeros(1)
    radiance = radiance_stats(lum, max_channel=max(f["stats"]["max_channel"] for f in frames))
    radiance["min"] = min(f["stats"]["min"] for f in frames)
    radiance["max"] = max(f["stats"]["max"] for f in frames)
    radiance["note"] = "min/max exact over all frames; percentiles from a strided sample of each frame"
    return {
        "schema": ClipMeta.schema_id(),
        "hdri_id": task.hdri_id,
        "clip_id": plan.clip_id,
        "program": plan.program,
        "created": _now(),
        "toolkit_version": hdr.__version__,
        "settings": s.fingerprint(),
        "seed": plan.seed,
        "dataset_seed": s.seed,
        "seed_derivation": SEED_DERIVATION.replace("key1", "hdri_id").replace("key2", "program"),
        "hdri": {**hdri.meta, **({"source": task.source} if task.source else {})},
        "program_params": plan.params,
        "camera": {
            "location": [0.0, 0.0, 0.0],
            "sensor_width_mm": camera.SENSOR_WIDTH_MM,
            "sensor_fit": camera.SENSOR_FIT,
            "euler_order": "XYZ",
            "convention": camera.CONVENTION,
            "shutter": s.shutter,
            **({"shutter_model": camera.SHUTTER_MODEL} if s.shutter > 0 else {}),
        },
        "output": {
            "resolution": [s.width, s.height],
            "frame_count": len(frames),
            "format": "OpenEXR",
            "channels": "RGB",
            "colorspace": "scene-linear Rec.709 (no view transform)",
            **out_info,
        },
        "engine": engine_info,
        "radiance": radiance,
        "timing": timing,
        "host": _node(),
        "frames": frames,
    }


class FrameWriteError(Exception):
    """Writing or publishing one frame failed (disk full, upload refused, ...): its clip fails, the next one goes on."""


AUTO_COMPRESSION = ("auto = zip, except none for the direct engine writing on the CPU's critical path (inline): "
                    "there zip's 5-7x write time would cost more than the 4-14% of disk it saves on float32 frames "
                    "(docs/render.md, 'Progress and the EXR writer')")


def exr_compression(s: RenderSettings, background: bool) -> str:
    """The EXR codec the frames are written with: ``s.compression``, or for ``auto`` (:data:`AUTO_COMPRESSION`)
    zip unless the direct engine writes inline (not ``background``)."""
    if s.compression != "auto":
        return s.compression
    return "none" if s.engine == "direct" and not background else "zip"


def _pipelined(engine, out: Store) -> bool:
    """Whether a clip's frames are written on a background thread while the next ones render: when the renderer
    leaves the CPUs free (its device is a GPU) or the output store is remote (uploads wait on the network); inline
    otherwise, where the writer would take CPU time from the renderer. :data:`PIPELINE` True/False overrides it."""
    if PIPELINE is not None:
        return bool(PIPELINE)
    return str(engine.info().get("device", "cpu")).lower() != "cpu" or not out.is_local


class _FrameWriter:
    """Clamp, measure, write and publish a clip's frames in order, then report each one (hdr.cluster.progress):
    inline (:meth:`put` does the work) or on a background thread behind a queue of :data:`WRITE_QUEUE` frames, so the
    renderer is at most WRITE_QUEUE + 2 frames ahead (one being written, the queue, one just rendered). The first
    failure is kept: :meth:`put` raises it (the renderer stops), the thread drops what is still queued."""

    def __init__(self, task: HdriTask, out: Store, rel: str, scratch: Path, background: bool):
        self.s, self.out, self.rel, self.scratch = task.settings, out, rel, scratch
        self.compression = exr_compression(self.s, background)
        self.threads = self.s.threads or os.cpu_count() or 1  # OpenEXR's pool: the task's CPUs
        self.frames: list[dict] = []
        self.pooled: list[np.ndarray] = []
        self.clamped, self.info, self.seconds = 0, {}, 0.0
        self.pixel_clamp = {"policy": sanitize_policy("clamp"), "applied": "every frame, after the pixel filter",
                            "values_clamped": 0, "frames_clamped": 0, "largest_added_fraction": 0.0,
                            "largest_added_fraction_note": "energy the clamp added to a frame / the frame's sum "
                            "after it"}
        self.error: FrameWriteError | None = None
        self.cancelled = False
        self.queue: queue.Queue | None = None
        self.thread: threading.Thread | None = None
        if background:
            self.queue = queue.Queue(maxsize=WRITE_QUEUE)
            self.thread = threading.Thread(target=self._loop, name=f"exr-writer-{rel}", daemon=True)
            self.thread.start()

    def record(self) -> dict:
        """clip.json's ``output.writer``."""
        if self.queue is None:
            rec = {"thread": "inline", "queue": 0, "note": "each frame is written before the next one renders"}
        else:
            rec = {"thread": "background", "queue": WRITE_QUEUE,
                   "note": "clamp, statistics, EXR write and publish on a thread while the next frames render "
                   "(write_seconds is its busy time)"}
        pooled = self.threads > 1 and self.compression != "none"  # hdr.io.write_exr: no pool for raw files
        return {**rec, "exr_threads": self.threads if pooled else 0}

    def put(self, cam, extra: dict, img: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        if self.queue is None:
            self._timed(cam, extra, img)
            if self.error is not None:
                raise self.error
        else:
            self.queue.put((cam, extra, img))  # blocks while the queue is full: the writer takes one at a time

    def close(self, cancel: bool = False) -> None:
        """Wait until every queued frame is published (``cancel``: drop them); raise the first failure."""
        if self.thread is not None:
            self.cancelled = self.cancelled or cancel
            self.queue.put(None)  # the writer keeps taking frames until this, so the put cannot block for good
            self.thread.join()
            self.thread = None
        if self.error is not None and not cancel:
            raise self.error

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None and not self.cancelled:
                self._timed(*item)

    def _timed(self, cam, extra: dict, img: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            self._write(cam, extra, img)
        except Exception as e:  # noqa: BLE001  (this clip fails with the frame named; the next one goes on)
            self.error = FrameWriteError(f"frame {cam.index} ({layout.frame_name(cam.index)}): {error_line(e)}")
        self.seconds += time.perf_counter() - t0

    def _write(self, cam, extra: dict, img: np.ndarray) -> None:
        s, pixel_clamp = self.s, self.pixel_clamp
        # Never a negative or non-finite pixel: clamped at 0 after the filter (a signed map rings below 0 where a
        # pixel resolves its lobes; engines should produce no NaN/inf, if they do the same policy applies), recorded.
        lost = float(-np.minimum(img, 0.0).sum(dtype=np.float64, where=np.isfinite(img))) if img.min() < 0 else 0.0
        bad = sanitize(img, negative="clamp")
        if bad["negative"]:
            pixel_clamp["values_clamped"] += bad["negative"]
            pixel_clamp["frames_clamped"] += 1
            pixel_clamp["largest_added_fraction"] = max(pixel_clamp["largest_added_fraction"],
                                                        lost / max(float(img.sum(dtype=np.float64)), 1e-30))
        lum = luminance(img)
        tmp = self.scratch / f"out_{cam.index:04d}.exr"
        self.info = write_exr(tmp, img, half=s.half, compression=self.compression, threads=self.threads)
        self.clamped += self.info["clamped"]
        name = layout.frame_name(cam.index)
        recorded = self.out.publish_recorded(tmp, f"{self.rel}/{name}")  # bytes, sha256, mtime_ns | etag
        stride = max(1, lum.size // STATS_SAMPLE)
        self.pooled.append(lum.ravel()[::stride])
        self.frames.append({
            "index": cam.index,
            "file": name,
            **recorded,
            "focal_mm": cam.focal_mm,
            "rotation_euler": list(cam.rotation_euler),
            "view_direction": list(cam.view_direction()),
            **extra,
            "stats": {
                "min": float(lum.min()),
                "max": float(lum.max()),
                "mean": float(lum.mean()),
                "max_channel": float(img.max()),
                "frac_above_1": float((lum > 1.0).mean()),
                **({"repaired_texels": {k: v for k, v in bad.items() if isinstance(v, int) and v}}
                   if any(bad[k] for k in ("nan", "posinf", "neginf", "negative")) else {}),
            },
        })
        progress(1)


def _render_clip(task: HdriTask, out: Store, engine, hdri: _Hdri, program: str, scratch: Path,
                 negative: dict | None = None) -> dict:
    """Render, check and publish one clip, then its clip.json. ``negative``: this clip's frames of the map's
    negative part (:func:`_render_negative_part`), subtracted from the engine's frames before the clamp. A frame that
    cannot be written raises :class:`FrameWriteError` (the clip's published frames are removed, no clip.json)."""
    s = task.settings
    plan: ClipPlan = plan_clip(program, s.frames, s.seed, task.hdri_id, hdri.aims)
    rel = layout.clip_rel(task.hdri_id, plan.clip_id)
    if s.overwrite:
        out.remove(rel)
    else:  # a partial clip from an interrupted run: drop its stale frames and clip.json
        for name in layout.list_files(out, rel):
            if layout.is_frame_name(name) or name == layout.CLIP_JSON:
                out.remove(f"{rel}/{name}")
    t_start = time.perf_counter()
    render_s = 0.0
    writer = _FrameWriter(task, out, rel, scratch, background=_pipelined(engine, out))
    it = iter(engine.render(plan, s.width, s.height, scratch))
    try:
        for cam, extra in zip(plan.frames, engine.frame_extras(plan, s.width, s.height)):
            t0 = time.perf_counter()
            img = next(it)
            render_s += time.perf_counter() - t0
            if negative and cam.index in negative["frames"]:
                part = negative["frames"][cam.index]
                img -= np.load(part)  # the signed map's frame: positive part - negative part
                part.unlink()
            writer.put(cam, extra, img)
        writer.close()
    except BaseException as e:
        writer.close(cancel=True)  # the renderer raised or the writer failed: stop the other side too
        getattr(it, "close", lambda: None)()
        if isinstance(e, FrameWriteError):
            for f in writer.frames:  # not a clip without its clip.json: free the space (a rerun redoes it anyway)
                out.remove(f"{rel}/{f['file']}")
        raise
    frames, out_info = writer.frames, writer.info
    total = time.perf_counter() - t_start
    out_info = {
        "pixel_type": out_info.get("pixel_type"),
        "compression": out_info.get("compression"),
        **({"compression_rule": AUTO_COMPRESSION} if s.compression == "auto" else {}),
        "clamp": {"value": out_info.get("clamp_value"), "texels_clamped": writer.clamped} if s.half else None,
        "pixel_clamp": writer.pixel_clamp,
        "writer": writer.record(),
    }
    if negative is not None:
        out_info["negative_part"] = {
            "method": "frame = render(positive part) - render(negative part), same camera and samples, then clamped",
            "frames": sorted(negative["frames"]),
            "render_seconds": negative["seconds"],
            "frame_selection": "frames whose view (diagonal cone + pixel filter reach) meets a map cell holding "
                               "negative texels; the others see none of them",
        }
        render_s += negative["seconds"]
    timing = {
        "render_seconds": render_s,
        "seconds_per_frame": render_s / max(1, len(frames)),
        "write_seconds": writer.seconds,
        "total_seconds": total,
    }
    record = _clip_record(task, plan, hdri, engine.info(), frames, writer.pooled, out_info, timing)
    fault_point("before-clip-json")
    ClipMeta.from_json(record, f"{rel}/{layout.CLIP_JSON}").write(out, f"{rel}/{layout.CLIP_JSON}")  # last: complete
    return {"status": "rendered", "frames": len(frames), "seconds": total, "render_seconds": render_s}


def render_hdri(task: HdriTask) -> HdriResult:
    """Render every requested clip of one HDRI that is not already complete. Never raises for a bad input file
    (the result carries the error); other exceptions propagate so the scheduler can retry the task."""
    t0 = time.perf_counter()
    s = task.settings
    out = Store(task.out_url)
    result = HdriResult(hdri_id=task.hdri_id, hdri=task.hdri_rel, node=_node())
    todo = []
    states = layout.hdri_clip_states(out, task.hdri_id, s.programs, s.fingerprint())  # one listing of the HDRI
    for program in s.programs:
        state, detail = states[program]
        if state == "complete" and not s.overwrite:
            result.clips[program] = {"status": "skipped", "detail": detail}
        elif state == "conflict" and not s.overwrite:
            result.clips[program] = {"status": "conflict", "detail": f"{task.hdri_id}/{program} {detail}; "
                                     "not overwritten (use another --out, or --overwrite)"}
        else:
            todo.append(program)
    if not todo:
        result.seconds = time.perf_counter() - t0
        return result

    scratch = out.scratch_dir(prefix=f"{task.hdri_id}-")
    engine = None
    try:
        with Store(task.hdris_url).local_copy(task.hdri_rel, scratch) as local:
            engine = get_engine(s.engine, **_engine_options(s))
            hdri = _prepare_hdri(Path(local), task, engine.needs, scratch)
            parts = {}
            if hdri.negative is not None:
                try:
                    parts = _render_negative_part(engine, hdri, task, todo, scratch)
                except EngineError as e:
                    for program in todo:
                        result.clips[program] = {"status": "failed",
                                                 "detail": f"{task.hdri_rel} / {program} (negative part): {e}"}
                    todo = []
            if todo:
                engine.load(hdri.source)
            for program in todo:
                try:
                    result.clips[program] = _render_clip(task, out, engine, hdri, program, scratch,
                                                         parts.get(program))
                except (EngineError, FrameWriteError) as e:
                    result.clips[program] = {"status": "failed", "detail": f"{task.hdri_rel} / {program}: {e}"}
    except InputError as e:
        result.error = str(e)
        for program in todo:
            result.clips.setdefault(program, {"status": "failed", "detail": str(e)})
    except FileNotFoundError as e:
        result.error = f"{task.hdri_rel}: file not found ({e})"
        for program in todo:
            result.clips.setdefault(program, {"status": "failed", "detail": result.error})
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.perf_counter() - t0
    return result


def _engine_options(s: RenderSettings) -> dict:
    samples = {} if s.samples is None else {"samples": s.samples}  # None: the engine's default
    if s.engine == "blender":
        adaptive = {k: v for k, v in (("noise_threshold", s.noise_threshold), ("min_samples", s.min_samples))
                    if v is not None}
        return {**samples, **adaptive, "device": s.device, "threads": s.threads, "shutter": s.shutter}
    return {**samples, "backend": s.backend, "device": s.device, "threads": s.threads,
            "max_samples": s.max_samples, "shutter": s.shutter}
