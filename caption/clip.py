"""Caption a batch of clips on disk and write ``<root>/<hdri_id>/<clip_id>/caption.json`` (the function a Ray task
runs; :func:`caption_dataset` runs it in-process over a whole dataset).

Per clip: sample K frames, Reinhard-tonemap them, read the LDR augmentation's masks, ask the backend (batched), parse
and validate the reply, re-ask the failed ones with a stricter prompt, and if a clip still has no usable reply after
``attempts`` tries, write the statistics descriptions instead and record why in ``fallback``: every clip that can be
read ends with a valid caption.json.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass

from caption import stats
from caption.backends import Backend, BackendSpec, Request, _model_id, get_backend
from caption.frames import REINHARD_KEY, ClipFrames, ClipInputError, choose_aug, load_clip_frames, vlm_images
from caption.parse import CaptionFormatError, parse_reply, render_caption
from caption.prompt import PROMPT_VERSION, build_messages, prompt_hash, retry_text, user_text
from hdr.dataset import layout
from hdr.dataset.layout import CAPTION_JSON
from hdr.dataset.records import CaptionMeta, RecordError
from hdr.storage import Store


@dataclass(frozen=True)
class CaptionSettings:
    frames: int = 4  # K frames sampled uniformly per clip
    mask_mode: str = "contour"  # contour | separate | none (see caption.frames.vlm_images)
    aug: str | None = None  # aug id whose masks are shown; None: the first single-exposure one; "none": no aug
    min_pixels: int = 64 * 64  # per image, at the VLM's input
    max_pixels: int = 448 * 448
    attempts: int = 3  # tries per clip (the first prompt + stricter retries) before the stats fallback
    key: float = REINHARD_KEY


@dataclass(frozen=True)
class CaptionTask:
    root: str
    clips: tuple  # ((hdri_id, clip_id), ...)
    backend: BackendSpec
    settings: CaptionSettings = CaptionSettings()
    overwrite: bool = False  # redo clips captioned with another model / prompt
    redo_fallbacks: bool = False  # redo clips whose caption.json records a fallback


def settings_hash(backend_name: str, s: CaptionSettings) -> str:
    """The ``prompt_hash`` of caption.json: the prompt (VLM backends) or the statistics method (stats)."""
    tonemap = {"operator": "reinhard", "key": s.key}
    if backend_name == "stats":
        spec = {"stats": stats.STATS_VERSION, "frames": s.frames, "tonemap": tonemap}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return prompt_hash(s.mask_mode, s.frames, tonemap, s.min_pixels, s.max_pixels)


def caption_state(store: Store, hdri_id: str, clip_id: str, spec: BackendSpec, s: CaptionSettings,
                  redo_fallbacks: bool = False) -> tuple[str, str]:
    """("missing" | "done" | "conflict", detail) of a clip's caption.json against the requested backend, model,
    prompt hash and source augmentation. The model revision is compared only when one was asked for."""
    crel = layout.clip_rel(hdri_id, clip_id)
    rel = f"{crel}/{CAPTION_JSON}"
    if not store.exists(rel):
        return "missing", "no caption.json"
    try:
        old = CaptionMeta.read(store, rel).to_json()
        old_model = old["model"]
    except (RecordError, OSError) as e:
        return "missing", f"unreadable caption.json ({e}); redone"
    want_model = "stats" if spec.name == "stats" else _model_id(spec.model or "")
    diffs = []
    if old.get("backend") != spec.name:
        diffs.append(f"backend {old.get('backend')!r} -> {spec.name!r}")
    if old_model.get("id") != want_model:
        diffs.append(f"model {old_model.get('id')!r} -> {want_model!r}")
    if spec.revision and spec.name != "stats" and old_model.get("revision") != spec.revision:
        diffs.append(f"revision {old_model.get('revision')!r} -> {spec.revision!r}")
    if old.get("prompt_hash") != settings_hash(spec.name, s):
        diffs.append(f"prompt_hash {old.get('prompt_hash')!r} -> {settings_hash(spec.name, s)!r}")
    try:
        aug_id, _ = choose_aug(store, crel, s.aug)
    except ClipInputError:
        aug_id = s.aug
    if (old.get("source") or {}).get("aug_id") != aug_id:
        diffs.append(f"source aug {(old.get('source') or {}).get('aug_id')!r} -> {aug_id!r}")
    if diffs:
        return "conflict", "captioned with other settings (" + ", ".join(diffs) + ")"
    if redo_fallbacks and old.get("fallback"):
        return "missing", f"fallback recorded ({old['fallback']}); redone"
    return "done", "up to date"


def _request(clip: ClipFrames, backend: Backend, s: CaptionSettings) -> Request:
    over, under = stats.region_summary(clip.over), stats.region_summary(clip.under)
    text = user_text(len(clip.indices), clip.indices, clip.program, s.mask_mode, stats.region_hint(over),
                     stats.region_hint(under))
    if not backend.reads_images:
        return Request(clip, None, {"text": text, "history": []})
    images = vlm_images(clip, s.mask_mode, s.min_pixels, s.max_pixels, backend.patch_factor)
    return Request(clip, build_messages(images, text), {"text": text, "images": images, "history": []})


def _record(clip: ClipFrames, backend: Backend, s: CaptionSettings, fields: dict, raw: str, attempts: int,
            fallback: str | None, errors: list[str], seconds: float) -> dict:
    return {
        "schema": CaptionMeta.schema_id(),
        "hdri_id": clip.hdri_id,
        "clip_id": clip.clip_id,
        "caption": render_caption(fields["overexposed"], fields["underexposed"]),
        "overexposed": fields["overexposed"],
        "underexposed": fields["underexposed"],
        "scene": fields.get("scene"),
        "backend": backend.name,
        "model": backend.model_info(),
        "prompt_hash": settings_hash(backend.name, s),
        "frame_indices": list(clip.indices),
        "source": {"aug_id": clip.aug_id},
        "generation": {
            **backend.settings(),
            "prompt_version": PROMPT_VERSION if backend.reads_images else None,
            "frames": s.frames,
            "mask_mode": s.mask_mode if backend.reads_images else None,
            "min_pixels": s.min_pixels,
            "max_pixels": s.max_pixels,
            "max_attempts": s.attempts,
            "tonemap": clip.tonemap,
            "mask_source": clip.mask_source,
            "errors": errors,  # why each rejected reply was rejected, in order
        },
        "raw_text": raw,
        "attempts": attempts,
        "fallback": fallback,
        "seconds": round(seconds, 4),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def caption_clips(task: CaptionTask) -> dict[str, str]:
    """Caption the clips of ``task``; returns {"hdri/clip": "written" | "skipped" | "conflict: ..." | "failed: ..."}.
    Clips that are up to date are skipped without loading the model."""
    store = Store(task.root)
    s = task.settings
    out: dict[str, str] = {}
    todo = []
    for hdri_id, clip_id in task.clips:
        key = f"{hdri_id}/{clip_id}"
        state, detail = caption_state(store, hdri_id, clip_id, task.backend, s, task.redo_fallbacks)
        if state == "done":
            out[key] = "skipped"
        elif state == "conflict" and not task.overwrite:
            out[key] = f"conflict: {detail}; use --overwrite to redo"
        else:
            todo.append((hdri_id, clip_id))
    if not todo:
        return out
    backend = get_backend(task.backend)
    requests, load_seconds = [], {}
    for hdri_id, clip_id in todo:
        t0 = time.perf_counter()
        try:
            clip = load_clip_frames(store, hdri_id, clip_id, s.frames, s.aug, s.key)
            requests.append(_request(clip, backend, s))
        except (ClipInputError, OSError, ValueError) as e:
            out[f"{hdri_id}/{clip_id}"] = f"failed: {' '.join(str(e).split())}"
            continue
        load_seconds[clip.key] = time.perf_counter() - t0
    parsed: dict[str, dict] = {}
    raw: dict[str, str] = {}
    errors: dict[str, list[str]] = {r.clip.key: [] for r in requests}
    attempts: dict[str, int] = {r.clip.key: 0 for r in requests}
    gen_seconds = {r.clip.key: 0.0 for r in requests}
    pending = list(requests)
    for _ in range(max(1, s.attempts)):
        if not pending:
            break
        t0 = time.perf_counter()
        replies = backend.generate(pending)
        per = (time.perf_counter() - t0) / max(1, len(pending))
        still = []
        for req, reply in zip(pending, replies):
            key = req.clip.key
            attempts[key] += 1
            gen_seconds[key] += per
            raw[key] = reply
            try:
                parsed[key] = parse_reply(reply)
            except CaptionFormatError as e:
                errors[key].append(str(e))
                if req.messages is not None:
                    req.extra["history"].append((reply, retry_text(str(e))))
                    req.messages = build_messages(req.extra["images"], req.extra["text"], req.extra["history"])
                still.append(req)
        pending = still
    for req in requests:
        clip, key = req.clip, req.clip.key
        fallback = None
        fields = parsed.get(key)
        if fields is None:
            fields = stats.describe(clip.display, clip.over, clip.under, clip.hdr)
            fallback = (f"{backend.name} gave no usable reply in {attempts[key]} attempt(s) (last: "
                        f"{errors[key][-1] if errors[key] else 'none'}); descriptions from image statistics "
                        f"({stats.STATS_VERSION})")
        rec = _record(clip, backend, s, fields, raw.get(key, ""), attempts[key], fallback, errors[key],
                      load_seconds[key] + gen_seconds[key])
        rel = f"{layout.clip_rel(clip.hdri_id, clip.clip_id)}/{CAPTION_JSON}"
        CaptionMeta.from_json(rec, rel).write(store, rel)
        out[key] = "written"
    return out


def caption_dataset(root: str, backend: BackendSpec | None = None, settings: CaptionSettings | None = None, *,
                    clips=None, overwrite: bool = False, redo_fallbacks: bool = False, chunk: int = 0,
                    progress=None) -> dict[str, str]:
    """Caption every finished clip of a dataset in this process (``clips`` to restrict; default backend: stats).
    ``progress(n)`` is called after each chunk of ``chunk`` clips (default: the backend's batch size)."""
    backend = backend or BackendSpec(name="stats", model=None)
    settings = settings or CaptionSettings()
    clips = sorted(clips if clips is not None else layout.finished_clips(Store(root)))
    chunk = chunk or max(1, backend.batch_size)
    out: dict[str, str] = {}
    for i in range(0, len(clips), chunk):
        part = tuple(clips[i : i + chunk])
        out.update(caption_clips(CaptionTask(str(root), part, backend, settings, overwrite, redo_fallbacks)))
        if progress:
            progress(len(part))
    return out


def check_record(rec: dict) -> None:
    """Raise ValueError (a :class:`hdr.dataset.records.RecordError`) unless ``rec`` follows the caption.json
    contract."""
    CaptionMeta.from_json(rec, CAPTION_JSON)
