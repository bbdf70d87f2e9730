"""The render writer beyond tests/test_render_progress.py: a renderer that raises stops the background writer (no
hang, no thread left), OpenEXR's thread pool writes the same bytes, and progress() outside a task does nothing."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import render.job as job
from hdr.cluster import progress, run_tasks
from hdr.dataset import layout
from hdr.io import write_exr
from hdr.storage import Store
from render.engines import EngineError
from render.job import HdriTask, RenderSettings, render_hdri

PROGRAMS = ("rotation_000", "highlight_zoom_in")


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("exr-writer")]


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_renderer_error_stops_the_writer_and_fails_only_that_clip(bundled_hdris, tmp_path, monkeypatch, pipelined):
    real_get, real_write, written = job.get_engine, job.write_exr, []

    def get_engine(name, **kw):
        engine = real_get(name, **kw)
        render = engine.render

        def failing(plan, *a, **k):
            for i, img in enumerate(render(plan, *a, **k)):
                if plan.program == PROGRAMS[0] and i == 3:
                    raise EngineError("the renderer died at frame 3")
                yield img
        engine.render = failing
        return engine

    def slow_write(path, img, **kw):
        time.sleep(0.05)  # frames are still queued when the renderer raises
        written.append(path.name)
        return real_write(path, img, **kw)

    monkeypatch.setattr(job, "get_engine", get_engine)
    monkeypatch.setattr(job, "write_exr", slow_write)
    monkeypatch.setattr(job, "PIPELINE", pipelined)
    s = RenderSettings(width=32, height=18, frames=6, samples=1, programs=PROGRAMS, threads=1, engine="direct")
    res = render_hdri(HdriTask(str(bundled_hdris), "city.exr", "city", str(tmp_path), s))
    bad, good = (res.clips[p] for p in PROGRAMS)
    assert bad["status"] == "failed" and bad["detail"] == "city.exr / rotation_000: the renderer died at frame 3"
    assert good["status"] == "rendered" and good["frames"] == 6
    assert not _writers()  # the writer thread ended with its clip
    assert written.count("out_0000.exr") == 2 and len(written) <= 3 + 6  # no frame after the error was written
    assert layout.clip_state(Store(str(tmp_path)), "city", PROGRAMS[0])[0] == "partial"
    assert layout.clip_state(Store(str(tmp_path)), "city", PROGRAMS[1])[0] == "complete"


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("compression", ["zip", "piz"])
def test_openexr_thread_pool_writes_the_same_bytes(tmp_path, half, compression):
    rng = np.random.default_rng(3)
    img = (rng.lognormal(0.0, 2.0, (90, 64, 3)) * np.linspace(0.1, 1, 64)[None, :, None]).astype(np.float32)
    img[5, 5] = 1e5  # above half's range: clamped, counted
    infos, data = [], []
    for pool in (0, 2, 0):
        p = tmp_path / f"t{pool}.exr"
        infos.append(write_exr(p, img, half=half, compression=compression, threads=pool))
        data.append(p.read_bytes())
    assert data[0] == data[1] == data[2] and infos[0] == infos[1]
    assert infos[0]["clamped"] == (3 if half else 0)


def test_progress_outside_a_task_does_nothing_and_tasks_without_a_listener_run():
    progress(3)  # no task: nothing happens, nothing raised
    got = []
    run_tasks(lambda n: (progress(n), n)[1], [2, 5], use_ray=False, on_result=lambda t, v: got.append(v),
              on_error=lambda t, m: pytest.fail(m))
    assert got == [2, 5]
