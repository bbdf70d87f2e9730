"""A torch ``Dataset`` over a manifest split: aligned windows of HDR frames, LDR frames, exposure masks and captions.

    ds = ClipWindowDataset(open_manifest(path), "train", window=33, ldr="augment", preset="paper", kind="single")
    item = ds[0]   # {"hdr": (T,3,H,W) linear radiance, "ldr": (T,3,H,W) in [0,1], "over"/"under": (T,1,H,W), ...}

``ldr="stored"`` reads the PNG frames and masks of one augmentation recorded in the manifest (chosen per epoch when a
clip has several of the requested kind and preset); ``ldr="augment"`` degrades the HDR window on the fly with
:func:`hdr.dataset.ldr.make_ldr` (the function augment.run writes with) and parameters drawn from
``derive_seed(seed, key, "loader-augment", epoch)``. Window starts come from ``derive_seed(seed, key, index, epoch)``;
call :meth:`ClipWindowDataset.set_epoch` every epoch. The HDR, LDR and mask frames of an item are the same frame
indices ``start .. start + window - 1`` of the clip. torch is imported here only.

Loader workers: :func:`worker_plan` decides how many DataLoader worker processes make the items (``auto``: a few
when the preset has steps that exist only on the CPU, :func:`hdr.degrade.steps.cpu_only_steps`, else none) and
words the line a trainer logs; :func:`seed_worker` is the workers' ``worker_init_fn``. An item depends only on (seed,
clip key, index, epoch), never on the worker that made it nor on the number of workers: nothing here draws from a
global RNG.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from hdr.dataset.ldr import check_kind, make_ldr
from hdr.dataset.manifest import Manifest
from hdr.dataset.rows import AugRecord, ClipRecord
from hdr.degrade.presets import PRESETS, Preset, sample_params
from hdr.degrade.steps import cpu_only_steps
from hdr.io import decode_ldr, read_image
from hdr.seeding import derive_seed


class ClipWindowDataset(torch.utils.data.Dataset):
    """Aligned windows of a manifest split. ``preset``: a name in :data:`hdr.degrade.presets.PRESETS` or a
    :class:`~hdr.degrade.presets.Preset` (e.g. from ``load_preset``; ``ldr="stored"`` matches its name)."""

    def __init__(self, m: Manifest, split: str | None, window: int = 33, ldr: str = "stored",
                 preset: str | Preset = "paper", seed: int = 0, kind: str = "single", epoch: int = 0,
                 aug_kind: str | None = None):
        kind = aug_kind or kind  # aug_kind: the old name of the argument
        if ldr not in ("stored", "augment"):
            raise ValueError(f"ldr={ldr!r}: expected 'stored' or 'augment'")
        check_kind(kind)
        if isinstance(preset, Preset):
            self._preset, preset = preset, preset.name
        elif ldr == "augment" and preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
        else:
            self._preset = PRESETS.get(preset)
        self.m, self.split, self.window, self.ldr = m, split, int(window), ldr
        self.preset, self.seed, self.kind, self.epoch = preset, int(seed), kind, int(epoch)
        self.clips: list[ClipRecord] = m.clips(split)
        if not self.clips:
            raise ValueError(f"{m.path}: no clips in split {split!r}")
        short = [c for c in self.clips if c.n_frames < self.window]
        if short:
            raise ValueError(f"window {self.window} is longer than {len(short)} clip(s) of {m.version} "
                             f"(e.g. {short[0].key} has {short[0].n_frames} frames)")
        if ldr == "stored":
            self._augs = [c.aug(kind, preset) for c in self.clips]
            missing = [c.key for c, a in zip(self.clips, self._augs) if not a]
            if missing:
                raise ValueError(f"{m.version}: {len(missing)} clip(s) of split {split!r} have no stored {kind!r} "
                                 f"augmentation with preset {preset!r} (e.g. {missing[0]}); run augment.run or use "
                                 "ldr='augment'")

    @property
    def aug_kind(self) -> str:  # the old name
        return self.kind

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def cpu_only_steps(self) -> list[str]:
        """The preset's steps that exist only on the CPU (tmo, bayer, jpeg, video) when the LDR is made on the fly;
        none for stored LDR."""
        return cpu_only_steps(self._preset.steps) if self.ldr == "augment" else []

    def __len__(self) -> int:
        return len(self.clips)

    # reading ---------------------------------------------------------------------------------------------------
    def _exr(self, rel: str) -> np.ndarray:
        if self.m.store.is_local:
            return read_image(self.m.local_file(rel), name=rel)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp, self.m.store.local_copy(rel, tmp) as p:
            return read_image(p, name=rel)

    def _png(self, rel: str) -> np.ndarray:
        return decode_ldr(self.m.read_bytes(rel), rel)

    def window_start(self, index: int) -> int:
        c = self.clips[index]
        return derive_seed(self.seed, c.key, index, self.epoch) % (c.n_frames - self.window + 1)

    def pick_aug(self, index: int) -> AugRecord:
        augs = self._augs[index]
        return augs[derive_seed(self.seed, self.clips[index].key, "aug", self.epoch) % len(augs)] if len(augs) > 1 \
            else augs[0]

    def __getitem__(self, index: int) -> dict:
        c = self.clips[index]
        t0 = self.window_start(index)
        idx = range(t0, t0 + self.window)
        hdr = np.stack([self._exr(c.frames[t]) for t in idx])  # (T, H, W, 3)
        if self.ldr == "stored":
            a = self.pick_aug(index)
            ldr8 = np.stack([self._png(a.frames[t]) for t in idx])
            over = np.stack([self._png(a.over[t]) for t in idx]).astype(np.float32) / 255.0
            under = np.stack([self._png(a.under[t]) for t in idx]).astype(np.float32) / 255.0
            alt = a.params.get("alternating")
            exposures = [float(alt["exposure"][t]) for t in idx] if alt else [1.0] * self.window
            params = {**a.params, "aug_id": a.aug_id, "source": "stored"}
        else:
            # a content-dependent exposure (hdrcnn, singlehdr) is computed on the window: it is all the loader reads
            p = sample_params(self._preset, derive_seed(self.seed, c.key, "loader-augment", self.epoch), frames=hdr)
            made = make_ldr(hdr, self.kind, self._preset, p, start=t0)
            ldr8, exposures, over, under = made.frames, made.exposures, made.over, made.under
            params = {**p.to_json(), "source": "augment"}
            if made.alternating:
                params["alternating"] = made.alternating
        return {
            "hdr": torch.from_numpy(np.ascontiguousarray(hdr.transpose(0, 3, 1, 2))),
            "ldr": torch.from_numpy(np.ascontiguousarray(ldr8.transpose(0, 3, 1, 2))).float() / 255.0,
            "over": torch.from_numpy(np.ascontiguousarray(over, dtype=np.float32))[:, None],
            "under": torch.from_numpy(np.ascontiguousarray(under, dtype=np.float32))[:, None],
            "caption": c.caption or "", "overexposed": c.overexposed or "", "underexposed": c.underexposed or "",
            "key": c.key, "start": int(t0), "exposures": torch.tensor(exposures, dtype=torch.float32),
            "params": params,
        }


def collate_windows(batch: list[dict]) -> dict:
    """Stack the tensors of a batch; strings, ints and the params dicts stay Python lists (``params`` may hold
    values torch's default collate cannot batch)."""
    out = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# ----------------------------------------------------------------------------------------------------- loader workers
AUTO_WORKERS_MAX = 4  # num_workers "auto" with CPU-only steps: at most this many per training process


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerPlan:
    """How many DataLoader workers make a dataset's items, and why (:func:`worker_plan`)."""

    num_workers: int
    requested: object  # "auto" or the number the config gave
    cpu_steps: tuple = ()  # the CPU-only steps of the on-the-fly preset
    preset: str | None = None
    device: str = "cpu"

    def message(self) -> str | None:
        """The one line a trainer logs at start when the preset has CPU-only steps."""
        if not self.cpu_steps:
            return None
        n = self.num_workers
        where = f"in {n} loader worker{'s' if n != 1 else ''}" if n else "in the training process (num_workers 0)"
        return f"augment preset {self.preset}: steps {', '.join(self.cpu_steps)} run on the CPU {where}"

    def warning(self) -> str | None:
        """One line when the user forced 0 workers with CPU-only steps and a GPU trains."""
        if not self.cpu_steps or self.num_workers or self.device.startswith("cpu"):
            return None
        steps = ", ".join("video (the codec)" if s == "video" else s for s in self.cpu_steps)
        return (f"train.num_workers is 0 with augment preset {self.preset} on {self.device}: its CPU-only steps "
                f"{steps} will run in the training process and stall the GPU every batch; use train.num_workers: "
                "auto (or N > 0)")

    def record(self) -> dict:
        """What the run record (RUN/env.json ``loader``) keeps."""
        return {"num_workers": self.num_workers, "requested": self.requested, "cpu_only_steps": list(self.cpu_steps),
                "preset": self.preset, "persistent_workers": self.num_workers > 0, "cpus": available_cpus()}


def worker_plan(dataset, requested: int | str = "auto", device: str = "cpu", batches: int | None = None,
                processes: int = 1) -> WorkerPlan:
    """The number of loader workers for ``dataset``. ``requested``: a number (used as given) or ``"auto"``: with
    CPU-only steps (``dataset.cpu_only_steps()``) ``min(4, CPUs / processes - 1, batches)``, at least 1, so the
    codec runs beside the training step; without them 0 (the items are cheap, the rest runs on ``device``).
    ``processes``: training processes on this node (they share its CPUs); ``batches``: batches per epoch."""
    steps = getattr(dataset, "cpu_only_steps", None)
    steps = tuple(steps()) if callable(steps) else ()
    if requested == "auto":
        n = 0
        if steps:
            n = min(AUTO_WORKERS_MAX, available_cpus() // max(int(processes), 1) - 1)
            n = max(1, min(n, batches) if batches else n)
    else:
        n = int(requested)
        if n < 0:
            raise ValueError(f"num_workers={requested!r}: expected 'auto' or an integer >= 0")
    preset = getattr(dataset, "preset", None) if steps else None
    return WorkerPlan(n, requested, steps, preset, str(device))


def seed_worker(seed: int, worker_id: int) -> None:
    """``worker_init_fn`` (bind ``seed`` with functools.partial): the worker's global RNGs (random, numpy, torch)
    from ``derive_seed(seed, "loader-worker", worker_id)``. The dataset draws nothing from them (its draws come from
    ``derive_seed(dataset seed, clip key, ...)``); this keeps a stray global draw of a task reproducible."""
    s = derive_seed(seed, "loader-worker", worker_id)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
