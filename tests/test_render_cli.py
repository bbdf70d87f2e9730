"""``python -m render.run`` end to end, as users run it: real subprocesses, real local Ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hdr.io import read_image, write_exr
from hdr.storage import Store
from hdr.dataset import layout

REPO = Path(__file__).resolve().parents[1]
TINY = ["--resolution", "32x16", "--samples", "1", "--cpus-per-task", "1"]


def cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray, never a cluster
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "render.run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_help():
    r = cli("--help")
    assert r.returncode == 0 and "--hdris" in r.stdout and "--dry-run" in r.stdout


def test_empty_folder_is_a_clear_error(tmp_path):
    r = cli("--hdris", tmp_path, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert f"no .exr or .hdr files found in {tmp_path}" in r.stderr


def test_ray_run_of_several_hdris_with_bad_inputs_among_them(hdri_dir, tmp_path):
    src = hdri_dir("city", "courtyard", "sunset")
    (src / "sub").mkdir()
    (src / "sub" / "corrupt.exr").write_bytes(b"\x76\x2f\x31\x01" + os.urandom(3000))
    import cv2

    cv2.imwrite(str(src / "thumbnail.png"), np.zeros((8, 16, 3), np.uint8))
    (src / "renamed.exr").write_bytes((src / "thumbnail.png").read_bytes())
    write_exr(src / "square.exr", np.ones((16, 16, 3), np.float32))
    out = tmp_path / "out"
    args = ["--hdris", src, "--out", out, "--programs", "highlight_zoom_in,rotation", "--frames", "2", *TINY]
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    assert "thumbnail.png: an 8-bit image format" in r.stderr
    summary = r.stderr.strip().splitlines()[-1]
    assert summary.startswith("rendered 12 clips") and "12 failed" in summary, summary
    failures = json.loads((out / "render_failures.json").read_text())["failures"]
    assert {f["hdri"] for f in failures} == {"sub/corrupt.exr", "renamed.exr", "square.exr"}
    msgs = {f["hdri"]: f["error"] for f in failures}
    assert msgs["renamed.exr"].startswith("renamed.exr") and "PNG" in msgs["renamed.exr"]
    assert msgs["square.exr"].startswith("square.exr") and "2:1" in msgs["square.exr"]
    assert msgs["sub/corrupt.exr"].startswith("sub/corrupt.exr")
    done = layout.finished_clips(Store(out))
    assert done == {(h, p) for h in ("city", "courtyard", "sunset")
                    for p in ("highlight_zoom_in", "rotation_000", "rotation_120", "rotation_240")}
    nodes = {json.loads((out / h / p / "clip.json").read_text())["host"].get("node_id") for h, p in done}
    assert None not in nodes  # rendered inside Ray workers
    runs = list((out / "_runs").glob("render-*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["counts"]["rendered"] == 12

    # the bad files are fixed/removed: the rerun renders nothing new and succeeds
    for f in ("sub/corrupt.exr", "renamed.exr", "square.exr", "thumbnail.png"):
        (src / f).unlink()
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("rendered 0 clips, 12 already complete")
    assert not (out / "render_failures.json").exists()


def test_dry_run_prints_plan_and_estimates(hdri_dir, tmp_path):
    src = hdri_dir("interior", "forest")
    r = cli("--hdris", src, "--out", tmp_path / "out", "--dry-run", "--no-ray", "--frames", "5", *TINY)
    assert r.returncode == 0, r.stderr
    assert "14 to render (70 frames)" in r.stderr
    assert "interior" in r.stdout and "s/frame" in r.stdout and "core-hours" in r.stdout and "of EXR" in r.stdout
    assert not (tmp_path / "out").exists() or not layout.finished_clips(Store(tmp_path / "out"))


def test_kill_9_mid_run_then_resume(hdri_dir, tmp_path):
    src = hdri_dir("sunrise")
    out = tmp_path / "out"
    args = ["--hdris", src, "--out", out, "--no-ray", "--programs", "rotation", "--frames", "24", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "render.run", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("sunrise/rotation_120/frame_*.exr")):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(out)
    states = {p: layout.clip_state(store, "sunrise", p)[0] for p in ("rotation_000", "rotation_120", "rotation_240")}
    assert states["rotation_000"] == "complete" and states["rotation_120"] in ("partial", "complete"), states
    for f in out.glob("sunrise/*/frame_*.exr"):  # every published frame is a whole file
        assert np.isfinite(read_image(f)).all()
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    for p in states:
        assert layout.clip_state(store, "sunrise", p)[0] == "complete"
