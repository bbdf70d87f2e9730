"""The dry run's cost model (render.estimate): the waves/slots arithmetic and the terms a probe's timings give."""
from __future__ import annotations

import re

import pytest

from render import estimate as est
from render.estimate import Job, Terms


def test_a_task_costs_its_fixed_part_its_texels_its_clips_and_frames():
    t = Terms(task=0.5, texel=2e-6, clip=0.25, frame=0.1)
    assert est.task_seconds(t, Job(clips=3, frames=4, texels=1_000_000)) == pytest.approx(0.5 + 2.0 + 3 * (0.25 + 0.4))


def test_equal_tasks_run_in_waves_over_the_slots_and_each_slot_pays_its_first_task_once():
    t = Terms(driver=1.0, start=10.0, cold=3.0, task=2.0, shutdown=1.5, exit=0.5, slots=2)
    e = est.estimate(t, [Job(clips=0, frames=0, texels=0)] * 5)
    assert e.waves == 3 and e.slots == 2
    assert e.tasks == pytest.approx(3 + 3 * 2.0)  # the busiest slot: its cold start + 3 tasks
    assert e.wall == pytest.approx(1.0 + 10.0 + 9.0 + 1.5 + 0.5)
    assert e.work == pytest.approx(2 * 3.0 + 5 * 2.0)


def test_without_ray_one_slot_runs_every_task_after_the_other():
    t = Terms(driver=1.0, cold=2.0, task=0.5, frame=0.1, clip=0.2)
    jobs = [Job(clips=2, frames=5, texels=0), Job(clips=1, frames=5, texels=0)]
    e = est.estimate(t, jobs)
    assert e.waves == 2 and e.wall == pytest.approx(1.0 + 2.0 + (0.5 + 2 * 0.7) + (0.5 + 0.7))


def test_a_long_task_keeps_its_slot_while_the_other_slot_takes_the_queue():
    t = Terms(task=1.0, texel=1.0, slots=2)
    e = est.estimate(t, [Job(0, 0, 3), Job(0, 0, 0), Job(0, 0, 0), Job(0, 0, 0)])  # 4 s, then 1 s x 3
    assert e.tasks == pytest.approx(4.0)  # not 2 waves x 4 s
    e = est.estimate(t, [Job(0, 0, 0), Job(0, 0, 0), Job(0, 0, 0), Job(0, 0, 3)])  # the long one comes last
    assert e.tasks == pytest.approx(1.0 + 4.0)


def test_recycled_workers_pay_the_worker_start_and_the_cold_start_again():
    t = Terms(worker=4.0, cold=2.0, task=1.0, tasks_per_worker=2)
    e = est.estimate(t, [Job(0, 0, 0)] * 5)  # tasks 1 and 2, 3 and 4, 5: three workers, the first in ``start``
    assert e.tasks == pytest.approx(5 * 1.0 + 3 * 2.0 + 2 * 4.0)


def test_more_slots_than_tasks_is_one_wave():
    e = est.estimate(Terms(task=1.0, cold=1.0, slots=8), [Job(0, 0, 0)] * 3)
    assert e.waves == 1 and e.tasks == pytest.approx(2.0) and e.work == pytest.approx(6.0)
    assert est.estimate(Terms(driver=1.0), []).wall == 1.0


def test_terms_from_a_probe_tasks_timings():
    # (task seconds, clip seconds) of the four calls: tiny map cold, real map 2 clips of 1 frame, of 3 frames, tiny map
    r = {"cold": (3.5, 0.1), "one": (1.6, 0.6), "more": (2.4, 1.4), "fixed": (0.6, 0.1), "texels": 1024 * 512,
         "clips": 2}
    t = est.terms_from_probe(r)
    assert t["task"] == pytest.approx(0.5)
    assert t["frame"] == pytest.approx(0.2)  # (1.4 - 0.6) / (2 clips x (3 - 1) frames)
    assert t["clip"] == pytest.approx(0.1)  # 0.6 / 2 - 1 x 0.2
    assert t["cold"] == pytest.approx(3.4 - 0.5)
    assert t["texel"] == pytest.approx(0.5 / (1024 * 512 - 64 * 32))  # warm real-map task 1.0 s - the fixed 0.5 s
    noisy = est.terms_from_probe({**r, "more": (1.7, 0.4)})  # 3-frame clips timed below the 1-frame ones
    assert noisy["frame"] == 0.0 and noisy["clip"] == pytest.approx(0.3)


def test_big_frames_are_probed_smaller_with_the_same_aspect():
    assert est.probe_resolution(320, 180) == (320, 180)
    w, h = est.probe_resolution(3840, 2160)
    assert w * h <= est.PROBE_MAX_PIXELS and abs(w / h - 16 / 9) < 0.01 and w >= 1270


def test_the_report_prints_the_estimate_and_its_terms():
    t = Terms(driver=1.2, start=9.8, task=0.3, frame=0.01, shutdown=1.4, slots=2)
    probe = est.Probe(terms=t, bytes_per_frame=7000.0, resolution=(32, 18), maps=["city", "forest"], pixel_scale=1.0)
    jobs = [Job(2, 5, 1024 * 512)] * 2
    e = est.estimate(t, jobs)
    lines = est.report(probe, e, jobs, cores=1, use_ray=True)
    assert float(re.search(r"wall ([\d.]+) s", "\n".join(lines)).group(1)) == pytest.approx(e.wall, abs=0.05)
    text = "\n".join(lines)
    assert "Ray start 9.8 s" in text and "Ray shutdown 1.4 s" in text and "core-hours" in text and "140.0 KB" in text
