"""Render speed at the defaults: frame-level progress from the tasks to the driver, the pipelined EXR writer, and the
dry run's wall-time estimate against the measured run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import render.job as job
from hdr import cli
from hdr.cluster import RayOptions, progress, run_tasks
from hdr.dataset import layout
from hdr.storage import Store
from render.job import HdriTask, RenderSettings, render_hdri

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("rotation_000", "highlight_zoom_in")
TINY = dict(width=32, height=18, frames=5, samples=1, programs=PROGRAMS, threads=1)


def _cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray, never a cluster
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "render.run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _task(bundled, root, name="city", **kw) -> HdriTask:
    return HdriTask(str(bundled), f"{name}.exr", name, str(root), RenderSettings(**{**TINY, **kw}))


# --- progress by frame -----------------------------------------------------------------------------------------------
def test_tasks_report_every_published_frame_in_process(bundled_hdris, tmp_path):
    seen: dict[str, list[int]] = {}
    results = {}
    tasks = [_task(bundled_hdris, tmp_path, n, engine="direct") for n in ("city", "forest")]
    run_tasks(render_hdri, tasks, use_ray=False, on_result=lambda t, r: results.update({t.hdri_id: r}),
              on_error=lambda t, m: pytest.fail(m), on_progress=lambda t, n: seen.setdefault(t.hdri_id, []).append(n))
    per_task = TINY["frames"] * len(PROGRAMS)
    assert seen == {"city": list(range(1, per_task + 1)), "forest": list(range(1, per_task + 1))}
    assert all(r.count("rendered") == 2 for r in results.values())


def _counting(n: int) -> int:
    for _ in range(n):
        progress(1)
        time.sleep(0.3)
    return n


def test_progress_reaches_the_driver_through_ray():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests package
    ray.init(address="local", num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False,
             logging_level="ERROR")
    try:
        seen: dict[int, list[int]] = {}
        done = {}
        run_tasks(_counting, [6, 8], use_ray=True, opts=RayOptions(num_cpus=1),
                  on_result=lambda t, v: done.update({t: v}), on_error=lambda t, m: pytest.fail(m),
                  on_progress=lambda t, n: seen.setdefault(t, []).append(n))
        assert done == {6: 6, 8: 8}
        for item, counts in seen.items():  # throttled, but in order, never beyond the task's own count
            assert counts == sorted(counts) and counts[-1] <= item
        assert sum(len(c) for c in seen.values()) >= 4, seen  # ~2.4 s of reports each: several polls
    finally:
        ray.shutdown()


def _stepper(n: int) -> int:
    for _ in range(n):
        progress(2)
    return 3 * n  # the final count differs from what was reported: the bar takes the tally's units


def test_run_stage_bar_follows_progress_and_ends_at_the_tallies(tmp_path, capsys):
    run = cli.StageRun(stage="demo", fn=_stepper, tasks=[1, 2, 3], store=Store(str(tmp_path)), argv=[],
                       on_result=lambda t, v: cli.Tally(counts={"done": 1}, units=v),
                       on_error=lambda t, m: cli.Tally(counts={"failed": 1}), counts={"done": 0, "failed": 0},
                       summary="{done} done", total=18, unit="frame", progress=True, postfix=("done",))
    assert cli.run_stage(run, use_ray=False) == 0
    err = capsys.readouterr().err
    assert re.findall(r"(\d+)/18", err)[-1] == "18" and "frame" in err and "done=3" in err


def test_render_bar_counts_frames(hdri_dir, tmp_path):
    src = hdri_dir("city", "forest")
    r = _cli("--hdris", src, "--out", tmp_path / "out", "--no-ray", "--engine", "direct",
             "--programs", ",".join(PROGRAMS), "--frames", 5, "--resolution", "32x18", "--samples", 1)
    assert r.returncode == 0, r.stderr
    steps = [int(n) for n in re.findall(r"render:\s+\d+%\|[^|]*\|\s*(\d+)/20 ", r.stderr)]
    assert steps[0] == 0 and steps[-1] == 20 and "frame/s" in r.stderr, r.stderr
    assert any(0 < n < 20 for n in steps), steps  # moved before the tasks finished: in frames, not in HDRIs
    assert r.stderr.strip().splitlines()[-1].startswith("rendered 4 clips, 0 already complete, 0 failed")


# --- the pipelined writer --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipelined", [True, False])
def test_writer_failure_fails_the_clip_naming_the_frame(bundled_hdris, tmp_path, monkeypatch, pipelined):
    monkeypatch.setattr(job, "PIPELINE", pipelined)
    real, calls = job.write_exr, []

    def failing(path, img, **kw):
        calls.append(Path(path).name)
        if calls.count("out_0002.exr") == 1 and Path(path).name == "out_0002.exr":  # frame 2 of the first clip
            raise OSError(28, "No space left on device")
        return real(path, img, **kw)

    monkeypatch.setattr(job, "write_exr", failing)
    res = render_hdri(_task(bundled_hdris, tmp_path, engine="direct"))
    bad, good = (res.clips[p] for p in PROGRAMS)
    assert bad["status"] == "failed" and "frame 2 (frame_0002.exr)" in bad["detail"], bad
    assert "No space left on device" in bad["detail"] and bad["detail"].startswith("city.exr / rotation_000")
    assert not (tmp_path / "city" / PROGRAMS[0] / layout.CLIP_JSON).exists()
    assert layout.clip_state(Store(str(tmp_path)), "city", PROGRAMS[0])[0] != "complete"
    assert good["status"] == "rendered"  # the next clip goes on
    assert layout.clip_state(Store(str(tmp_path)), "city", PROGRAMS[1])[0] == "complete"


def test_the_writer_runs_in_the_background_where_the_renderer_leaves_the_cpus(tmp_path):
    class Engine:
        def __init__(self, device):
            self.device = device

        def info(self):
            return {"device": self.device}

    local, remote = Store(str(tmp_path)), Store("memory://render-progress-test")
    assert not job._pipelined(Engine("cpu"), local) and not job._pipelined(Engine("CPU"), local)
    assert job._pipelined(Engine("cuda:0"), local) and job._pipelined(Engine("OPTIX"), local)
    assert job._pipelined(Engine("cpu"), remote)  # uploads are network-bound


@pytest.mark.parametrize("engine", ["direct", "blender"])
def test_pipelined_frames_equal_the_inline_writer_byte_for_byte(bundled_hdris, tmp_path, monkeypatch, engine):
    roots = {}
    for depth in (0, 1):
        monkeypatch.setattr(job, "PIPELINE", bool(depth))
        roots[depth] = tmp_path / f"q{depth}"
        # one codec for both (auto picks none inline and zip in the background for the direct engine)
        res = render_hdri(_task(bundled_hdris, roots[depth], "sunrise", engine=engine, compression="zip"))
        assert res.count("rendered") == 2, res
    for program in PROGRAMS:
        a, b = (sorted((r / "sunrise" / program).glob("frame_*.exr")) for r in (roots[0], roots[1]))
        assert [f.name for f in a] == [f.name for f in b] and len(a) == TINY["frames"]
        for fa, fb in zip(a, b):
            assert fa.read_bytes() == fb.read_bytes(), fa.name
        ma, mb = (json.loads((r / "sunrise" / program / layout.CLIP_JSON).read_text()) for r in (roots[0], roots[1]))
        def same(frames):  # every field but the files' mtimes
            return [{k: v for k, v in f.items() if k != "mtime_ns"} for f in frames]

        assert same(ma["frames"]) == same(mb["frames"]) and ma["radiance"] == mb["radiance"]
        assert (ma["output"]["writer"]["thread"], mb["output"]["writer"]["thread"]) == ("inline", "background")
        t = mb["timing"]
        assert t["render_seconds"] > 0 and t["write_seconds"] > 0 and t["total_seconds"] >= t["write_seconds"]


def test_the_renderer_runs_at_most_queue_plus_two_frames_ahead(bundled_hdris, tmp_path, monkeypatch):
    made, written, ahead = [0], [0], []
    real_get, real_write = job.get_engine, job.write_exr

    def get_engine(name, **kw):
        engine = real_get(name, **kw)
        render = engine.render

        def counted(*a, **k):
            for img in render(*a, **k):
                made[0] += 1
                ahead.append(made[0] - written[0])
                yield img
        engine.render = counted
        return engine

    def slow_write(path, img, **kw):
        time.sleep(0.02)  # the writer is the bottleneck: the renderer must wait for it
        info = real_write(path, img, **kw)
        written[0] += 1
        return info

    monkeypatch.setattr(job, "get_engine", get_engine)
    monkeypatch.setattr(job, "write_exr", slow_write)
    monkeypatch.setattr(job, "PIPELINE", True)
    res = render_hdri(_task(bundled_hdris, tmp_path, engine="direct", frames=12, programs=("rotation_000",)))
    assert res.count("rendered") == 1
    # in hand: one frame in the writer, WRITE_QUEUE queued, one just rendered
    assert max(ahead) <= job.WRITE_QUEUE + 2, ahead


# --- the dry run's estimate ------------------------------------------------------------------------------------------
def _wall_estimate(stdout: str) -> float:
    m = re.search(r"wall ([\d.]+) s", stdout)
    assert m, stdout
    return float(m.group(1))


@pytest.mark.parametrize("engine", ["direct", "blender"])
@pytest.mark.parametrize("ray", [True, False], ids=["ray", "no-ray"])
def test_dry_run_wall_estimate_within_30_percent_of_the_run(hdri_dir, tmp_path, engine, ray):
    src = hdri_dir("city", "forest")
    args = ["--hdris", src, "--out", tmp_path / "out", "--engine", engine, "--programs", ",".join(PROGRAMS),
            "--frames", 5, "--resolution", "32x18", "--samples", 1, "--cpus-per-task", 1, "--quiet",
            *([] if ray else ["--no-ray"])]
    dry = _cli(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    estimate = _wall_estimate(dry.stdout)
    assert "4 to render (20 frames)" in dry.stderr and "core-hours" in dry.stdout
    assert not (tmp_path / "out").exists() or not layout.finished_clips(Store(tmp_path / "out"))
    t0 = time.perf_counter()
    r = _cli(*args)
    measured = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert len(layout.finished_clips(Store(tmp_path / "out"))) == 4
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured, dry.stdout)
