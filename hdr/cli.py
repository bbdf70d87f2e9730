"""The one command-line vocabulary of every stage: shared argument groups, the device resolver, the ``--set``
parser. Every CLI builds its parser from these so that one concept has one name everywhere:

    --root ROOT        the dataset root (render also takes --out, augment/caption --dataset: old spellings)
    --device DEV       auto (cuda if torch sees one, else cpu), cpu, cuda, cuda:N (render also: Cycles backends)
    --quiet            no progress bars (--no-progress is the old spelling)
    --set KEY=VALUE    override a config or preset field; VALUE is YAML; dotted keys reach nested fields
    --kind KIND        single | alt2 | alt3: the kind of LDR sequence
    Ray: --no-ray --address --cpus-per-task --gpus-per-task --retries --max-in-flight --tasks-per-worker
         --ray-resource --stall-seconds --no-feasibility-check

and the one driver of the stages that fan out (render, augment, caption): :func:`run_stage` runs a
:class:`StageRun` (tasks, a :class:`Tally` per result or error, progress bar, Ctrl-C, run record, summary, exit code).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from tqdm import tqdm

from hdr.cluster import ClusterError, RayOptions, run_tasks
from hdr.dataset.records import KINDS

DEVICE_HELP = "auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:N"


class CliError(ValueError):
    """A bad command-line value; the message is one line naming the flag."""


# --- the name a parser shows ---------------------------------------------------------------------------------------
_INVOKED_AS: dict[str, str] = {}


def prog(module: str) -> str:
    """The ``prog`` of a stage's parser: ``python -m <module>``, or ``hdrvid <stage>`` when :mod:`hdr.commands`
    runs the stage (it calls :func:`invoked_as` first)."""
    return _INVOKED_AS.get(module, f"python -m {module}")


def invoked_as(module: str, name: str) -> None:
    _INVOKED_AS[module] = name


# --- devices ---------------------------------------------------------------------------------------------------------
def resolve_device(spec: str, *, flag: str = "--device", extra: tuple[str, ...] = ()) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``; ``cuda``/``cuda:N`` (checked against the
    GPUs torch sees); ``mps``; and the names in ``extra`` (e.g. Cycles' ``optix``), returned as given. One-line
    :class:`CliError` otherwise. torch is imported only when needed (render's numpy path runs without it)."""
    s = str(spec).strip().lower()
    if s in extra:
        return s
    if s == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if s == "auto":
            return "cpu"
        raise CliError(f"{flag} {spec}: torch is not installed, so only cpu is available") from None
    if s == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if s == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CliError(f"{flag} {spec}: torch sees no MPS device here")
        return "mps"
    if s == "cuda" or s.startswith("cuda:"):
        index = s[5:]
        if index and not index.isdigit():
            raise CliError(f"{flag} {spec}: expected cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise CliError(f"{flag} {spec}: torch sees no CUDA device here (use --device cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise CliError(f"{flag} {spec}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return s
    known = ", ".join(dict.fromkeys(("auto", "cpu", "cuda", "cuda:N", "mps") + tuple(extra)))
    raise CliError(f"{flag} {spec}: unknown device (expected one of {known})")


def check_device(spec: str, *, flag: str = "--device", extra: tuple[str, ...] = ()) -> str:
    """The spelling of a device only (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``extra``), lowercased; for a
    device that another machine resolves (a Ray cluster joined by address, whose driver may have no GPU)."""
    s = str(spec).strip().lower()
    index = s[5:] if s.startswith("cuda:") else ""
    if s in ("auto", "cpu", "cuda", "mps") + tuple(extra) or (index and index.isdigit()):
        return s
    known = ", ".join(dict.fromkeys(("auto", "cpu", "cuda", "cuda:N", "mps") + tuple(extra)))
    raise CliError(f"{flag} {spec}: unknown device (expected one of {known})")


def is_gpu(device: str) -> bool:
    return device not in ("cpu", "auto")


def add_device(p, *, help_extra: str = "", help: str | None = None) -> None:
    """``--device`` (default auto); ``help`` replaces the standard text, ``help_extra`` extends it."""
    text = help or DEVICE_HELP + (f", {help_extra}" if help_extra else "")
    p.add_argument("--device", default="auto", help=text)


# --- --set ---------------------------------------------------------------------------------------------------------
def parse_set(items: list[str] | None, *, flag: str = "--set") -> list[tuple[str, object]]:
    """``["a.b=1", "rho=0.7", "r=[0, 0.01]"]`` -> ``[("a.b", 1), ("rho", 0.7), ("r", [0, 0.01])]``; the value is parsed
    as YAML, ``-`` in the key becomes ``_``. CliError on an item without ``=`` or with an empty key or bad YAML."""
    out = []
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or any(not part for part in key.split(".")):
            raise CliError(f"{flag} {item!r}: expected KEY=VALUE (e.g. {flag} rho=0.7 or {flag} train.lr=1e-4)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CliError(f"{flag} {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        out.append((key, value))
    return out


def apply_set(cfg: dict, pairs, *, flag: str = "--set") -> dict:
    """Apply parsed ``--set`` pairs to a nested dict in place (creating mappings on the way); returns it."""
    for key, value in pairs:
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CliError(f"{flag} {key}=...: {part} is not a mapping in the config")
        node[parts[-1]] = value
    return cfg


def load_yaml_mapping(path, *, error: type[Exception] = CliError, what: str = "a config"):
    """The mapping in a YAML file; ``error`` (one line naming the file) if it is missing, not YAML or not a
    mapping. An empty file is an empty mapping."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise error(f"{path}: {what.removeprefix('a ')} file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must be a YAML mapping, got {type(data).__name__}")
    return data


# --- argument groups ---------------------------------------------------------------------------------------------
def add_root(p, *, required: bool = True, default: str | None = None, aliases: tuple[str, ...] = (),
             help: str = "dataset root: local folder or URL (s3://, gs://, ...)") -> None:
    """``--root`` (the dataset root), with the stage's old spellings as aliases."""
    p.add_argument("--root", *aliases, dest="root", required=required and default is None, default=default, help=help)


def add_quiet(p) -> None:
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")


def add_kind(p, *, default: str = "single", flag: str = "--kind", help: str | None = None,
             aliases: tuple[str, ...] = ()) -> None:
    p.add_argument(flag, *aliases, choices=KINDS, default=default, dest="kind",
                   help=help or "kind of LDR sequence: single (one exposure) or alt2/alt3 (HDR-V-Diff's alternating "
                   "exposures)")


def add_set(p, *, fields: str = "") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (repeatable; VALUE is YAML; dotted keys reach nested fields)"
                   + (f"; fields: {fields}" if fields else ""))


def add_ray(p, *, cpus_per_task: int | None = 1, gpus_per_task: float | None = 0.0, tasks_per_worker: int = 0,
            what: str = "task", helps: dict[str, str] | None = None,
            aliases: dict[str, tuple[str, ...]] | None = None) -> argparse._ArgumentGroup:
    """The Ray group every fanning-out stage shares; the stage chooses the per-task defaults, may reword a flag's
    help (``helps``: flag -> text) and keep its old spellings (``aliases``: flag -> old flags)."""
    helps, aliases = helps or {}, aliases or {}
    g = p.add_argument_group("execution (Ray)")

    def add(flag, default_help, **kw):
        g.add_argument(flag, *aliases.get(flag, ()), help=helps.get(flag, default_help), **kw)

    add("--no-ray", f"run in this process, one {what} after another", action="store_true")
    add("--address", "Ray cluster address (default: RAY_ADDRESS, else a private local instance)")
    add("--cpus-per-task", "CPUs each Ray task asks for", type=int, default=cpus_per_task)
    add("--gpus-per-task", "GPUs each Ray task asks for (default: 1 on a GPU device, else 0)"
        if gpus_per_task is None else "GPUs each Ray task asks for", type=float, default=gpus_per_task)
    add("--retries", "retries of a task whose worker or node died", type=int, default=2)
    add("--max-in-flight", "tasks submitted at once (0: 2x cluster CPUs)", type=int, default=0)
    add("--tasks-per-worker", "recycle a Ray worker process after this many tasks (0: never)", type=int,
        default=tasks_per_worker)
    add("--ray-resource", "only schedule on nodes that advertise this custom resource; repeatable",
        action="append", default=[], metavar="NAME")
    add("--stall-seconds", "say why (one line) when no task started, finished or reported progress for this long; "
        "0: never", type=float, default=300)
    add("--no-feasibility-check", "start even if no alive node can hold a task (an autoscaling cluster that will "
        "add such nodes); default: stop at once with a one-line error", action="store_true")
    return g


def ray_is_remote(args) -> bool:
    """Whether the parsed Ray args join a cluster (``--address`` or RAY_ADDRESS) rather than this machine."""
    return not args.no_ray and bool(args.address or os.environ.get("RAY_ADDRESS"))


def ray_options(args, **overrides) -> RayOptions:
    """:class:`hdr.cluster.RayOptions` from the parsed :func:`add_ray` group; ``overrides`` are RayOptions fields the
    stage decides itself (``num_gpus`` worked out from the device, ``retry_exceptions``, ...)."""
    fields = dict(address=args.address, num_cpus=args.cpus_per_task or 1, num_gpus=args.gpus_per_task or 0,
                  max_retries=args.retries, max_calls=args.tasks_per_worker, max_in_flight=args.max_in_flight,
                  resources={r: 0.01 for r in args.ray_resource},
                  stall_seconds=getattr(args, "stall_seconds", 300),
                  check_feasible=not getattr(args, "no_feasibility_check", False))
    fields.update(overrides)
    return RayOptions(**fields)


def default_cpus() -> int:
    """min(4, this machine's cores): render's CPUs per task with --no-ray (with Ray: :func:`hdr.cluster.fit_cpus`)."""
    return min(4, os.cpu_count() or 1)


# --- the stage driver ----------------------------------------------------------------------------------------------
INTERRUPTED = "interrupted: finished work is kept; rerun the same command to resume"


@dataclass
class Tally:
    """What one finished (or failed) task adds to its stage's run."""

    counts: dict[str, int] = field(default_factory=dict)  # increments, e.g. {"written": 3, "failed": 1}
    problems: list = field(default_factory=list)  # kept in the run record; any problem makes the exit code 1
    units: int = 1  # progress-bar steps the task stands for (render: its clips' frames; caption: its batch's clips)
    say: list[str] = field(default_factory=list)  # lines printed above the progress bar


@dataclass
class StageRun:
    """One fanning-out stage run for :func:`run_stage`: the tasks, how a result or an error is tallied, and the run
    record. The stage keeps its own flags and builds this; the driving is shared."""

    stage: str  # "render": the progress bar's label and the run record's name (<root>/_runs/render-....json)
    fn: Callable[[Any], Any]  # the task function, module-level (Ray ships it by reference)
    tasks: list
    store: Any  # hdr.storage.Store of the dataset root
    argv: list | None  # the stage's argv (for the run record's command line)
    on_result: Callable[[Any, Any], Tally]  # (task, value) -> Tally
    on_error: Callable[[Any, str], Tally]  # (task, one-line message) -> Tally, after Ray's retries
    counts: dict[str, int]  # the counters, with their starting values (render: clips already complete)
    summary: str  # the last line, formatted with the counts: "wrote {written} augmentations, {failed} failed"
    total: int | None = None  # progress-bar units (default: one per task)
    unit: str = "clip"  # what the bar counts (render: "frame")
    progress: bool = False  # the tasks call hdr.cluster.progress(n): the bar moves while they run
    postfix: tuple[str, ...] = ()  # counts shown after the bar, e.g. ("rendered", "failed") (default: failed, if any)
    problems: list = field(default_factory=list)  # problems known before the run (render: conflicting clips)
    problems_field: str = "failures"  # the run record's key for the problems
    record: dict = field(default_factory=dict)  # the stage's own run-record fields (settings, ...)
    started: float | None = None  # time.time() the run started (default: when run_stage is called)
    memory_of: Callable[[Any], int] | None = None  # bytes a task needs (Ray's memory resource)
    fatal: tuple[type[BaseException], ...] = ()  # exceptions that stop the run: "error: <msg>", exit code 2
    finish: Callable[[dict, list], str] | None = None  # (run record, problems) -> text appended to the summary
    reads: tuple[str, ...] = ()  # URLs every node that may run a task must read (probed first through Ray)
    writes: tuple[str, ...] = ()  # URLs every such node must write under (a probe object is written and deleted)


def run_stage(run: StageRun, *, use_ray: bool, opts: RayOptions | None = None, quiet: bool = False) -> int:
    """Run every task of ``run`` through :func:`hdr.cluster.run_tasks` (Ray, or this process with ``use_ray=False``)
    with a progress bar on stderr (none with ``quiet``), tally the results, write the run record under
    ``<root>/_runs/`` and print a one-line summary. Returns the exit code: 0, 1 when there were problems, 2 after a
    ``fatal`` exception or a :class:`hdr.cluster.ClusterError` (one line ``error: ...``: no node can hold a task, a
    node cannot reach the storage), 130 after Ctrl-C (finished work is kept: rerunning resumes). Lines about a stalled
    run are printed above the bar."""
    from hdr.dataset import layout

    started = time.time() if run.started is None else run.started
    counts, problems = dict(run.counts), list(run.problems)
    total = len(run.tasks) if run.total is None else run.total
    bar = tqdm(total=total, unit=run.unit, desc=run.stage, dynamic_ncols=True, file=sys.stderr, disable=quiet,
               smoothing=0.1)
    provisional: dict[int, int] = {}  # id(task) -> units its progress reports moved the bar by, until it ends

    def moved(task, n: int) -> None:
        if not provisional and not bar.n:  # the first report: the rate (and ETA) is measured from here, not from
            bar.last_print_t, bar.last_print_n = time.time(), 0  # the start (Ray start-up, map loads, imports)
        bar.update(n - provisional.get(id(task), 0))
        provisional[id(task)] = n

    def tally(task, t: Tally) -> None:
        for key, n in t.counts.items():
            counts[key] = counts.get(key, 0) + n
        problems.extend(t.problems)
        for line in t.say:
            tqdm.write(line, file=sys.stderr)
        names = run.postfix or (("failed",) if "failed" in counts else ())
        if names:
            bar.set_postfix({k: counts.get(k, 0) for k in names}, refresh=False)
        bar.update(t.units - provisional.pop(id(task), 0))  # the task's own count replaces its reports

    try:
        run_tasks(run.fn, run.tasks, use_ray=use_ray, opts=opts, memory_of=run.memory_of, fatal=run.fatal,
                  on_result=lambda task, value: tally(task, run.on_result(task, value)),
                  on_error=lambda task, message: tally(task, run.on_error(task, message)),
                  on_progress=moved if run.progress else None, say=lambda line: tqdm.write(line, file=sys.stderr),
                  reads=run.reads, writes=run.writes)
    except KeyboardInterrupt:
        bar.close()
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except (ClusterError, *run.fatal) as e:
        bar.close()
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    bar.close()
    record = layout.write_run_record(run.store, run.stage, started, run.argv, **run.record, counts=counts,
                                     **{run.problems_field: problems})
    tail = run.finish(record, problems) if run.finish else ""
    print(run.summary.format(**counts) + (tail or ""), file=sys.stderr)
    return 1 if problems else 0
