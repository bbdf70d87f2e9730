"""Issue 11, object storage: render (through Ray) from and to a real S3-API server on loopback (moto's standalone
server), a worker killed between publishing frames and publishing clip.json, and resume against the bucket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from hdr.storage import Store
from hdr.dataset import layout

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--programs", "highlight_zoom_in,rotation_000", "--frames", "3", "--resolution", "64x32", "--samples", "1",
        "--engine", "direct", "--cpus-per-task", "1"]


def _cli(module: str, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_render_to_s3_and_a_kill_before_clip_json(s3_env, bundled_hdris, tmp_path):
    hdris = Store("s3://maps/polyhaven")
    hdris.fs.mkdir("maps")
    hdris.fs.mkdir("data")
    for name in ("sunrise", "night"):
        hdris.fs.put_file(str(bundled_hdris / f"{name}.exr"), hdris.path(f"{name}.exr"))

    # a worker dies (like kill -9) after publishing the first clip's frames, before its clip.json
    marker = tmp_path / "fault-marker"
    r = _cli("render.run", "--hdris", "s3://maps/polyhaven", "--out", "s3://data/run1", "--no-ray", *ARGS,
             env_extra={"HDRVID_FAULT": f"before-clip-json:{marker}"})
    assert r.returncode == 77 and marker.exists(), r.stderr
    out = Store("s3://data/run1")
    published = out.glob("*/*/frame_*.exr")
    assert published and not out.glob("*/*/clip.json")  # frames are there, nothing looks finished
    hdri_id, clip_id = published[0].split("/")[:2]
    assert layout.clip_state(out, hdri_id, clip_id)[0] == "partial"
    r = _cli("render.run", "--hdris", "s3://maps/polyhaven", "--out", "s3://data/run1", "--dry-run", "--no-probe",
             *ARGS)
    assert r.returncode == 0 and "0 already complete" in r.stderr and "4 to render" in r.stderr, r.stderr

    # the rerun (through a local Ray: workers read the maps and write the clips on the bucket themselves)
    r = _cli("render.run", "--hdris", "s3://maps/polyhaven", "--out", "s3://data/run1", *ARGS)
    assert r.returncode == 0, r.stderr
    assert "rendered 4 clips, 0 already complete" in r.stderr
    assert layout.finished_clips(out) == {(h, c) for h in ("sunrise", "night")
                                          for c in ("highlight_zoom_in", "rotation_000")}
    for h, c in layout.finished_clips(out):
        assert layout.clip_state(out, h, c)[0] == "complete"
        meta = out.read_json(f"{h}/{c}/clip.json")
        assert meta["hdri"]["uri"].startswith("s3://maps/polyhaven/")
        assert meta["host"].get("node_id")  # rendered by a Ray worker
    assert not out.glob(".tmp/*") and not out.glob("*/*/*.tmp-*")  # no scratch on the bucket
    record = json.loads(out.read_bytes(out.glob("_runs/*.json")[-1]))
    assert record["counts"]["rendered"] == 4

    # and a rerun renders nothing
    r = _cli("render.run", "--hdris", "s3://maps/polyhaven", "--out", "s3://data/run1", "--no-ray", *ARGS)
    assert r.returncode == 0 and "rendered 0 clips, 4 already complete" in r.stderr, r.stderr

    # a manifest of the bucket, verified against the bucket; a changed object is named
    r = _cli("manifests", "build", "--root", "s3://data/run1", "--test", "1")
    assert r.returncode == 0, r.stderr
    assert out.exists("manifests/v0001.parquet") and out.exists("manifests/v0001.json")
    r = _cli("manifests", "verify", "v1", "--root", "s3://data/run1")
    assert r.returncode == 0, r.stdout + r.stderr
    victim = f"{hdri_id}/{clip_id}/frame_0001.exr"
    data = bytearray(out.read_bytes(victim))
    data[-100] ^= 0xFF
    out.write_bytes(victim, bytes(data))
    r = _cli("manifests", "verify", "v1", "--root", "s3://data/run1")
    assert r.returncode == 1 and victim in r.stdout + r.stderr
