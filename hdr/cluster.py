"""Fan plain functions out as Ray tasks (one per HDRI or clip) with backpressure, retries and recorded failures.

Every stage that fans out (render, augment, caption) uses :func:`run_tasks`; the drivers stay thin. ``use_ray=False``
runs the same function in this process, one item after another (debugging, ``pdb``). A task function may call
:func:`progress` to report finished units (render: frames) to the driver while it runs.

Through Ray, nothing hangs silently and nothing is retried that cannot heal: before the fan-out the tasks' request is
checked against the alive nodes (:func:`infeasible`, a one-line :class:`ClusterError`) and, given URLs, every node that
could run a task reads and writes the storage once (:func:`probe_storage`); while running, a run where nothing started,
finished or reported progress for ``stall_seconds`` says why (:func:`stall_line`); an error that a retry cannot fix
(:func:`cannot_heal`: credentials, permissions, a missing file, the stage's own types) is reported at once.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS if set, else a private local instance
    num_cpus: int = 1  # per task
    max_retries: int = 2  # re-runs after a worker or node dies (and after Python exceptions, see retry_exceptions)
    retry_exceptions: bool | list = True
    max_calls: int = 0  # recycle a worker process after this many tasks (0: never)
    max_in_flight: int = 0  # bound on submitted-but-unfinished tasks (0: twice the cluster's CPUs / num_cpus)
    resources: dict = field(default_factory=dict)  # custom resources, e.g. {"blender": 0.01}
    num_gpus: float = 0
    local_object_store_bytes: int = 512 * 1024**2
    py_modules: list | None = None  # shipped to a cluster joined by address (None: the toolkit's own packages)
    check_feasible: bool = True  # refuse a request no alive node can hold (False: an autoscaler will add such nodes)
    stall_seconds: float = 300  # say why when no task started, finished or reported progress for this long (0: never)
    unhealable: tuple = ()  # the stage's exception types that a retry cannot fix (besides cannot_heal's own)


class ClusterError(RuntimeError):
    """The cluster cannot run the stage as asked (no node can hold a task, a node cannot reach the storage); the
    message is one line with the fix."""


def error_line(exc: BaseException) -> str:
    """A one-line description of an exception (the innermost cause of a Ray task error)."""
    cause = getattr(exc, "cause", None) or exc
    lines = traceback.format_exception_only(type(cause), cause)
    return " ".join(lines[-1].split()) if lines else repr(cause)


TOOLKIT_PACKAGES = ("hdr", "render", "augment", "caption", "manifests", "train", "evaluate")


def toolkit_modules() -> list:
    """The toolkit's top-level packages, shipped to a cluster's workers through ``runtime_env["py_modules"]`` (the
    nodes need the third-party dependencies installed, see README "Cluster"; the toolkit's own code travels)."""
    import importlib.util

    paths = []
    for name in TOOLKIT_PACKAGES:  # folders, found without importing them (no torch import on the driver)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.append(list(spec.submodule_search_locations)[0])
    return paths


def _init_ray(opts: RayOptions):
    import ray

    if ray.is_initialized():
        return ray
    address = opts.address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=True, logging_level="ERROR")
    if address:
        modules = toolkit_modules() if opts.py_modules is None else opts.py_modules
        ray.init(address=address, runtime_env={"py_modules": modules} if modules else None, **common)
    else:  # "local": always a private instance, never one that happens to run on this machine
        ray.init(address="local", object_store_memory=opts.local_object_store_bytes, **common)
    return ray


# --- the cluster's nodes and what a task asks of them --------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """An alive Ray node: its id, IP and total resources (``CPU``, ``GPU``, ``memory`` in bytes, custom ones)."""

    id: str
    ip: str
    resources: dict

    def label(self) -> str:
        return f"{self.ip} (node {self.id[:8]})"


def alive_nodes(ray) -> list[Node]:
    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), dict(n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive")]


def joins_cluster(opts: RayOptions) -> bool:
    """Whether Ray runs on a cluster given by address (``opts.address`` or RAY_ADDRESS), not a private instance."""
    return bool(opts.address or os.environ.get("RAY_ADDRESS"))


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def cluster_nodes(opts: RayOptions) -> list[Node]:
    """The alive nodes of the cluster ``opts`` names (Ray is initialised here, as :func:`run_tasks` would)."""
    return alive_nodes(_init_ray(opts))


def task_request(opts: RayOptions, memory: int = 0) -> dict:
    """What one task asks of a node, as Ray resources (zeros left out)."""
    req = {"CPU": opts.num_cpus, "GPU": opts.num_gpus, "memory": int(memory or 0), **(opts.resources or {})}
    return {k: v for k, v in req.items() if v}


def fits(request: dict, resources: dict) -> bool:
    return all(resources.get(k, 0) >= v - 1e-9 for k, v in request.items())


def _num(key: str, v: float) -> str:
    return f"{v / 1024**3:.1f} GB" if key in ("memory", "object_store_memory") else f"{v:g}"


def shape(request: dict, resources: dict | None = None) -> str:
    """``"CPU 2, memory 0.8 GB"``: the request's resources, with their amounts in ``resources`` when given."""
    src = request if resources is None else resources
    return ", ".join(f"{k} {_num(k, src.get(k, 0))}" for k in request) or "nothing"


def _fix(key: str, wanted: float, most: float, custom: tuple) -> str:
    if key == "CPU":
        return f"lower --cpus-per-task to {int(most)}" if most >= 1 else "no node offers CPUs: add worker nodes"
    if key == "GPU":
        return (f"lower --gpus-per-task to {most:g}" if most > 0
                else "no node has a GPU: use --device cpu, --gpus-per-task 0 or GPU nodes")
    if key == "memory":
        return (f"a task needs {_num(key, wanted)} of memory: nodes have at most {_num(key, most)}, use nodes with "
                "more memory or smaller inputs")
    if key in custom and most <= 0:
        return f"--ray-resource {key}: no node advertises it, check the name or start nodes with it"
    return f"{key}: a task asks for {wanted:g}, nodes offer at most {most:g}"


def infeasible(request: dict, nodes: list[Node], *, custom: tuple = ()) -> str | None:
    """``None`` when some node can hold ``request``; otherwise one line: what each task asks for, what the largest
    node offers (and which node it is), and how to fix it. ``custom``: the request's custom resource names."""
    if any(fits(request, n.resources) for n in nodes):
        return None
    ask = f"each task asks for {shape(request)}"
    if not nodes:
        return f"no alive node in the Ray cluster; {ask}"
    short = [k for k in request if max(n.resources.get(k, 0) for n in nodes) < request[k] - 1e-9]
    if not short:  # every resource exists somewhere, but not together on one node
        shapes = "; ".join(f"{n.label()}: {shape(request, n.resources)}" for n in nodes[:3])
        more = f" (and {len(nodes) - 3} more)" if len(nodes) > 3 else ""
        return f"no node can run a task: {ask}, and no single node has all of it ({shapes}{more})"
    key = short[0]
    big = max(nodes, key=lambda n: n.resources.get(key, 0))
    fixes = "; ".join(_fix(k, request[k], max(n.resources.get(k, 0) for n in nodes), custom) for k in short)
    return (f"no node can run a task: {ask}; the largest node, {big.label()}, has {shape(request, big.resources)}; "
            f"{fixes}")


def check_feasible(opts: RayOptions, nodes: list[Node], memory: int = 0) -> None:
    """:class:`ClusterError` when no alive node can ever hold a task of ``opts`` needing ``memory`` bytes."""
    why = infeasible(task_request(opts, memory), nodes, custom=tuple(opts.resources or ()))
    if why:
        raise ClusterError(f"{why}; if an autoscaler will add such nodes: --no-feasibility-check")


def fit_cpus(opts: RayOptions, requested: int | None, *, use_ray: bool, cap: int = 4) -> tuple[int, str]:
    """CPUs per task and why: ``requested`` when given (checked later, by the fan-out); else :func:`largest_cpus` of
    the cluster joined by address (Ray is initialised here); a private local Ray or ``use_ray=False``: min(``cap``,
    this machine's cores)."""
    if requested is not None:
        return int(requested), "given (--cpus-per-task)"
    if not use_ray or not (joins_cluster(opts) or _ray_running()):
        n = os.cpu_count() or 1
        where = "this machine's" if not use_ray else "a private local Ray on this machine's"
        return max(1, min(cap, n)), f"min({cap}, {where} {n} cores)"
    return largest_cpus(opts, cluster_nodes(opts), cap)


def largest_cpus(opts: RayOptions, nodes: list[Node], cap: int = 4) -> tuple[int, str]:
    """min(``cap``, the CPUs of the largest node that has the task's GPUs and custom resources (any node when none
    has them: the feasibility check then says why)), at least 1, and why."""
    rest = task_request(dataclasses.replace(opts, num_cpus=0))  # GPUs and custom resources
    eligible = [n for n in nodes if fits(rest, n.resources)] or nodes
    if not eligible:
        return 1, "no alive node: 1"
    big = max(eligible, key=lambda n: n.resources.get("CPU", 0))
    most = int(big.resources.get("CPU", 0))
    return max(1, min(cap, most)), f"min({cap}, the {most} CPUs of the largest node, {big.label()})"


# --- errors a retry cannot fix ---------------------------------------------------------------------------------------
AUTH_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "NoAuthTokenError",
               "TokenRetrievalError", "UnauthorizedSSOTokenError", "SSOTokenLoadError", "RefreshError",
               "DefaultCredentialsError")  # botocore, google-auth: matched by class name (no import here)
AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
              "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId", "401")
PERMISSION_CODES = ("AccessDenied", "AllAccessDisabled", "Forbidden", "403")  # credentials that lack a grant
MISSING = (FileNotFoundError, NotADirectoryError)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _code(exc: BaseException) -> str:
    """The error code of a botocore ``ClientError``-like exception (``response["Error"]["Code"]``, else the HTTP
    status), or ''."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str((response.get("Error") or {}).get("Code") or "")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return code if code and code not in ("None",) else str(status or "")
    code = getattr(exc, "code", None)  # gcsfs HttpError, urllib HTTPError
    return str(code) if isinstance(code, int) and not isinstance(exc, OSError) else ""


def heal_kind(exc: BaseException, extra: tuple = ()) -> str | None:
    """Why retrying ``exc`` cannot help: ``"auth"`` (no or bad credentials), ``"permission"``, ``"missing"`` (a file
    or folder that is not there), ``"input"`` (a type in ``extra``); ``None``: it may heal (the cause chain is
    searched)."""
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        code = _code(e)
        if names & set(AUTH_ERRORS) or code in AUTH_CODES:
            return "auth"
        if isinstance(e, PermissionError) or code in PERMISSION_CODES:
            return "permission"
        if isinstance(e, MISSING):
            return "missing"
        if extra and isinstance(e, tuple(extra)):
            return "input"
    return None


def cannot_heal(exc: BaseException, extra: tuple = ()) -> bool:
    """Whether a retry of a task that raised ``exc`` would fail the same way (:func:`heal_kind`)."""
    return heal_kind(exc, extra) is not None


# --- the storage probe -----------------------------------------------------------------------------------------------
PROBE_READ_BYTES = 16
PROBE_DEPTH = 4  # folders descended from the input URL to find a file to read


def _probe_read(url: str) -> None:
    """List ``url`` and read a few bytes of one file in it (descending into its first folders)."""
    from hdr.storage import Store

    store = Store(url)
    path = store.path()
    for _ in range(PROBE_DEPTH):
        entries = sorted(store.fs.ls(path, detail=True), key=lambda e: (e.get("type") != "file", e["name"]))
        entries = [e for e in entries if not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith(".")]
        if not entries:
            if not store.fs.isdir(path):
                raise FileNotFoundError(f"{store.uri()}: no such folder")
            return  # an empty folder is readable
        if entries[0].get("type") == "file":
            with store.fs.open(entries[0]["name"], "rb") as f:
                f.read(PROBE_READ_BYTES)
            return
        path = entries[0]["name"]


def _probe_write(url: str) -> None:
    """Write, then delete, a small object under ``url`` (under its ``.tmp/``)."""
    import uuid

    from hdr.storage import TMP_DIR, Store

    store = Store(url)
    rel = f"{TMP_DIR}/probe-{uuid.uuid4().hex[:12]}"
    store.write_bytes(rel, b"hdrvid storage probe\n")
    try:
        store.read_bytes(rel)
    finally:
        store.fs.rm(store.path(rel))


def probe_storage_here(reads: tuple, writes: tuple, unhealable: tuple = ()) -> list[dict]:
    """Read every URL in ``reads`` and write-then-delete under every URL in ``writes`` from this process; one dict per
    problem: url, op (read, write), kind (:func:`heal_kind`, or None), error (one line)."""
    problems = []
    for op, urls, probe in (("read", reads, _probe_read), ("write", writes, _probe_write)):
        for url in urls:
            try:
                probe(url)
            except Exception as e:  # noqa: BLE001  (every problem is reported by the driver)
                problems.append({"url": url, "op": op, "kind": heal_kind(e, unhealable), "error": error_line(e)})
    return problems


def _storage_fix(problem: dict) -> str:
    url, kind = problem["url"], problem["kind"]
    if kind == "auth":
        if url.startswith(("gs://", "gcs://")):
            return "give the nodes credentials: GOOGLE_APPLICATION_CREDENTIALS or the instance's service account"
        return "give the nodes credentials: AWS_* environment variables, a credentials file or an instance role"
    if kind == "permission":
        return f"grant {problem['op']} access to {url}"
    if "://" not in url:
        return "check the URL: a local path must exist on every node (a shared filesystem), or use an object store"
    return "check the URL (bucket and prefix)"


PROBE_SECONDS = 120  # a node whose probe has not answered by then is named in a warning, and the run goes on


def probe_storage(ray, nodes: list[Node], reads: tuple, writes: tuple, *, unhealable: tuple = (),
                  say: Callable[[str], None] | None = None, timeout: float = PROBE_SECONDS) -> None:
    """:func:`probe_storage_here` on each of ``nodes`` (one task each: hard node affinity, no CPU), or in this
    process when ``ray`` is None (a private local Ray: its workers are this machine with this environment). An auth,
    permission or not-found problem raises :class:`ClusterError` (one line: the node, the URL, the fix); other
    problems and probes that did not answer within ``timeout`` are said (``say``) and the run goes on."""
    say = say or _stderr
    found, warnings = [], []  # (where, problem); lines
    if ray is None:
        found = [("this machine", p) for p in probe_storage_here(tuple(reads), tuple(writes), tuple(unhealable))]
    else:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(probe_storage_here)
        refs = {remote.options(num_cpus=0, max_retries=0, name="storage_probe",
                               scheduling_strategy=NodeAffinitySchedulingStrategy(n.id, soft=False)).remote(
                    tuple(reads), tuple(writes), tuple(unhealable)): n for n in nodes}
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in done:
            where = f"node {refs[ref].label()}"
            try:
                found += [(where, p) for p in ray.get(ref)]
            except Exception as e:  # noqa: BLE001  (the probe task itself failed: not the storage's fault)
                warnings.append(f"storage probe on {where} failed: {error_line(e)} (going on)")
        for ref in late:
            ray.cancel(ref, force=True)
            warnings.append(f"storage probe on node {refs[ref].label()} did not answer in {timeout:.0f} s (going on)")
    fatal = [(w, p) for w, p in found if p["kind"] in ("auth", "permission", "missing")]
    warnings += [f"storage probe on {w}: cannot {p['op']} {p['url']}: {p['error']} (going on)"
                 for w, p in found if (w, p) not in fatal]
    for line in warnings:
        say(line)
    if fatal:
        where, p = fatal[0]
        others = {w for w, _ in fatal} - {where}
        more = f" (and {len(others)} more node{'s' * (len(others) > 1)})" if others else ""
        raise ClusterError(f"{where}{more} cannot {p['op']} {p['url']}: {p['error']}; {_storage_fix(p)}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- progress from inside a task ------------------------------------------------------------------------------------
PROGRESS_INTERVAL = 0.25  # seconds between a Ray task's reports (and between the driver's polls): a few per second


class _Count:
    """The running task's count; ``send(count)`` gets every count, in order (in-process: the driver's callback)."""

    def __init__(self, send: Callable[[int], None]):
        self.send, self.count, self.lock = send, 0, threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n
            self.send(self.count)

    def close(self) -> None:
        pass


class _ThrottledCount(_Count):
    """A Ray task's count: a daemon thread (started by the first report) sends it to the driver's sink when it
    changed, at most once per ``interval``; the sends are fire-and-forget actor calls, in order."""

    def __init__(self, send: Callable[[int], None], interval: float):
        super().__init__(send)
        self.interval, self.stop, self.thread = interval, threading.Event(), None

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)
                self.thread.start()

    def _loop(self) -> None:
        sent = 0
        while True:
            count = self.count
            if count != sent:
                try:
                    self.send(count)
                except Exception:  # noqa: BLE001  (progress is a courtesy: it never fails the task)
                    return
                sent = count
            if self.stop.wait(self.interval):
                return

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


_COUNT: _Count | None = None  # the running task's count in this process (one task at a time per process)


def progress(n: int = 1) -> None:
    """Add ``n`` finished units (render: published frames) to the running task's count; thread-safe. Inside
    :func:`run_tasks` with an ``on_progress`` callback the driver gets the task's running total (in-process at once,
    through Ray a few times per second); anywhere else this does nothing."""
    count = _COUNT
    if count is not None and n:
        count.add(int(n))


def _counted(fn: Callable[[Any], Any], item: Any, count: _Count) -> Any:
    global _COUNT
    previous, _COUNT = _COUNT, count
    try:
        return fn(item)
    finally:
        _COUNT = previous
        count.close()


@dataclass
class _Failed:
    """What the Ray task wrapper returns instead of raising an error that a retry cannot fix (so Ray does not retry
    it): the one-line message, and the exception itself when it is one of the run's ``fatal`` types."""

    message: str
    error: BaseException | None = None


def _remote_task(fn: Callable[[Any], Any], item: Any, sink, key: int, interval: float, unhealable: tuple,
                 fatal: tuple) -> Any:
    """The Ray task of an item: says it started and sends its :func:`progress` reports to ``sink`` (when there is
    one), runs ``fn(item)``, and returns a :class:`_Failed` for an error that cannot heal (:func:`cannot_heal`)."""
    try:
        if sink is None:
            return fn(item)
        sink.start.remote(key)
        return _counted(fn, item, _ThrottledCount(lambda c: sink.report.remote(key, c), interval))
    except fatal as e:
        return _Failed(error_line(e), e)
    except Exception as e:
        if cannot_heal(e, unhealable):
            return _Failed(error_line(e))
        raise


class _ProgressSink:
    """A small Ray actor beside the driver: which tasks started and the latest count of every running task, drained
    by the driver."""

    def __init__(self):
        self.counts: dict[int, int] = {}
        self.started: set[int] = set()

    def start(self, key: int) -> None:
        self.started.add(key)

    def report(self, key: int, count: int) -> None:
        if count > self.counts.get(key, 0):
            self.counts[key] = count

    def drain(self) -> tuple[dict[int, int], set[int]]:
        out = self.counts, self.started
        self.counts, self.started = {}, set()
        return out


def stall_line(seconds: float, submitted: int, started: int | None, waiting: int, request: dict,
               free: dict, total: dict) -> str:
    """Why nothing moved for ``seconds``: the tasks submitted and started (``None``: not known), what each asks for,
    what the cluster has free now (``free``/``total``: Ray's available and cluster resources)."""
    head = f"no task started, finished or reported progress for {seconds:.0f} s: {submitted} submitted"
    head += "" if started is None else f", {started} started"
    head += f", {waiting} more waiting to be submitted" if waiting else ""
    have = ", ".join(f"{k} {_num(k, free.get(k, 0))} of {_num(k, total.get(k, 0))}" for k in request) or "-"
    short = [k for k in request if free.get(k, 0) < request[k] - 1e-9]
    if started is not None and started >= submitted:
        why = "every submitted task is running: they are slow, or stuck without reporting progress"
    elif any(total.get(k, 0) >= request[k] - 1e-9 for k in short):
        why = "other work holds them" + (" (and no node has enough of: " + ", ".join(
            k for k in short if total.get(k, 0) < request[k] - 1e-9) + ")" if any(
            total.get(k, 0) < request[k] - 1e-9 for k in short) else "")
    elif short:
        why = "the cluster has less than a task asks for: an autoscaler may be adding nodes"
    else:
        why = "resources are free: Ray is starting workers (runtime_env, imports) or placing the tasks"
    return f"{head}; each asks for {shape(request)}; free now: {have} ({why})"


def run_tasks(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    use_ray: bool,
    opts: RayOptions | None = None,
    memory_of: Callable[[Any], int] | None = None,
    on_result: Callable[[Any, Any], None],
    on_error: Callable[[Any, str], None],
    fatal: tuple[type[BaseException], ...] = (),
    on_progress: Callable[[Any, int], None] | None = None,
    say: Callable[[str], None] | None = None,
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
) -> None:
    """Run ``fn(item)`` for every item; ``on_result(item, value)`` or ``on_error(item, message)`` on the driver as
    each one finishes. With Ray, at most ``max_in_flight`` tasks are submitted at a time. An exception of a ``fatal``
    type (a setup error that every item would hit) is raised here instead of being reported per item.
    ``on_progress(item, count)``: the running total of the task's :func:`progress` reports, increasing, before its
    ``on_result``/``on_error`` (through Ray throttled to a few per second, so some totals are skipped; a task retried
    by Ray reports again from 0, which the driver shows only once it passes the highest total seen).

    Through Ray, before any task: :class:`ClusterError` when no alive node can hold a task (``opts.check_feasible``;
    the memory is the largest ``memory_of`` over the items), or when a node that could run one cannot read ``reads``
    or write under ``writes`` (:func:`probe_storage`). An error that cannot heal (:func:`cannot_heal`, plus
    ``opts.unhealable``) is not retried. ``say(line)`` (default: stderr) gets the stall lines (:func:`stall_line`,
    at most once per ``opts.stall_seconds``) and the probe's warnings."""
    items = list(items)
    if not use_ray:
        for item in items:
            try:
                if on_progress is None:
                    value = fn(item)
                else:
                    value = _counted(fn, item, _Count(lambda c, item=item: on_progress(item, c)))
            except fatal:
                raise
            except Exception as e:  # noqa: BLE001  (a failed item is recorded; the rest go on)
                on_error(item, error_line(e))
            else:
                on_result(item, value)
        return

    opts = opts or RayOptions()
    say = say or _stderr
    ray = _init_ray(opts)
    if not items:
        return
    memory = [int(memory_of(item)) for item in items] if memory_of else None
    request = task_request(opts, max(memory) if memory else 0)
    if opts.check_feasible or reads or writes:
        nodes = alive_nodes(ray)
        if opts.check_feasible:
            check_feasible(opts, nodes, max(memory) if memory else 0)
        if reads or writes:  # on a cluster, each node that may run a task; a private local Ray: this process
            able = [n for n in nodes if fits(request, n.resources)] or nodes
            on_nodes = joins_cluster(opts) or len(nodes) > 1
            probe_storage(ray if on_nodes else None, able, reads, writes, unhealable=opts.unhealable, say=say)
    remote = ray.remote(max_calls=opts.max_calls)(_remote_task) if opts.max_calls else ray.remote(_remote_task)
    base = dict(
        num_cpus=opts.num_cpus,
        num_gpus=opts.num_gpus,
        max_retries=opts.max_retries,
        retry_exceptions=opts.retry_exceptions,
        resources=opts.resources or None,
        name=getattr(fn, "__name__", "task"),
    )
    limit = opts.max_in_flight or max(1, int(2 * ray.cluster_resources().get("CPU", 1) // max(opts.num_cpus, 1)))
    sink = drain = None
    if on_progress is not None or opts.stall_seconds:  # on the driver's node, taking no CPU
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        sink = ray.remote(_ProgressSink).options(num_cpus=0, scheduling_strategy=here).remote()
    queue, pending = deque(enumerate(items)), {}
    shown: dict[int, int] = {}  # key -> the highest total passed to on_progress
    started: set[int] = set()  # keys of pending tasks that said they started
    moved = said = time.monotonic()  # the last time a task started, finished or reported progress; the last stall line
    unhealable = tuple(opts.unhealable or ())
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                key, item = queue.popleft()
                extra = {"memory": memory[key]} if memory else {}
                args = (fn, item, sink, key, PROGRESS_INTERVAL, unhealable, tuple(fatal))
                pending[remote.options(**base, **extra).remote(*args)] = (key, item)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=None if sink is None else PROGRESS_INTERVAL)
            if sink is not None:
                drain = drain or sink.drain.remote()
                if ray.wait([drain], timeout=0)[0]:
                    running = dict(pending.values())
                    counts, began = ray.get(drain)
                    if began & (running.keys() - started):
                        started |= began & running.keys()
                        moved = time.monotonic()
                    for key, count in sorted(counts.items()):
                        if key in running and count > shown.get(key, 0):
                            shown[key] = count
                            moved = time.monotonic()
                            if on_progress is not None:
                                on_progress(running[key], count)
                    drain = None
            for ref in done:
                key, item = pending.pop(ref)
                started.discard(key)
                moved = time.monotonic()
                try:
                    value = ray.get(ref)
                except Exception as e:  # noqa: BLE001  (retries are exhausted: record and go on)
                    cause = getattr(e, "cause", None)
                    if fatal and isinstance(cause, fatal):
                        raise cause from None
                    on_error(item, error_line(e))
                    continue
                if isinstance(value, _Failed):
                    if value.error is not None:
                        raise value.error
                    on_error(item, value.message)
                else:
                    on_result(item, value)
            now = time.monotonic()
            if opts.stall_seconds and pending and now - max(moved, said) >= opts.stall_seconds:
                said = now
                say(stall_line(now - moved, len(pending), len(started) if sink is not None else None, len(queue),
                               request, ray.available_resources(), ray.cluster_resources()))
    finally:
        del sink, drain  # the actor ends when its last handle goes (ray.kill could race its start-up: an error line)
