"""The dry run's cost model: a run's wall time from terms measured by a short probe on this machine/cluster.

``wall = driver + start + tasks + shutdown + exit``, where ``tasks`` is the span of the tasks scheduled greedily, in
submission order, over the parallel slots, a task costing ``task + texel x map texels + clips x (clip + frames x
frame)``, plus ``cold`` for the first task of a process (engine imports, first use) and ``worker`` before it when Ray
recycled the worker (``--tasks-per-worker``). ``slots`` = Ray's CPUs // CPUs per task (and GPUs // GPUs per task),
1 with ``--no-ray``.

The probe runs the way the real run does (through :func:`hdr.cluster.run_tasks`, so it starts Ray and its workers;
one probe task per slot, up to the number of tasks, at once): each probe task renders, in one process, a 1-frame clip
of a tiny synthetic map (cold: imports and first use), 1-frame and then 3-frame clips of every program of the run on
a real map (per frame and per clip separate), and the tiny map again (the fixed per-task part; the real map's extra
is per texel). Above :data:`PROBE_MAX_PIXELS` the probe renders a smaller frame of the same aspect and the per-frame
term is scaled by pixels. Probe frames are written to a local temporary folder, not to ``--out``. The driver term
counts from this process's start (interpreter and imports); the exit term is the exit of a fresh interpreter holding
the same modules.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdr.cluster import RayOptions, run_tasks
from hdr.dataset import layout
from hdr.io import read_header, write_exr
from hdr.storage import Store, human_bytes
from render.job import HdriTask, RenderSettings, render_hdri

PROBE_MAX_PIXELS = 1280 * 720  # larger frames are probed at this many pixels (same aspect), per-frame cost scaled
PROBE_FRAMES = (1, 3)  # frames of the two clips of the real map: their difference is the per-frame cost
TINY_MAP = (64, 32)  # the synthetic map whose task cost is the fixed per-task part


@dataclass(frozen=True)
class Terms:
    """Measured costs in seconds (``texel``: seconds per map texel)."""

    driver: float = 0.0  # process start -> first task submitted: interpreter, imports, listing
    start: float = 0.0  # Ray start and the first wave's workers, up to the tasks' start (0 without Ray)
    worker: float = 0.0  # a recycled Ray worker's start (process + imports) before its next task
    cold: float = 0.0  # a process's first task: engine imports and first use
    task: float = 0.0  # per task, fixed: map copy, sanitize, analysis, engine load (of a tiny map)
    texel: float = 0.0  # per task, per map texel: decode, sanitize, analysis, the engine's image load
    clip: float = 0.0  # per clip: plan, camera keying, animation job start
    frame: float = 0.0  # per frame at the run's resolution: render + write
    shutdown: float = 0.0  # Ray shutdown at exit
    exit: float = 0.0  # the interpreter's exit: module teardown, static destructors
    slots: int = 1  # tasks at once
    tasks_per_worker: int = 0  # Ray recycles a worker after this many tasks (0: never)


@dataclass(frozen=True)
class Job:
    """One task of the run: one map, ``clips`` clips of ``frames`` frames."""

    clips: int
    frames: int
    texels: int


@dataclass(frozen=True)
class Estimate:
    wall: float  # seconds, the whole command
    tasks: float  # first task's start -> last task's end
    work: float  # sum of the tasks' seconds (x CPUs per task = core-seconds)
    waves: int  # ceil(tasks / slots)
    slots: int


def task_seconds(t: Terms, job: Job) -> float:
    """A warm task's seconds (no process start, no first-use costs)."""
    return t.task + t.texel * job.texels + job.clips * (t.clip + job.frames * t.frame)


def estimate(t: Terms, jobs: list[Job]) -> Estimate:
    """Wall time of running ``jobs`` in order: each goes to the slot that frees first (what Ray's queue does)."""
    if not jobs:
        return Estimate(wall=t.driver + t.exit, tasks=0.0, work=0.0, waves=0, slots=t.slots)
    slots = max(1, t.slots)
    free = [(0.0, i, 0) for i in range(min(slots, len(jobs)))]  # (time the slot frees, slot, tasks in its worker)
    started = set()  # slots whose first worker has run (its start is in ``t.start``)
    work = 0.0
    for job in jobs:
        at, slot, calls = heapq.heappop(free)
        cost = task_seconds(t, job)
        if calls == 0:
            cost += t.cold + (t.worker if slot in started else 0.0)
            started.add(slot)
        work += cost
        calls += 1
        if t.tasks_per_worker and calls >= t.tasks_per_worker:
            calls = 0  # recycled: the next task on this slot waits for a new worker
        heapq.heappush(free, (at + cost, slot, calls))
    span = max(at for at, _, _ in free)
    return Estimate(wall=t.driver + t.start + span + t.shutdown + t.exit, tasks=span, work=work,
                    waves=math.ceil(len(jobs) / slots), slots=slots)


# --- measuring the terms -------------------------------------------------------------------------------------------
def process_age() -> float | None:
    """Seconds since this process started (interpreter start included), None where it cannot be read. On Linux from
    /proc (ticks since boot; psutil's create_time is offset by up to a second: the boot time is whole seconds)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001  (psutil missing or not permitted: the caller says "not measured")
        return None


_EXIT_CHILD = """import sys, time
for name in sys.stdin.read().split():
    try:
        __import__(name)
    except Exception:
        pass
print(repr(time.time()), flush=True)
"""


def exit_seconds(timeout: float = 300.0) -> float:
    """Seconds this process will take to exit (module teardown and C++ static destructors: ~1 s with torch): a fresh
    interpreter imports the modules this one holds and exits, timed from its last line to its end; 0 on failure."""
    names = [n for n in list(sys.modules) if n not in ("__main__", "__mp_main__")]
    try:
        r = subprocess.run([sys.executable, "-c", _EXIT_CHILD], input=" ".join(names), capture_output=True,
                           text=True, timeout=timeout)
        end = time.time()
        return max(0.0, end - float(r.stdout.split()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0.0


def map_texels(store: Store, rels: list[str]) -> dict[str, int]:
    """Texels of each map from its header (read in parallel; an unreadable header counts 0)."""
    def one(rel):
        try:
            with store.open(rel) as f:
                h = read_header(f, name=rel)
            return h.width * h.height
        except Exception:  # noqa: BLE001  (the run itself reports unreadable files)
            return 0
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(rels, pool.map(one, rels)))


def probe_resolution(width: int, height: int, max_pixels: int = PROBE_MAX_PIXELS) -> tuple[int, int]:
    if width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * s)), max(1, int(height * s))


@dataclass(frozen=True)
class ProbeSpec:
    hdris_url: str
    rel: str
    hdri_id: str
    texels: int
    settings: RenderSettings  # at the probe's resolution


def _timed(task: HdriTask) -> tuple[float, float]:
    """(task seconds, clip seconds) of one render_hdri call; raises when a clip did not render."""
    t0 = time.perf_counter()
    res = render_hdri(task)
    seconds = time.perf_counter() - t0
    bad = [c.get("detail") for c in res.clips.values() if c["status"] != "rendered"]
    if res.error or bad:
        raise RuntimeError(res.error or bad[0])
    return seconds, sum(c["seconds"] for c in res.clips.values())


def probe_task(spec: ProbeSpec) -> dict:
    """The probe's task (runs where the real tasks run): times the four render_hdri calls of the module docstring."""
    t_start, age = time.time(), process_age()
    tmp = Path(tempfile.mkdtemp(prefix="render-probe-"))
    s = dataclasses.replace(spec.settings, overwrite=False)
    p0 = s.programs[0]
    try:
        (tmp / "maps").mkdir()
        w, h = TINY_MAP
        ramp = np.linspace(0.2, 2.0, w * h, dtype=np.float32).reshape(h, w, 1)
        write_exr(tmp / "maps" / "probe_tiny.exr", np.repeat(ramp, 3, axis=2), compression="zip")
        maps = str(tmp / "maps")

        def tiny(out: str) -> HdriTask:
            return HdriTask(maps, "probe_tiny.exr", "probe_tiny", str(tmp / out),
                            dataclasses.replace(s, frames=1, programs=(p0,)))

        def real(out: str, frames: int) -> HdriTask:  # every program of the run: the per-clip cost is their mean
            return HdriTask(spec.hdris_url, spec.rel, spec.hdri_id, str(tmp / out),
                            dataclasses.replace(s, frames=frames))

        cold = _timed(tiny("a"))
        one = _timed(real("b", PROBE_FRAMES[0]))
        more = _timed(real("c", PROBE_FRAMES[1]))
        fixed = _timed(tiny("d"))
        frames = [f for p in s.programs
                  for f in Store(str(tmp / "c")).read_json(f"{spec.hdri_id}/{p}/{layout.CLIP_JSON}")["frames"]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"start": t_start, "age": age, "end": time.time(), "cold": cold, "one": one, "more": more, "fixed": fixed,
            "clips": len(s.programs), "texels": spec.texels,
            "bytes_per_frame": sum(f["bytes"] for f in frames) / len(frames)}


def terms_from_probe(r: dict) -> dict:
    """One probe task's per-task, per-texel, per-clip, per-frame and cold terms (at the probe's resolution)."""
    n0, n1 = PROBE_FRAMES
    k = r["clips"]
    fixed = r["fixed"][0] - r["fixed"][1]
    warm = ((r["one"][0] - r["one"][1]) + (r["more"][0] - r["more"][1])) / 2
    frame = max(0.0, (r["more"][1] - r["one"][1]) / (k * (n1 - n0)))
    tiny = TINY_MAP[0] * TINY_MAP[1]
    return {
        "task": max(0.0, fixed),
        "texel": max(0.0, warm - fixed) / max(1, r["texels"] - tiny),
        "cold": max(0.0, r["cold"][0] - r["cold"][1] - fixed),
        "frame": frame,
        "clip": max(0.0, r["one"][1] / k - n0 * frame),
    }


@dataclass
class Probe:
    terms: Terms
    bytes_per_frame: float
    resolution: tuple[int, int]
    maps: list[str]
    pixel_scale: float  # run pixels / probe pixels (the per-frame term is scaled by it)


def run_probe(settings: RenderSettings, hdris_url: str, entries: list, texels: dict[str, int], *, use_ray: bool,
              opts: RayOptions | None) -> Probe:
    """Measure :class:`Terms`: probe tasks for the first ``min(slots, len(entries))`` maps of ``entries`` (the maps
    to render, in order) run at once through :func:`run_tasks`. The driver term is this process's age now (0 where
    it cannot be read). Raises RuntimeError when a probe task fails."""
    w, h = probe_resolution(settings.width, settings.height)
    ps = dataclasses.replace(settings, width=w, height=h)
    t_call, driver = time.time(), process_age() or 0.0
    slots, width = 1, 1
    if use_ray:
        import ray

        from hdr.cluster import _init_ray  # the same private instance (or cluster) run_tasks would start

        opts = opts or RayOptions()
        _init_ray(opts)
        res = ray.cluster_resources()
        slots = int(res.get("CPU", 1) // max(opts.num_cpus, 1e-9))
        if opts.num_gpus:
            slots = min(slots, int(res.get("GPU", 0) // opts.num_gpus))
        slots = max(1, slots)
        width = min(slots, len(entries))
    specs = [ProbeSpec(hdris_url, e.rel, e.hdri_id, texels.get(e.rel, 0), ps) for e in entries[:width]]
    results, errors = [], []
    run_tasks(probe_task, specs, use_ray=use_ray, opts=opts, on_result=lambda _s, r: results.append(r),
              on_error=lambda s, m: errors.append(f"{s.rel}: {m}"), on_progress=lambda _s, _n: None)
    shutdown = 0.0
    if use_ray:
        import ray

        t0 = time.perf_counter()
        ray.shutdown()
        shutdown = time.perf_counter() - t0
    if errors or not results:
        raise RuntimeError(errors[0] if errors else "no probe result")
    exit_s = exit_seconds()
    each = [terms_from_probe(r) for r in results]
    mean = {k: sum(e[k] for e in each) / len(each) for k in each[0]}
    scale = settings.width * settings.height / (w * h)
    terms = Terms(
        driver=driver,
        start=max(r["start"] for r in results) - t_call if use_ray else 0.0,
        worker=sum(r["age"] or 0.0 for r in results) / len(results) if use_ray else 0.0,
        cold=mean["cold"], task=mean["task"], texel=mean["texel"], clip=mean["clip"], frame=mean["frame"] * scale,
        shutdown=shutdown, exit=exit_s, slots=slots, tasks_per_worker=(opts.max_calls or 0) if use_ray else 0)
    bpf = sum(r["bytes_per_frame"] for r in results) / len(results) * scale
    return Probe(terms=terms, bytes_per_frame=bpf, resolution=(w, h), maps=[s.hdri_id for s in specs],
                 pixel_scale=scale)


def report(probe: Probe, est: Estimate, jobs: list[Job], cores: int, use_ray: bool) -> list[str]:
    """The dry run's estimate lines (stdout)."""
    t, (w, h) = probe.terms, probe.resolution
    frames = sum(j.clips * j.frames for j in jobs)
    scaled = f", per frame scaled x{probe.pixel_scale:.1f} by pixels" if probe.pixel_scale != 1 else ""
    mtex = sum(j.texels for j in jobs) / max(1, len(jobs)) / 1e6
    start = (f" + Ray start {t.start:.1f} s" if use_ray else "")
    stop = (f" + Ray shutdown {t.shutdown:.1f} s" if use_ray else "") + f" + exit {t.exit:.1f} s"
    return [
        f"probe ({', '.join(probe.maps)}; {len(probe.maps)} task(s) at once, {w}x{h}, clips of "
        f"{PROBE_FRAMES[0]} and {PROBE_FRAMES[1]} frames of each program + a {TINY_MAP[0]}x{TINY_MAP[1]} map{scaled}): "
        f"{t.frame:.3f} s/frame, {t.clip:.3f} s/clip, {t.task:.2f} s/task + {t.texel * 1e6:.3f} s/Mtexel, "
        f"first task in a process +{t.cold:.2f} s, {human_bytes(probe.bytes_per_frame)}/frame",
        f"estimate: {human_bytes(probe.bytes_per_frame * frames)} of EXR, {est.work * cores / 3600:.3f} core-hours "
        f"(tasks' seconds x {cores} cores)",
        f"estimate: wall {est.wall:.1f} s = driver {t.driver:.1f} s{start} + {len(jobs)} tasks ({mtex:.2f} Mtexel "
        f"maps on average) in {est.waves} wave(s) over {est.slots} slot(s) {est.tasks:.1f} s{stop} "
        f"(measured now on this machine/cluster{f'; Ray worker start {t.worker:.1f} s' if use_ray else ''})",
    ]
