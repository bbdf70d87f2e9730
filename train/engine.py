"""The shared training engine of the DiffHDR and HDR-V-Diff trainers.

A model plugs in as a :class:`TrainTask` (duck-typed; see the protocol below). The engine owns everything that is
not model-specific:

* the run folder ``RUN/``: ``config.yaml`` (the resolved config), ``manifest.json`` (``m.record(run_dir)``: manifest
  path, version, root hash), ``env.json`` (versions, device, processes, command line), ``metrics.jsonl`` and
  ``logs/`` (TensorBoard), ``checkpoints/step_NNNNNNN/`` and the task's export (e.g. ``lora.safetensors``);
* the loop on ``accelerate``: ``device`` ``auto|cpu|cuda|cuda:N`` (``hdr.cli.resolve_device``), bf16 autocast on a
  GPU and fp32 on the CPU (``train.mixed_precision: auto``), gradient accumulation, gradient clipping, gradient
  checkpointing through the task's hook, multi-GPU through ``accelerate launch``
  (``train/configs/accelerate_fsdp.yaml`` ships an FSDP config, ``accelerate_ddp.yaml`` plain data parallel);
* AdamW with a constant learning-rate schedule (optional linear warm-up);
* checkpoints every ``train.checkpoint_every`` steps, the last ``train.checkpoints_keep`` kept, written to a
  temporary folder and renamed into place (a killed run never leaves a checkpoint that looks finished);
* EXACT resume: rerunning the same command on the same ``RUN`` continues from the newest checkpoint -- trainable
  weights, optimizer, scheduler, the python/numpy/torch RNG states (accelerate's ``save_state``) and the data
  position (epoch + batches consumed). The per-step random draws of a task come from a generator seeded with
  ``derive_seed(seed, "step", step, rank)``, and the data order of epoch ``e`` from ``derive_seed(seed, "epoch", e)``,
  so ``2 + resume + 2`` steps give bit-identical weights to 4 uninterrupted steps (tested on the CPU);
* the DataLoader (:func:`build_loader`): ``train.num_workers: auto`` starts persistent, seeded worker processes when
  the on-the-fly LDR has steps that exist only on the CPU (the codec ...; ``hdr.dataset.loader.worker_plan``, one
  line at start says so and ``env.json`` records it), else loads in the training process; the batches do not
  depend on the number of workers;
* TensorBoard + jsonl metrics, a tqdm progress bar and one-line :class:`TrainError` messages.

The TrainTask protocol (all a model module has to write)::

    class MyTask:
        name = "mymodel"
        def build(self, config: dict, device: torch.device, weight_dtype: torch.dtype) -> None
            # load/construct models on `device`; frozen weights in `weight_dtype` (bf16 on a GPU, fp32 on the CPU)
        def module(self) -> torch.nn.Module
            # the ONE module that holds every trainable parameter (requires_grad=True); the engine wraps it with
            # accelerate (DDP/FSDP) and hands the wrapped module back to training_step
        def dataset(self) -> torch.utils.data.Dataset          # training items; `set_epoch(e)` is called if present
        def collate(self, items: list) -> batch                # optional (default: torch default_collate)
        def training_step(self, model, batch, generator: torch.Generator) -> dict[str, Tensor]
            # returns scalars; "loss" is back-propagated, everything else is logged
        def enable_gradient_checkpointing(self) -> None        # optional; called if train.gradient_checkpointing
        def export(self, run_dir: Path, trainable_state: dict[str, Tensor]) -> list[str]
            # write the deliverable (e.g. LoRA safetensors) from the trainable weights; return the paths written
        def describe(self) -> dict                             # optional; recorded in env.json
        def resolve_config(self, config: dict) -> dict         # optional; the config validated, old key spellings
            # mapped to today's and the task's defaults filled in: what RUN/config.yaml records and what a resume
            # compares (a stored config.yaml goes through it too, so a folder written with old spellings resumes)

The sections of a config are typed: :class:`TrainConfig` here, each trainer's ``data:``/``model:`` dataclasses
(:class:`ConfigSection`: unknown keys, wrong types and bad choices are one-line errors naming the key).

The engine saves/loads the trainable state generically (every parameter with ``requires_grad`` of ``module()``, by
name), so a task does not write checkpoint code.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import platform
import shutil
import sys
import time
import typing
import warnings
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import yaml

from hdr.cli import CliError, apply_set, load_yaml_mapping, parse_set
from hdr.cli import resolve_device as _resolve_device
from hdr.dataset.records import KINDS
from hdr.seeding import derive_seed
from hdr.storage import atomic_dir, atomic_write_text
from hdr.typecheck import is_a, type_name, union_args

CONFIG_NAME = "config.yaml"
TRAINABLE_NAME = "trainable.safetensors"
CKPT_PREFIX = "step_"


def _saved_tensors_on_cpu(enabled: bool, device: torch.device):
    """Tensors autograd saves during the forward live in (pinned, on a GPU) CPU memory until the backward needs them.
    With gradient checkpointing these are the blocks' inputs, the part of the activations that grows with depth."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")


class TrainError(RuntimeError):
    """A problem the user can fix (bad config, conflicting run folder, non-finite loss ...): one line, no traceback."""


@runtime_checkable
class TrainTask(Protocol):
    name: str

    def build(self, config: dict, device: torch.device, weight_dtype: torch.dtype) -> None: ...

    def module(self) -> torch.nn.Module: ...

    def dataset(self) -> torch.utils.data.Dataset: ...

    def training_step(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> dict: ...

    def export(self, run_dir: Path, trainable_state: dict) -> list: ...


# ----------------------------------------------------------------------------------------------------------- config

class ConfigDeprecationWarning(FutureWarning):
    """An old spelling of a config key (still read, mapped to the new key). A FutureWarning, so it is shown."""


class one_line_config_warnings(warnings.catch_warnings):
    """Within it, a :class:`ConfigDeprecationWarning` prints as one ``warning: ...`` line on stderr (the CLIs); other
    warnings as usual."""

    def __enter__(self):
        out = super().__enter__()
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ConfigDeprecationWarning):
                print(f"warning: {message}", file=sys.stderr if file is None else file)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        return out


def _type_name(tp) -> str:
    """A type as config messages name it: YAML words (mapping, list), a nested section is a mapping."""
    members = union_args(tp)
    if members is not None:
        return " or ".join(_type_name(a) for a in members)
    origin = typing.get_origin(tp) or tp
    if origin is dict or (isinstance(tp, type) and issubclass(tp, ConfigSection)):
        return "mapping"
    if origin in (list, tuple):
        return "list"
    return type_name(tp)


def _wrong_type(value, tp, where: str) -> TrainError:
    hint = ""
    if isinstance(value, str) and float in (tp, *typing.get_args(tp)):
        try:
            float(value)
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
        except ValueError:
            pass
    return TrainError(f"config {where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"[:300] + hint)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, ConfigSection)


def check_value(value, tp, where: str):
    """``value`` if it has the annotated type ``tp`` (:func:`hdr.typecheck.is_a`: bool, int, float (an int is one too),
    str, list/tuple (a YAML list), dict, Any, X | None, X | Y) or is the mapping of a nested :class:`ConfigSection`
    (built from it); else a one-line :class:`TrainError` naming ``where`` (e.g. ``data.window``). Values are not
    converted (RUN/config.yaml keeps them as written)."""
    if _is_section(tp):
        if not isinstance(value, dict):
            raise _wrong_type(value, tp, where)
        return tp.from_dict(value, section=where)
    members = union_args(tp)
    if members is not None and any(_is_section(a) for a in members):
        if value is None and type(None) in members:
            return None
        section = next(a for a in members if _is_section(a))
        if isinstance(value, dict):  # the section's own message names the nested key
            return section.from_dict(value, section=where)
        rest = tuple(a for a in members if not _is_section(a))
        if rest and is_a(value, typing.Union[rest]):
            return value
        raise _wrong_type(value, tp, where)
    if not is_a(value, tp):
        raise _wrong_type(value, tp, where)
    return value


def unknown_keys_error(unknown, known, section: str) -> TrainError:
    """``config data: unknown key 'windw' (did you mean 'window'?); known: ...`` (difflib's closest known key)."""
    parts = []
    for k in sorted(map(str, unknown)):
        close = difflib.get_close_matches(k, list(known), n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return TrainError(f"config {section}: unknown key{'s' if len(parts) > 1 else ''} {', '.join(parts)}; known: "
                      f"{', '.join(sorted(known))}")


class ConfigSection:
    """Base of the typed sections of a run config (``train:``, each trainer's ``data:`` and ``model:``): a dataclass
    whose fields are the section's keys, each with its one type and default.

    ``from_dict(d)`` validates: an unknown key is an error naming the section, the key, the closest known key and
    all known keys; a value of the wrong type is an error naming the key; ``CHOICES`` (key -> allowed values) are
    checked; ``upgrade`` maps old spellings (with a :class:`ConfigDeprecationWarning`); ``IGNORED`` keys are
    accepted and dropped; ``resolve`` and ``validate`` are the subclass's hooks (fill derived defaults, check
    ranges). ``to_dict()`` gives every key in field order, ``to_dict(given_only=True)`` only the keys the config
    named (after ``upgrade``)."""

    SECTION = ""            # the name in messages (a nested section gets its dotted path)
    CHOICES: dict = {}
    IGNORED: tuple = ()

    @classmethod
    def field_types(cls) -> dict:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def upgrade(cls, d: dict, section: str) -> dict:
        """Hook: map deprecated keys of ``d`` (a copy) to their new names."""
        return d

    @classmethod
    def from_dict(cls, d: dict | None, *, section: str | None = None):
        section = section or cls.SECTION
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise TrainError(f"config {section}: expected a mapping, got {type(d).__name__} {d!r}"[:300])
        d = cls.upgrade(dict(d), section)
        for k in cls.IGNORED:
            d.pop(k, None)
        types_ = cls.field_types()
        unknown = [k for k in d if k not in types_]
        if unknown:
            raise unknown_keys_error(unknown, types_, section)
        values = {k: check_value(v, types_[k], f"{section}.{k}") for k, v in d.items()}
        obj = cls(**values)
        obj.__dict__["_given"] = tuple(values)
        for key, allowed in cls.CHOICES.items():
            v = getattr(obj, key)
            if v is not UNSET and v not in allowed:
                raise TrainError(f"config {section}.{key} must be one of {', '.join(map(str, allowed))}, got {v!r}")
        obj.resolve()
        unset = [f.name for f in dataclasses.fields(obj) if getattr(obj, f.name) is UNSET]
        if unset:
            raise TrainError(f"config {section}: internal: {cls.__name__}.resolve left {', '.join(unset)} unset")
        obj.validate(section)
        return obj

    def resolve(self) -> None:
        """Hook: fill defaults that depend on other keys."""

    def validate(self, section: str) -> None:
        """Hook: checks beyond the types and choices (raise TrainError naming ``section.key``)."""

    def to_dict(self, given_only: bool = False) -> dict:
        given = self.__dict__.get("_given")
        out = {}
        for f in dataclasses.fields(self):
            if given_only and given is not None and f.name not in given:
                continue
            v = getattr(self, f.name)
            out[f.name] = v.to_dict(given_only) if isinstance(v, ConfigSection) else copy.deepcopy(v)
        return out


class _Unset:
    def __repr__(self):
        return "UNSET"


UNSET = _Unset()   # default of a key that the section's resolve() fills in (e.g. DiffHDR's recipe keys)


def upgrade_kind(d: dict, section: str = "data", allowed: tuple = KINDS) -> dict:
    """``kind`` (single|alt2|alt3, the kind of LDR sequence) from its old spellings in a data section: ``aug_kind: K``
    (DiffHDR) and ``exposures: N`` (HDR-V-Diff; -> altN), each with a :class:`ConfigDeprecationWarning`. The key
    keeps its place in the mapping (RUN/config.yaml keeps its order); two spellings that disagree are an error."""
    found = [("kind", d["kind"])] if "kind" in d else []
    if "aug_kind" in d:
        found.append(("aug_kind", d["aug_kind"]))
    if "exposures" in d:
        n = d["exposures"]
        if isinstance(n, bool) or not isinstance(n, int) or f"alt{n}" not in allowed:
            ns = " or ".join(k[3:] for k in allowed if k.startswith("alt"))
            raise TrainError(f"config {section}.exposures (deprecated: use {section}.kind) must be {ns}, got {n!r}")
        found.append(("exposures", f"alt{n}"))
    old = [(k, v) for k, v in found if k != "kind"]
    if not old:
        return d
    if len({str(v) for _, v in found}) > 1:
        raise TrainError(f"config {section}: " + ", ".join(f"{k}: {v}" for k, v in found)
                         + f" disagree; write only {section}.kind")
    kind = found[0][1]
    for k, _ in old:
        warnings.warn(f"config {section}.{k} is deprecated: write {section}.kind: {kind}", ConfigDeprecationWarning,
                      stacklevel=3)
    out = {}
    for k, v in d.items():
        if k in ("kind", "aug_kind", "exposures"):
            out.setdefault("kind", kind)
        else:
            out[k] = v
    return out


@dataclass
class TrainConfig(ConfigSection):
    """The ``train:`` section of a run config (every key optional)."""

    SECTION = "train"
    CHOICES = {"mixed_precision": ("auto", "no", "bf16", "fp16")}

    # -- the optimisation: step budget, batch, AdamW with a constant learning rate (optional linear warm-up)
    steps: int = 10_000                 # optimizer steps (DiffHDR §4.1: 10k)
    batch_size: int = 1                 # per process
    grad_accum: int = 1
    lr: float = 1e-4                    # DiffHDR §4.1: AdamW 1e-4 constant
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0   # null/0: no clipping (a task may change the default: DiffHDR has none)
    # -- precision and memory
    mixed_precision: str = "auto"       # auto (bf16 on GPU, no on CPU) | no | bf16 | fp16
    gradient_checkpointing: bool = False
    offload_activations: bool = False   # keep the tensors saved for backward in CPU memory (the public DiffHDR code's
                                        # --use_gradient_checkpointing_offload): less GPU memory, more PCIe traffic
    # -- checkpoints, logging, exports (cadence only: not part of what a resume compares)
    checkpoint_every: int = 500
    checkpoints_keep: int = 3
    log_every: int = 1
    # -- randomness and loading
    seed: int = 0
    num_workers: int | str = "auto"     # loader worker processes; auto: a few when the on-the-fly LDR has CPU-only
                                        # steps (the codec ...), else 0 (hdr.dataset.loader.worker_plan)
    export_every: int = 0               # 0: export only at the end

    def validate(self, section: str) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        nw = self.num_workers
        if nw != "auto" and (isinstance(nw, str) or nw < 0):
            raise TrainError(f"config {section}.num_workers must be auto or an integer >= 0, got {nw!r}")
        for k in ("steps", "batch_size", "grad_accum", "checkpoint_every", "checkpoints_keep", "log_every"):
            if int(getattr(self, k)) < 1:
                raise TrainError(f"config {section}.{k} must be >= 1, got {getattr(self, k)!r}")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """Read a YAML run config and apply ``--set`` overrides ``a.b.c=value`` (values parsed as YAML; the toolkit's
    one parser, :func:`hdr.cli.parse_set`)."""
    cfg: dict = {}
    if path is not None:
        cfg = load_yaml_mapping(path, error=TrainError, what="a config")
    try:
        apply_set(cfg, parse_set(overrides))
    except CliError as e:
        raise TrainError(str(e)) from None
    return cfg


# ------------------------------------------------------------------------------------------------------------ data

class ResumableSampler(torch.utils.data.Sampler):
    """Epoch-seeded permutation, sharded over processes, that can start in the middle of an epoch.

    Epoch ``e`` is ``randperm(n)`` from ``derive_seed(seed, "epoch", e)`` (the same on every process); process
    ``rank`` of ``world`` takes indices ``rank::world`` of it (the tail that does not fill every process is dropped,
    so all processes see the same number of batches). ``skip`` items of the process's share are skipped.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if n < 1:
            raise TrainError("the training dataset is empty")
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def per_process(self) -> int:
        return self.n // self.world if self.n >= self.world else 1

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.n < self.world:          # tiny datasets on many GPUs: wrap around
            order = (order * self.world)[: self.world]
        share = order[self.rank:: self.world][: self.per_process()]
        return share[self.skip:]

    def __iter__(self):
        return iter(self._order())

    def __len__(self):
        return max(self.per_process() - self.skip, 0)


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)``: the sampler's epoch travels with every index (see :class:`_EpochItems`)."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class _EpochItems(torch.utils.data.Dataset):
    """``items[(epoch, i)]`` is ``dataset.set_epoch(epoch); dataset[i]``: a persistent loader worker holds its own
    copy of the dataset, which the main process's ``set_epoch`` does not reach."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[i]


def build_loader(dataset, sampler: ResumableSampler, batch_size: int, num_workers: int = 0, collate=None,
                 generator: torch.Generator | None = None, worker_seed: int = 0) -> torch.utils.data.DataLoader:
    """The training DataLoader. With workers they are started once per run (persistent), seeded by
    :func:`hdr.dataset.loader.seed_worker`, and a dataset with ``set_epoch`` gets each index with its epoch; the
    batches are the same for any number of workers (each item depends on its index and epoch only)."""
    import functools

    from hdr.dataset.loader import seed_worker

    kw: dict = {}
    if num_workers > 0:
        kw = {"persistent_workers": True, "worker_init_fn": functools.partial(seed_worker, worker_seed)}
        if hasattr(dataset, "set_epoch"):
            dataset, sampler = _EpochItems(dataset), _EpochSampler(sampler)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       num_workers=num_workers, collate_fn=collate, generator=generator, **kw)


@dataclass
class LoopState:
    """What besides weights/optimizer/RNG a resume needs (saved as an accelerate custom object)."""

    step: int = 0          # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(d["step"]), int(d["epoch"]), int(d["batch_in_epoch"])


# ------------------------------------------------------------------------------------------------------- run folder

def _config_fingerprint(cfg: dict) -> dict:
    """The parts of a config that must match for a resume: everything but the step budget, logging/checkpoint
    cadence, loader workers and the on-disk caches (which change speed, not results)."""
    c = copy.deepcopy(cfg)
    tr = c.get("train") or {}
    for k in ("steps", "checkpoint_every", "checkpoints_keep", "log_every", "export_every", "num_workers"):
        tr.pop(k, None)
    data = c.get("data") or {}
    for k in ("cache_latents", "cache_dir"):
        data.pop(k, None)
    return {k: v for k, v in c.items() if v not in ({}, None)}


def _normalized(old: dict, normalize) -> dict:
    """A stored config read by today's code (``normalize``: the task's ``resolve_config``, which maps deprecated keys
    such as ``data.aug_kind`` to ``data.kind``); the stored config as it is if today's code rejects it. Warnings are
    not shown: the run folder's config.yaml is rewritten in today's spelling on resume."""
    if normalize is None:
        return old
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigDeprecationWarning)
            return normalize(copy.deepcopy(old))
    except TrainError:
        return old


def prepare_run_dir(run_dir: Path, config: dict, overwrite: bool = False, normalize=None) -> bool:
    """Create ``run_dir`` with the resolved config; return True when it already holds a compatible run (resume).

    A folder with a different config is a conflict (``--overwrite`` replaces it); a non-empty folder that is not a
    run folder is never touched. ``normalize`` (the task's ``resolve_config``) is applied to the stored config
    before the comparison, so a run folder written with old key spellings resumes.
    """
    cfg_path = run_dir / CONFIG_NAME
    if run_dir.exists() and any(run_dir.iterdir()):
        if not cfg_path.is_file():
            if overwrite:
                raise TrainError(f"{run_dir}: not a run folder (no {CONFIG_NAME}); refusing to delete it even with "
                                 "--overwrite -- choose another --run")
            raise TrainError(f"{run_dir}: exists, is not empty and is not a run folder (no {CONFIG_NAME})")
        old = _normalized(yaml.safe_load(cfg_path.read_text()) or {}, normalize)
        if _config_fingerprint(old) == _config_fingerprint(config) and not overwrite:
            _write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))   # a longer step budget is fine
            return True
        if not overwrite:
            raise TrainError(f"{run_dir}: holds a run with a different config; use another --run or --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))
    return False


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def env_info(accelerator=None, device: torch.device | None = None) -> dict:
    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    info = {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node(),
        "argv": sys.argv, "cwd": os.getcwd(),
        "packages": {p: ver(p) for p in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors",
                                         "numpy", "hdr-video-toolkit")},
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        info["git_commit"] = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 -- informational only
        info["git_commit"] = None
    if accelerator is not None:
        info.update(device=str(accelerator.device), processes=accelerator.num_processes,
                    distributed=str(accelerator.distributed_type), mixed_precision=accelerator.mixed_precision)
    elif device is not None:
        info["device"] = str(device)
    return info


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (temporary folders of a killed save are ignored)."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    out = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
           and p.name[len(CKPT_PREFIX):].isdigit() and (p / "loop_state.json").is_file()]
    return sorted(out, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


# ------------------------------------------------------------------------------------------------------------ loop

def resolve_device(device: str) -> str:
    """:func:`hdr.cli.resolve_device` (auto|cpu|cuda|cuda:N|mps) with its one-line error as a TrainError."""
    try:
        return _resolve_device(device)
    except CliError as e:
        raise TrainError(str(e)) from None


def _mixed_precision(setting: str, device: str) -> str:
    if setting == "auto":
        return "bf16" if device.startswith("cuda") else "no"
    return setting


def _select_gpu(device: str) -> None:
    """``cuda:N`` in a single process: make GPU N the current one (accelerate then places everything on it); under
    ``accelerate launch`` each process has its own GPU, so an index is an error there."""
    if not device.startswith("cuda:"):
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError(f"--device {device}: under accelerate launch every process gets its own GPU; use --device "
                         "cuda or auto")
    torch.cuda.set_device(int(device[5:]))


def _weight_dtype(mixed: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter of ``module`` by name, detached, on the CPU, contiguous."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    own = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise TrainError(f"{source}: trainable weights do not match the model ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    with torch.no_grad():
        for n, p in own.items():
            if tuple(state[n].shape) != tuple(p.shape):
                raise TrainError(f"{source}: {n} has shape {tuple(state[n].shape)}, the model {tuple(p.shape)}")
            p.copy_(state[n].to(p.device, p.dtype))


@dataclass
class RunResult:
    run_dir: Path
    step: int
    resumed_from: int | None
    exported: list = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    is_main: bool = True


def train(task, config: dict, run_dir: str | os.PathLike, *, device: str = "auto", manifest=None,
          overwrite: bool = False, stop_after: int | None = None, progress: bool = True) -> RunResult:
    """Train ``task`` as configured (``config["train"]`` is a :class:`TrainConfig`) into ``run_dir``.

    Re-running with the same ``run_dir`` and config resumes from the newest checkpoint. ``manifest`` (an object with
    ``record(run_dir)``) is recorded in the run folder. ``stop_after`` ends the process after that many optimizer
    steps in total (it checkpoints first), simulating a kill for tests and letting a scheduler cut a run into jobs.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from safetensors.torch import load_file, save_file

    normalize = getattr(task, "resolve_config", None)
    if normalize is not None:                   # record every choice, including the task's defaults
        config = normalize(config)
    tcfg = TrainConfig.from_dict(config.get("train"))
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    mixed = _mixed_precision(tcfg.mixed_precision, dev)
    if dev == "cpu" and mixed != "no":
        raise TrainError(f"train.mixed_precision={mixed} needs a GPU; use 'auto' or 'no' on the CPU")
    _select_gpu(dev)

    accelerator = Accelerator(cpu=dev == "cpu", mixed_precision=mixed, gradient_accumulation_steps=tcfg.grad_accum,
                              project_config=ProjectConfiguration(project_dir=str(run_dir)))
    main = accelerator.is_main_process
    resuming = False
    if main:
        resuming = prepare_run_dir(run_dir, config, overwrite=overwrite, normalize=normalize)
        if manifest is not None:
            manifest.record(run_dir)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:          # every process follows the main process's resume decision
        from accelerate.utils import broadcast_object_list

        resuming = broadcast_object_list([resuming])[0]
    set_seed(derive_seed(tcfg.seed, "init", accelerator.process_index) % 2**32)

    weight_dtype = _weight_dtype(mixed)
    task.build(config, accelerator.device, weight_dtype)
    module = task.module()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"{task.name}: the model has no trainable parameters")
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in module.parameters())
    if tcfg.gradient_checkpointing:
        if not hasattr(task, "enable_gradient_checkpointing"):
            raise TrainError(f"{task.name}: train.gradient_checkpointing is set but the task has no such hook")
        task.enable_gradient_checkpointing()
    if main:
        info = env_info(accelerator)
        info.update(task=task.name, trainable_parameters=n_train, module_parameters=n_total,
                    weight_dtype=str(weight_dtype).replace("torch.", ""))
        if hasattr(task, "describe"):
            info["task_info"] = task.describe()
        _write_text(run_dir / "env.json", json.dumps(info, indent=2, default=str))

    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay, eps=tcfg.eps)
    scheduler = get_scheduler("constant_with_warmup" if tcfg.warmup_steps else "constant", optimizer,
                              num_warmup_steps=tcfg.warmup_steps)
    dataset = task.dataset()
    sampler = ResumableSampler(len(dataset), tcfg.seed, accelerator.process_index, accelerator.num_processes)
    collate = getattr(task, "collate", None)
    # loader workers: "auto" runs the CPU-only steps of an on-the-fly preset (the codec ...) in worker processes
    from hdr.dataset.loader import worker_plan

    plan = worker_plan(dataset, tcfg.num_workers, dev, batches=len(sampler) // tcfg.batch_size,
                       processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if main:
        if plan.message():
            print(plan.message(), file=sys.stderr)
        if plan.warning():
            print(f"warning: {plan.warning()}", file=sys.stderr)
        info["loader"] = plan.record()
        _write_text(run_dir / "env.json", json.dumps(info, indent=2, default=str))
    # the loader's own generator (re-seeded per epoch) keeps iterator creation off the global torch RNG, so a
    # resumed run (which creates one more iterator) draws exactly what an uninterrupted run draws
    loader_gen = torch.Generator()
    loader = build_loader(dataset, sampler, tcfg.batch_size, plan.num_workers, collate, loader_gen,
                          derive_seed(tcfg.seed, "loader-worker", accelerator.process_index))
    if len(sampler) < tcfg.batch_size:
        raise TrainError(f"the training set has {len(dataset)} item(s), fewer than batch_size={tcfg.batch_size} "
                         f"x {accelerator.num_processes} process(es)")
    model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    loop = LoopState()
    accelerator.register_for_checkpointing(loop)

    # checkpoints hold only the trainable weights (the frozen backbone is rebuilt from the config). Under FSDP /
    # DeepSpeed accelerate saves the sharded model state itself (the hooks get no weights then) and the local
    # parameters are shards, so the hooks stand aside.
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def _save_hook(models, weights, output_dir):
        if sharded:
            return
        while weights:
            weights.pop()
        if accelerator.is_main_process:
            save_file(trainable_state(module), os.path.join(output_dir, TRAINABLE_NAME))

    def _load_hook(models, input_dir):
        if sharded:
            return
        while models:
            models.pop()
        path = os.path.join(input_dir, TRAINABLE_NAME)
        load_trainable_state(module, load_file(path), path)

    accelerator.register_save_state_pre_hook(_save_hook)
    accelerator.register_load_state_pre_hook(_load_hook)

    resumed_from = None
    ckpts = list_checkpoints(run_dir)
    if ckpts and resuming:
        try:
            accelerator.load_state(str(ckpts[-1]))
        except TrainError:
            raise
        except Exception as e:  # noqa: BLE001 -- name the checkpoint
            raise TrainError(f"{ckpts[-1]}: cannot resume from this checkpoint ({type(e).__name__}: {e})") from None
        resumed_from = loop.step

    def save_checkpoint():
        import contextlib

        final = run_dir / "checkpoints" / f"{CKPT_PREFIX}{loop.step:07d}"
        tmp = final.with_name(f".tmp-{final.name}")       # one name for every process (they all write into it)
        with atomic_dir(final, tmp) if main else contextlib.nullcontext(tmp):
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if main:
                _write_text(tmp / "loop_state.json", json.dumps(loop.state_dict()))
        if main:
            for old in list_checkpoints(run_dir)[: -tcfg.checkpoints_keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "logs"))
    metrics_path = run_dir / "metrics.jsonl"

    target = tcfg.steps if stop_after is None else min(tcfg.steps, stop_after)
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tcfg.steps, initial=loop.step, desc=f"train {task.name}", unit="step", dynamic_ncols=True)
    last: dict = {}
    acc: dict[str, float] = {}
    n_acc = 0
    t0 = time.time()
    model.train()
    while loop.step < target:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(loop.epoch)
        sampler.set_position(loop.epoch, loop.batch_in_epoch * tcfg.batch_size)
        loader_gen.manual_seed(derive_seed(tcfg.seed, "loader", loop.epoch, loop.batch_in_epoch,
                                           accelerator.process_index))
        for batch in loader:
            micro = loop.batch_in_epoch
            loop.batch_in_epoch += 1
            g = torch.Generator(device="cpu").manual_seed(
                derive_seed(tcfg.seed, "step", loop.step, "micro", micro, accelerator.process_index))
            with accelerator.accumulate(model):
                with accelerator.autocast(), _saved_tensors_on_cpu(tcfg.offload_activations, accelerator.device):
                    out = task.training_step(model, batch, g)
                if "loss" not in out:
                    raise TrainError(f"{task.name}: training_step returned no 'loss' (got {sorted(out)})")
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainError(f"{task.name}: non-finite loss {loss.item()} at step {loop.step + 1}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and tcfg.max_grad_norm:
                    # all parameters of the wrapped model (frozen ones have no grad): accelerate then uses FSDP's
                    # own global-norm clipping instead of a per-shard norm
                    gn = accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                    out = {**out, "grad_norm": gn}
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in out.items():
                v = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            if not accelerator.sync_gradients:
                continue
            loop.step += 1
            last = {k: v / n_acc for k, v in acc.items()}
            if accelerator.num_processes > 1:      # log the mean over processes
                keys = sorted(last)
                red = accelerator.reduce(torch.tensor([last[k] for k in keys], device=accelerator.device), "mean")
                last = dict(zip(keys, red.tolist()))
            last["lr"] = scheduler.get_last_lr()[0]
            acc, n_acc = {}, 0
            if main and (loop.step % tcfg.log_every == 0 or loop.step == target):
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, loop.step)
                rec = {"step": loop.step, "epoch": loop.epoch, "time": round(time.time() - t0, 3), **last}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
            if loop.step % tcfg.checkpoint_every == 0 or loop.step == target:
                save_checkpoint()
            if main and tcfg.export_every and loop.step % tcfg.export_every == 0 and loop.step < tcfg.steps:
                task.export(run_dir / "exports" / f"{CKPT_PREFIX}{loop.step:07d}", _export_state(accelerator, model,
                                                                                               module))
            if loop.step >= target:
                break
        else:
            loop.epoch += 1
            loop.batch_in_epoch = 0
            continue
        # break out of the for-loop: step target reached mid-epoch; the position is recorded in the checkpoint
        if loop.step >= target:
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    del loader  # persistent loader workers end here
    exported: list = []
    if loop.step >= tcfg.steps:
        state = _export_state(accelerator, model, module)
        if main:
            exported = list(task.export(run_dir, state) or [])
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return RunResult(run_dir, loop.step, resumed_from, exported, last, is_main=main)


def _export_state(accelerator, model, module) -> dict:
    """Trainable weights for export; under FSDP the full state dict is gathered first (then filtered)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        full = accelerator.get_state_dict(model)
        return {k: v.detach().cpu().contiguous() for k, v in full.items() if k in names}
    return trainable_state(module)
