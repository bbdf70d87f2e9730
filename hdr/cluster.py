"""Fan plain functions out as Ray tasks (one per HDRI or clip) with backpressure, retries and recorded failures.

Every stage that fans out (render, augment, caption) uses :func:`run_tasks`; the drivers stay thin. ``use_ray=False``
runs the same function in this process, one item after another (debugging, ``pdb``).
"""
from __future__ import annotations

import os
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
) -> None:
    """Run ``fn(item)`` for every item; ``on_result(item, value)`` or ``on_error(item, message)`` on the driver as
    each one finishes. With Ray, at most ``max_in_flight`` tasks are submitted at a time. An exception of a ``fatal``
    type (a setup error that every item would hit) is raised here instead of being reported per item."""
    items = list(items)
    if not use_ray:
        for item in items:
            try:
                value = fn(item)
            except fatal:
                raise
            except Exception as e:  # noqa: BLE001  (a failed item is recorded; the rest go on)
                on_error(item, error_line(e))
            else:
                on_result(item, value)
        return

    opts = opts or RayOptions()
    ray = _init_ray(opts)
    remote = ray.remote(max_calls=opts.max_calls)(fn) if opts.max_calls else ray.remote(fn)
    base = dict(
        num_cpus=opts.num_cpus,
        num_gpus=opts.num_gpus,
        max_retries=opts.max_retries,
        retry_exceptions=opts.retry_exceptions,
        resources=opts.resources or None,
    )
    limit = opts.max_in_flight or max(1, int(2 * ray.cluster_resources().get("CPU", 1) // max(opts.num_cpus, 1)))
    queue, pending = deque(items), {}
    while queue or pending:
        while queue and len(pending) < limit:
            item = queue.popleft()
            extra = {"memory": int(memory_of(item))} if memory_of else {}
            pending[remote.options(**base, **extra).remote(item)] = item
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            item = pending.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001  (retries are exhausted: record and go on)
                cause = getattr(e, "cause", None)
                if fatal and isinstance(cause, fatal):
                    raise cause from None
                on_error(item, error_line(e))
            else:
                on_result(item, value)
