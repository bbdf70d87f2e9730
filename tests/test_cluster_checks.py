"""Issue 19, no silent hangs and no pointless retries: a request no node can hold is a one-line error at once, the
default CPUs per task fit the nodes, a node without storage credentials is named before any render, errors that
cannot heal run once, and a stalled run says why. The Ray tests run on a two-node cluster of 1-CPU nodes
(``ray.cluster_utils``) whose second node has no S3 credentials, with an S3-API server (moto) on loopback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hdr import cli
from hdr.cluster import (ClusterError, Node, RayOptions, heal_kind, infeasible, largest_cpus, probe_storage,
                         probe_storage_here, run_tasks, stall_line, task_request)
from hdr.dataset import layout
from hdr.storage import Store

REPO = Path(__file__).resolve().parents[1]
GB = 1024**3
TINY = ["--engine", "direct", "--resolution", "32x16", "--frames", "2", "--samples", "1", "--programs",
        "rotation_000", "--quiet"]


# --- the arithmetic, on synthetic nodes ----------------------------------------------------------------------------
def _nodes(*shapes: dict) -> list[Node]:
    return [Node(f"{i:02d}" + "ab" * 13, f"10.0.0.{i + 1}", dict(r)) for i, r in enumerate(shapes)]


def test_infeasible_names_the_request_the_largest_node_and_the_fix():
    nodes = _nodes({"CPU": 1, "memory": 3 * GB}, {"CPU": 1, "memory": 2 * GB, "blender": 1})
    assert infeasible({"CPU": 1, "memory": 2 * GB}, nodes) is None
    assert infeasible({"CPU": 1, "blender": 0.01}, nodes) is None
    msg = infeasible({"CPU": 2}, nodes)
    assert msg.startswith("no node can run a task: each task asks for CPU 2; the largest node, 10.0.0.1 (node 00ab")
    assert "has CPU 1; lower --cpus-per-task to 1" in msg and "\n" not in msg
    msg = infeasible({"CPU": 1, "nosuch": 0.01}, nodes, custom=("nosuch",))
    assert "--ray-resource nosuch: no node advertises it" in msg and "nosuch 0" in msg
    msg = infeasible({"CPU": 1, "memory": int(4.5 * GB)}, nodes)
    assert "the largest node, 10.0.0.1" in msg and "has CPU 1, memory 3.0 GB" in msg
    assert "a task needs 4.5 GB of memory: nodes have at most 3.0 GB" in msg
    msg = infeasible({"CPU": 1, "GPU": 1}, nodes)
    assert "no node has a GPU" in msg
    # every resource exists, but not together on one node
    msg = infeasible({"CPU": 2, "memory": 4 * GB}, _nodes({"CPU": 4, "memory": GB}, {"CPU": 1, "memory": 8 * GB}))
    assert "no single node has all of it" in msg and "10.0.0.1 (node 00ab" in msg and "CPU 4, memory 1.0 GB" in msg
    assert infeasible({"CPU": 1}, []).startswith("no alive node")


def test_task_request_and_default_cpus_fit_the_largest_eligible_node():
    opts = RayOptions(num_cpus=2, resources={"blender": 0.01})
    assert task_request(opts, 5) == {"CPU": 2, "memory": 5, "blender": 0.01}
    nodes = _nodes({"CPU": 0}, {"CPU": 1}, {"CPU": 3, "caption": 1}, {"CPU": 2, "blender": 1})
    assert largest_cpus(RayOptions(), nodes)[0] == 3  # any node
    n, why = largest_cpus(opts, nodes)  # only the nodes that advertise blender
    assert n == 2 and "the 2 CPUs of the largest node, 10.0.0.4" in why
    assert largest_cpus(RayOptions(), _nodes({"CPU": 32}))[0] == 4  # capped
    assert largest_cpus(RayOptions(), _nodes({"CPU": 0}))[0] == 1  # the feasibility check then says why
    assert largest_cpus(RayOptions(resources={"nosuch": 0.01}), nodes)[0] == 3  # ditto


class NoCredentialsError(Exception):  # botocore's name: matched by class name, botocore is not imported
    pass


class ClientError(Exception):
    def __init__(self, code, status=400):
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class BadMap(ValueError):
    pass


def test_errors_that_cannot_heal():
    assert heal_kind(NoCredentialsError("Unable to locate credentials")) == "auth"
    assert heal_kind(ClientError("InvalidAccessKeyId", 403)) == "auth"
    assert heal_kind(ClientError("ExpiredToken")) == "auth"
    assert heal_kind(ClientError("AccessDenied", 403)) == "permission"
    assert heal_kind(ClientError("", 403)) == "permission"
    assert heal_kind(PermissionError(13, "Permission denied")) == "permission"
    assert heal_kind(FileNotFoundError(2, "No such file")) == "missing"
    assert heal_kind(NotADirectoryError(20, "Not a directory")) == "missing"
    assert heal_kind(BadMap("no colour channels"), (BadMap,)) == "input"
    try:  # found through the cause chain
        try:
            raise NoCredentialsError("x")
        except NoCredentialsError as e:
            raise RuntimeError("listing failed") from e
    except RuntimeError as wrapped:
        assert heal_kind(wrapped) == "auth"
    for healable in (BadMap("x"), ClientError("SlowDown", 503), ClientError("InternalError", 500),
                     ConnectionResetError(104, "reset"), TimeoutError(), MemoryError(), OSError(5, "I/O error")):
        assert heal_kind(healable) is None, healable


def _raise(exc):
    raise exc


def test_the_task_wrapper_returns_what_cannot_heal_and_raises_the_rest():
    from hdr.cluster import _Failed, _remote_task

    def run(exc, unhealable=(), fatal=()):
        return _remote_task(_raise, exc, None, 0, 0.25, unhealable, fatal)

    failed = run(NoCredentialsError("Unable to locate credentials"))
    assert isinstance(failed, _Failed) and failed.message.endswith("NoCredentialsError: Unable to locate credentials")
    assert failed.error is None
    assert isinstance(run(BadMap("bad.exr"), (BadMap,)), _Failed)
    with pytest.raises(BadMap):  # not declared unhealable: Ray's retry_exceptions decide
        run(BadMap("bad.exr"))
    with pytest.raises(ValueError):
        run(ValueError("flaky"))
    fatal = run(BadMap("no model"), (), (BadMap,))  # a fatal setup error: returned whole, raised on the driver
    assert isinstance(fatal.error, BadMap) and fatal.message.endswith("BadMap: no model")
    assert _remote_task(abs, -3, None, 0, 0.25, (), ()) == 3


def test_stall_line_says_why():
    line = stall_line(300.4, 4, 0, 0, {"CPU": 2}, {"CPU": 0.0}, {"CPU": 2.0})
    assert line == ("no task started, finished or reported progress for 300 s: 4 submitted, 0 started; each asks for "
                    "CPU 2; free now: CPU 0 of 2 (other work holds them)")
    line = stall_line(10, 2, None, 5, {"CPU": 1, "memory": 2 * GB}, {"CPU": 2, "memory": GB}, {"CPU": 2, "memory": GB})
    assert "2 submitted, 5 more waiting" in line and "started" not in line.split(";")[0][40:]
    assert "memory 1.0 GB of 1.0 GB" in line and "less than a task asks for" in line
    assert "they are slow, or stuck" in stall_line(10, 2, 2, 0, {"CPU": 1}, {"CPU": 0}, {"CPU": 2})
    assert "Ray is starting workers" in stall_line(10, 2, 0, 0, {"CPU": 1}, {"CPU": 2}, {"CPU": 2})


def test_storage_probe_here(tmp_path):
    src = tmp_path / "maps" / "a" / "b"
    src.mkdir(parents=True)
    (src / "x.exr").write_bytes(b"v/1\x01" * 8)
    out = tmp_path / "out"
    assert probe_storage_here((str(tmp_path / "maps"),), (str(out),)) == []
    assert sorted(p.name for p in out.rglob("*")) == [".tmp"]  # the probe object is gone
    problems = probe_storage_here((str(tmp_path / "nope"),), (str(src / "x.exr"),))
    assert [(p["op"], p["kind"]) for p in problems] == [("read", "missing"), ("write", "missing")], problems
    with pytest.raises(ClusterError) as e:
        probe_storage(None, [], (str(tmp_path / "nope"),), ())
    msg = str(e.value)
    assert msg.startswith(f"this machine cannot read {tmp_path / 'nope'}: FileNotFoundError") and "check the URL" in msg


def test_run_stage_turns_a_cluster_error_into_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def refuse(*a, **kw):
        raise ClusterError("no node can run a task: each task asks for CPU 2; ...")

    monkeypatch.setattr(cli, "run_tasks", refuse)
    run = cli.StageRun(stage="demo", fn=abs, tasks=[1], store=Store(str(tmp_path)), argv=[], counts={},
                       on_result=lambda t, v: cli.Tally(), on_error=lambda t, m: cli.Tally(), summary="done")
    assert cli.run_stage(run, use_ray=True, quiet=True) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: no node can run a task: each task asks for CPU 2; ..."
    assert "Traceback" not in err and not (tmp_path / layout.RUNS_DIR).exists()


# --- a real two-node cluster, one node without storage credentials ---------------------------------------------------
BLANK = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
         "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
         "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def cluster(s3_env):
    """moto's S3 server on 127.0.0.1 (the test process and the head node have its credentials, ``s3_env``), and a
    two-node Ray cluster of 1-CPU nodes whose second raylet (and so its workers) runs with the credentials blanked."""
    from ray.cluster_utils import Cluster

    small = dict(num_cpus=1, memory=2 * GB, object_store_memory=80 * 1024**2)
    c = Cluster(initialize_head=True, head_node_args=dict(small, include_dashboard=False))
    c.node2 = c.add_node(**small, env_vars=BLANK)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _render(address: str, *args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "render.run", "--address", address, *map(str, args)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


def test_a_request_no_node_can_hold_fails_at_once_and_the_default_fits(cluster, hdri_dir, tmp_path):
    src = hdri_dir("city", "forest")
    r, seconds = _render(cluster.address, "--hdris", src, "--root", tmp_path / "a", "--cpus-per-task", 2, *TINY)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and seconds < 30, (seconds, r.stderr)
    assert last.startswith("error: no node can run a task: each task asks for CPU 2, memory") and \
        "has CPU 1, memory" in last and "lower --cpus-per-task to 1" in last, r.stderr
    assert "Traceback" not in r.stderr and not layout.finished_clips(Store(tmp_path / "a"))

    r, seconds = _render(cluster.address, "--hdris", src, "--root", tmp_path / "b", "--ray-resource", "nosuch", *TINY)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and seconds < 30 and "--ray-resource nosuch: no node advertises it" in last, r.stderr

    r, _ = _render(cluster.address, "--hdris", src, "--root", tmp_path / "c", *TINY)
    assert r.returncode == 0, r.stderr
    assert "--cpus-per-task 1: min(4, the 1 CPUs of the largest node" in r.stderr
    out = Store(tmp_path / "c")
    assert layout.finished_clips(out) == {("city", "rotation_000"), ("forest", "rotation_000")}
    record = json.loads(next((tmp_path / "c" / layout.RUNS_DIR).glob("render-*.json")).read_text())
    assert record["cpus_per_task"]["value"] == 1 and "largest node" in record["cpus_per_task"]["why"]
    assert record["settings"]["threads"] == 1


def test_a_node_without_credentials_is_named_before_any_render(cluster, bundled_hdris):
    maps = Store("s3://maps/polyhaven")
    maps.fs.mkdir("maps")
    maps.fs.mkdir("data")
    for name in ("city", "forest"):
        maps.fs.put_file(str(bundled_hdris / f"{name}.exr"), maps.path(f"{name}.exr"))
    r, seconds = _render(cluster.address, "--hdris", "s3://maps/polyhaven", "--root", "s3://data/run", *TINY)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2, r.stderr
    node2 = f"node {cluster.node2.node_ip_address} (node {cluster.node2.node_id[:8]})"
    assert last.startswith(f"error: {node2} cannot read s3://maps/polyhaven: "), r.stderr
    assert "NoCredentialsError: Unable to locate credentials" in last
    assert "give the nodes credentials: AWS_* environment variables" in last
    assert "Traceback" not in r.stderr and "failed:" not in r.stderr
    store = Store("s3://data/run")
    assert store.fs.find(store.path()) == []  # nothing rendered, and the head's probe object is gone


# in-process drivers on the same cluster: the task functions travel by value
@pytest.fixture(scope="module")
def connected(cluster):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _counted_failure(item):
    path, kind = item
    with open(path, "a") as f:
        f.write("x")
    raise {"auth": NoCredentialsError("Unable to locate credentials"),
           "permission": PermissionError(13, "Permission denied", "/data/out"),
           "input": BadMap("bad.exr: no colour channels"), "other": ValueError("flaky")}[kind]


def test_errors_that_cannot_heal_run_once_and_others_are_retried(connected, tmp_path):
    kinds = ("auth", "permission", "input", "other")
    items = [(str(tmp_path / f"{k}.calls"), k) for k in kinds]
    errors = {}
    run_tasks(_counted_failure, items, use_ray=True,
              opts=RayOptions(num_cpus=1, max_retries=2, retry_exceptions=True, unhealable=(BadMap,)),
              on_result=lambda i, v: pytest.fail(f"{i} succeeded"), on_error=lambda i, m: errors.update({i[1]: m}))
    calls = {k: len(Path(p).read_text()) for p, k in items}
    assert calls == {"auth": 1, "permission": 1, "input": 1, "other": 3}, calls
    assert errors["auth"].endswith("NoCredentialsError: Unable to locate credentials")
    assert errors["permission"].startswith("PermissionError: [Errno 13] Permission denied")
    assert "BadMap: bad.exr: no colour channels" in errors["input"] and "flaky" in errors["other"]


class _Holder:
    def ping(self):
        return True


def _quick(x):
    return x + 1


def test_a_stalled_run_says_why_and_goes_on_when_the_cpus_free_up(connected):
    ray = connected
    holders = [ray.remote(_Holder).options(num_cpus=1).remote() for _ in range(2)]  # every CPU of the cluster
    ray.get([h.ping.remote() for h in holders])
    lines, results = [], {}

    def say(line):
        lines.append(line)
        if len(lines) == 1:
            ray.kill(holders[0])  # free one CPU: the task starts

    t0 = time.perf_counter()
    run_tasks(_quick, [1], use_ray=True, opts=RayOptions(num_cpus=1, stall_seconds=2), say=say,
              on_result=lambda i, v: results.update({i: v}), on_error=lambda i, m: pytest.fail(m))
    assert results == {1: 2} and lines, lines  # (a second line may come while the freed node starts a worker)
    assert re.fullmatch(r"no task started, finished or reported progress for [234] s: 1 submitted, 0 started; "
                        r"each asks for CPU 1; free now: CPU 0 of 2 \(other work holds them\)", lines[0]), lines
    assert 2 <= time.perf_counter() - t0 < 60
    ray.kill(holders[1])
