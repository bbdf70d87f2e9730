"""Augment one rendered clip on disk: N LDR versions (PNG frames + masks + aug.json) under the clip folder.

    <root>/<hdri_id>/<clip_id>/ldr/<aug_id>/frame_0000.png ... over_0000.png ... under_0000.png ... aug.json

``aug.json`` is published last and marks the augmentation complete; it holds the preset, the seed and every sampled
parameter, so the LDR frames can be re-made bit for bit. This is the plain function a Ray task runs.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

import hdr
from augment.alternating import GAMMA, alternating_evs, alternating_ldr
from augment.alternating import TRANSFER as ALT_TRANSFER
from augment.degrade import PRESETS, degrade, sample_params
from augment.masks import exposure_masks
from hdr.io import read_image, write_png
from hdr.seeding import SEED_DERIVATION, derive_seed
from hdr.storage import Store
from render import layout

AUG_JSON = "aug.json"
AUG_SCHEMA = "hdr-toolkit/aug/1"


@dataclass(frozen=True)
class AugTask:
    root: str
    hdri_id: str
    clip_id: str
    preset: str
    per_clip: int
    seed: int
    alternating: int = 0  # 0: single-exposure LDR; 2 or 3: alternating exposures
    overwrite: bool = False
    preview: bool = False  # also write preview.mp4 (H.264 via PyAV)
    overrides: tuple = ()  # ((field, value), ...) applied to the preset (Preset.with_overrides)


def aug_id(task: AugTask, index: int) -> str:
    kind = f"alt{task.alternating}" if task.alternating else task.preset
    return f"{kind}_{index:02d}"


def _write_png(scratch, store: Store, rel: str, img: np.ndarray) -> int:
    tmp = scratch / rel.replace("/", "_")
    write_png(tmp, img)
    return store.publish(tmp, rel)


def write_preview(path, frames: np.ndarray, fps: int = 24) -> None:
    """H.264 (yuv420p, so even sizes: an odd last row/column is dropped) MP4 of uint8 RGB frames, via PyAV."""
    import av

    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def augment_clip(task: AugTask) -> dict:
    """Write the missing augmentations of one clip; returns {aug_id: "written" | "skipped"}."""
    store = Store(task.root)
    crel = layout.clip_rel(task.hdri_id, task.clip_id)
    preset = PRESETS[task.preset].with_overrides(**dict(task.overrides))
    settings = json.loads(json.dumps(asdict(preset)))
    todo, out = [], {}
    for i in range(task.per_clip):
        rel = f"{crel}/ldr/{aug_id(task, i)}"
        seed = derive_seed(task.seed, task.hdri_id, task.clip_id, "augment", aug_id(task, i))
        if store.exists(f"{rel}/{AUG_JSON}") and not task.overwrite:
            old = store.read_json(f"{rel}/{AUG_JSON}")
            if (old.get("seed"), old.get("preset"), old.get("preset_settings")) == (seed, task.preset, settings):
                out[aug_id(task, i)] = "skipped"
                continue
            raise FileExistsError(f"{rel} exists with other settings (seed, preset or preset overrides); use "
                                  "--overwrite or another --seed")
        todo.append((i, rel, seed))
    if not todo:
        return out
    clip = store.read_json(f"{crel}/{layout.CLIP_JSON}")
    scratch = store.scratch_dir(prefix=f"aug-{task.hdri_id}-")
    try:
        frames = []
        for fr in clip["frames"]:
            with store.local_copy(f"{crel}/{fr['file']}", scratch) as p:
                frames.append(read_image(p))
        hdr_frames = np.stack(frames)
        del frames
        for i, rel, seed in todo:
            t0 = time.perf_counter()
            params = sample_params(preset, seed)
            store.remove(rel)
            extra = {}
            if task.alternating:
                evs = alternating_evs(len(hdr_frames), task.alternating)
                ldr, exposures = alternating_ldr(hdr_frames, evs, params)
                extra = {"alternating": {"n_exposures": task.alternating, "ev": evs, "exposure": exposures,
                                         "gamma": GAMMA, "network_input": f"c(I_k, I_k^{GAMMA} / e_k), HDR-V-Diff eq. 1"}}
            else:
                ldr, _ = degrade(hdr_frames, params)
            transfer = ALT_TRANSFER if task.alternating else "srgb"
            mask_mode = "paper" if task.alternating else preset.mask_mode
            over, under = exposure_masks(ldr, mask_mode, transfer)
            files = []
            for t in range(len(ldr)):
                _write_png(scratch, store, f"{rel}/frame_{t:04d}.png", ldr[t])
                _write_png(scratch, store, f"{rel}/over_{t:04d}.png", np.round(over[t] * 255).astype(np.uint8))
                _write_png(scratch, store, f"{rel}/under_{t:04d}.png", np.round(under[t] * 255).astype(np.uint8))
                files.append(f"frame_{t:04d}.png")
            if task.preview:
                write_preview(scratch / "preview.mp4", ldr)
                store.publish(scratch / "preview.mp4", f"{rel}/preview.mp4")
            record = {
                "schema": AUG_SCHEMA,
                "hdri_id": task.hdri_id,
                "clip_id": task.clip_id,
                "aug_id": aug_id(task, i),
                "preset": task.preset,
                "preset_settings": settings,
                "seed": seed,
                "dataset_seed": task.seed,
                "seed_derivation": SEED_DERIVATION.replace("key1", "hdri_id").replace("key2", "clip_id")
                + " with keys (hdri_id, clip_id, 'augment', aug_id)",
                "params": params.to_json(),
                **extra,
                "frames": files,
                "preview": "preview.mp4" if task.preview else None,
                "masks": {"over": "over_%04d.png", "under": "under_%04d.png", "mode": mask_mode,
                          "linearisation": transfer,
                          "encoding": "uint8 = round(255 * mask), mask in [0, 1] after the EMA"
                          + (" (binarised at 0.2: 0 or 255)" if mask_mode == "diffhdr-code" else "")},
                "format": "8-bit sRGB PNG" if not task.alternating else "8-bit gamma-2.2 PNG",
                "source_clip": {"settings": clip.get("settings"), "created": clip.get("created")},
                "toolkit_version": hdr.__version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": time.perf_counter() - t0,
            }
            store.write_json(f"{rel}/{AUG_JSON}", record)  # last: marks it complete
            out[aug_id(task, i)] = "written"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
