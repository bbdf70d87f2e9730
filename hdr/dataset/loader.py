"""A torch ``Dataset`` over a manifest split: aligned windows of HDR frames, LDR frames, exposure masks and captions.

    ds = ClipWindowDataset(open_manifest(path), "train", window=33, ldr="augment", preset="paper", kind="single")
    item = ds[0]   # {"hdr": (T,3,H,W) linear radiance, "ldr": (T,3,H,W) in [0,1], "over"/"under": (T,1,H,W), ...}

``ldr="stored"`` reads the PNG frames and masks of one augmentation recorded in the manifest (chosen per epoch when a
clip has several of the requested kind and preset); ``ldr="augment"`` degrades the HDR window on the fly with
:func:`hdr.dataset.ldr.make_ldr` (the function augment.run writes with) and parameters drawn from
``derive_seed(seed, key, "loader-augment", epoch)``. Window starts come from ``derive_seed(seed, key, index, epoch)``;
call :meth:`ClipWindowDataset.set_epoch` every epoch. The HDR, LDR and mask frames of an item are the same frame
indices ``start .. start + window - 1`` of the clip. torch is imported here only.
"""
from __future__ import annotations


import numpy as np
import torch

from hdr.dataset.ldr import check_kind, make_ldr
from hdr.dataset.manifest import Manifest
from hdr.dataset.rows import AugRecord, ClipRecord
from hdr.degrade.presets import PRESETS, sample_params
from hdr.io import decode_ldr, read_image
from hdr.seeding import derive_seed


class ClipWindowDataset(torch.utils.data.Dataset):
    def __init__(self, m: Manifest, split: str | None, window: int = 33, ldr: str = "stored", preset: str = "paper",
                 seed: int = 0, kind: str = "single", epoch: int = 0, aug_kind: str | None = None):
        kind = aug_kind or kind  # aug_kind: the old name of the argument
        if ldr not in ("stored", "augment"):
            raise ValueError(f"ldr={ldr!r}: expected 'stored' or 'augment'")
        check_kind(kind)
        if ldr == "augment" and preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
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
            p = sample_params(PRESETS[self.preset], derive_seed(self.seed, c.key, "loader-augment", self.epoch))
            made = make_ldr(hdr, self.kind, PRESETS[self.preset], p, start=t0)
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
