"""Augment one rendered clip on disk: N LDR versions (PNG frames + masks + aug.json) under the clip folder.

    <root>/<hdri_id>/<clip_id>/ldr/<aug_id>/frame_0000.png ... over_0000.png ... under_0000.png ... aug.json

``aug.json`` is published last and marks the augmentation complete; it holds the preset, the seed and every sampled
parameter, so the LDR frames can be re-made bit for bit. This is the plain function a Ray task runs.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass

import numpy as np

import hdr
from hdr.dataset import layout
from hdr.dataset.ldr import kind_of, make_ldr
from hdr.dataset.records import AugMeta, ClipMeta
from hdr.degrade.presets import PRESETS, apply_overrides, preset_from_json, sample_params
from hdr.io import read_image, write_png
from hdr.seeding import SEED_DERIVATION, derive_seed
from hdr.storage import Store


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
    overrides: tuple = ()  # ((field, value), ...) applied to the preset (hdr.degrade.presets.apply_overrides)
    preset_settings: dict | None = None  # the resolved preset (a YAML preset travels to the workers this way)


def aug_id(task: AugTask, index: int) -> str:
    return layout.aug_id(kind_of(task.alternating), task.preset, index)


def _write_png(scratch, store: Store, rel: str, img: np.ndarray) -> dict:
    """Publish one PNG; returns its file record (bytes, sha256, mtime/etag) for aug.json."""
    tmp = scratch / rel.replace("/", "_")
    write_png(tmp, img)
    return store.publish_recorded(tmp, rel)


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
    preset = preset_from_json(task.preset_settings) if task.preset_settings \
        else apply_overrides(PRESETS[task.preset], task.overrides)
    settings = preset.to_json()
    todo, out = [], {}
    for i in range(task.per_clip):
        rel = layout.aug_rel(task.hdri_id, task.clip_id, aug_id(task, i))
        seed = derive_seed(task.seed, task.hdri_id, task.clip_id, "augment", aug_id(task, i))
        if store.exists(f"{rel}/{layout.AUG_JSON}") and not task.overwrite:
            old = AugMeta.read(store, f"{rel}/{layout.AUG_JSON}")
            if (old.seed, old.preset, old.preset_settings) == (seed, task.preset, settings):
                out[aug_id(task, i)] = "skipped"
                continue
            raise FileExistsError(f"{rel} exists with other settings (seed, preset or preset overrides); use "
                                  "--overwrite or another --seed")
        todo.append((i, rel, seed))
    if not todo:
        return out
    crel = layout.clip_rel(task.hdri_id, task.clip_id)
    clip = ClipMeta.read(store, f"{crel}/{layout.CLIP_JSON}")
    kind = kind_of(task.alternating)
    scratch = store.scratch_dir(prefix=f"aug-{task.hdri_id}-")
    try:
        frames = []
        for name in clip.files:
            with store.local_copy(f"{crel}/{name}", scratch) as p:
                frames.append(read_image(p))
        hdr_frames = np.stack(frames)
        del frames
        for i, rel, seed in todo:
            t0 = time.perf_counter()
            params = sample_params(preset, seed, frames=hdr_frames)
            store.remove(rel)
            made = make_ldr(hdr_frames, kind, preset, params)
            ldr = made.frames
            files, records = [], {}
            for t in range(len(ldr)):
                for name, img in ((layout.LDR_FRAME % t, ldr[t]),
                                  (layout.OVER_MASK % t, np.round(made.over[t] * 255).astype(np.uint8)),
                                  (layout.UNDER_MASK % t, np.round(made.under[t] * 255).astype(np.uint8))):
                    records[name] = _write_png(scratch, store, f"{rel}/{name}", img)
                files.append(layout.LDR_FRAME % t)
            if task.preview:
                write_preview(scratch / layout.PREVIEW, ldr)
                records[layout.PREVIEW] = store.publish_recorded(scratch / layout.PREVIEW, f"{rel}/{layout.PREVIEW}")
            alternating = None
            if made.alternating:
                alternating = {**made.alternating,
                               "network_input": f"c(I_k, I_k^{made.alternating['gamma']} / e_k), HDR-V-Diff eq. 1"}
            record = AugMeta(
                hdri_id=task.hdri_id,
                clip_id=task.clip_id,
                aug_id=aug_id(task, i),
                preset=task.preset,
                preset_settings=settings,
                seed=seed,
                dataset_seed=task.seed,
                seed_derivation=SEED_DERIVATION.replace("key1", "hdri_id").replace("key2", "clip_id")
                + " with keys (hdri_id, clip_id, 'augment', aug_id)",
                params=params.to_json(),
                alternating=alternating,
                frames=files,
                preview=layout.PREVIEW if task.preview else None,
                masks={"over": layout.OVER_MASK, "under": layout.UNDER_MASK, "mode": made.mask_mode,
                       "linearisation": made.transfer,
                       "encoding": "uint8 = round(255 * mask), mask in [0, 1] after the EMA"
                       + (" (binarised at 0.2: 0 or 255)" if made.mask_mode == "diffhdr-code" else "")},
                format=made.format,
                source_clip={"settings": clip.settings, "created": clip.created},
                step_results=made.step_results or None,
                file_records=records,
                toolkit_version=hdr.__version__,
                created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                seconds=time.perf_counter() - t0,
            )
            record.write(store, f"{rel}/{layout.AUG_JSON}")  # last: marks it complete
            out[aug_id(task, i)] = "written"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
