"""Cluster benchmark: clips per minute of the render stage on a one-node and on a two-node Ray cluster started on
this machine (1 CPU per node, ray.cluster_utils.Cluster: separate raylets, as on real nodes), in one run, and the
ratio. The render CLI joins each cluster through --address, exactly as on a real cluster.

    python benchmarks/cluster.py [--hdris 8] [--frames 24] [--resolution 256x128] [--engine direct]

What it shows: that the driver spreads one task per HDRI over the nodes it is given and the throughput scales with
them. What it does not: both "nodes" share this machine's 2 cores (and its disk), and the driver and the raylets
need CPU too, so the ratio is bounded by ~2 and lowered by that overhead; on real nodes each brings its own cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from render.hdri import default_hdri_dir  # noqa: E402


def render_once(address: str, hdris: Path, out: Path, args) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "render.run", "--hdris", str(hdris), "--out", str(out), "--address", address,
           "--programs", args.programs, "--frames", str(args.frames), "--resolution", args.resolution,
           "--samples", str(args.samples), "--engine", args.engine, "--cpus-per-task", "1"]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"render failed:\n{r.stderr[-3000:]}")
    return seconds, len(list(out.glob("*/*/clip.json")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hdris", type=int, default=8, help="how many of the bundled HDRIs (at most 8)")
    p.add_argument("--programs", default="highlight_zoom_in,rotation_000,rotation_120")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--resolution", default="256x128")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--engine", default="direct", choices=("direct", "blender"))
    args = p.parse_args()
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    src = work / "hdris"
    src.mkdir()
    for f in sorted(default_hdri_dir().glob("*.exr"))[: args.hdris]:
        shutil.copy(f, src / f.name)
    node = dict(num_cpus=1, object_store_memory=100 * 1024**2)
    results = {}
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False))
        try:
            cluster.wait_for_nodes()
            results[1] = render_once(cluster.address, src, work / "one", args)
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            results[2] = render_once(cluster.address, src, work / "two", args)
        finally:
            cluster.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"render, {args.engine} engine, {args.hdris} HDRIs x {len(args.programs.split(','))} clips x "
          f"{args.frames} frames at {args.resolution}, {args.samples} samples; nodes of 1 CPU on this "
          f"{os.cpu_count()}-core machine (wall time includes the driver's start and Ray's worker start-up)")
    for n, (seconds, clips) in results.items():
        rate = 60 * clips / seconds
        print(f"  {n} node{'s' if n > 1 else ' '}: {clips} clips in {seconds:6.1f} s = {rate:6.1f} clips/min")
    (s1, c1), (s2, c2) = results[1], results[2]
    print(f"ratio two nodes / one node: {(c2 / s2) / (c1 / s1):.2f}x")


if __name__ == "__main__":
    main()
