"""The on-disk layout of rendered clips, shared by render, augment, caption and manifests:

    <root>/<hdri_id>/<clip_id>/frame_0000.exr ... + clip.json

``clip.json`` is published last; a clip is complete only when it parses and every frame it lists is present with
the recorded size. Names starting with "." or "_" at the top level are not HDRIs (scratch, manifests, run logs).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import sys
import time

from hdr.storage import Store

CLIP_JSON = "clip.json"
CLIP_SCHEMA = "hdr-toolkit/clip/1"
RUNS_DIR = "_runs"


def frame_name(index: int) -> str:
    return f"frame_{index:04d}.exr"


def clip_rel(hdri_id: str, clip_id: str) -> str:
    return f"{hdri_id}/{clip_id}"


def list_files(store: Store, rel: str) -> dict[str, int]:
    """name -> size of the files directly inside ``rel`` (one listing call, also on object stores)."""
    try:
        entries = store.fs.ls(store.path(rel), detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
            for e in entries if e.get("type") != "directory"}


def clip_state(store: Store, hdri_id: str, clip_id: str, fingerprint: dict | None = None) -> tuple[str, str]:
    """("complete" | "missing" | "partial" | "conflict", detail).

    "partial": frames without a valid clip.json, or clip.json whose frames are missing or of another size (a crash or a
    tampered folder; the clip is redone). "conflict": complete, but rendered with other settings than ``fingerprint``.
    """
    rel = clip_rel(hdri_id, clip_id)
    files = list_files(store, rel)
    if not files:
        return "missing", "nothing rendered yet"
    if CLIP_JSON not in files:
        n = sum(1 for f in files if f.startswith("frame_"))
        return "partial", f"{n} frame files but no {CLIP_JSON}"
    try:
        meta = json.loads(store.read_bytes(f"{rel}/{CLIP_JSON}"))
        frames = meta["frames"]
    except (ValueError, KeyError, OSError) as e:
        return "partial", f"unreadable {CLIP_JSON}: {e}"
    for fr in frames:
        size = files.get(fr["file"])
        if size is None:
            return "partial", f"{fr['file']} is missing"
        if size != fr["bytes"]:
            return "partial", f"{fr['file']} has {size} bytes, clip.json says {fr['bytes']}"
    if fingerprint is not None:
        old = meta.get("settings", {})
        diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
        if diff:
            text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            return "conflict", f"rendered with other settings ({text})"
    return "complete", f"{len(frames)} frames"


def finished_clips(store: Store) -> set[tuple[str, str]]:
    """(hdri_id, clip_id) of every published clip.json (one listing; cheap on object stores)."""
    out = set()
    for rel in store.glob(f"*/*/{CLIP_JSON}"):
        hdri_id, clip_id, _ = rel.split("/")
        if not hdri_id.startswith((".", "_")):
            out.add((hdri_id, clip_id))
    return out


def write_run_record(store: Store, stage: str, started: float, argv: list | None, **fields) -> dict:
    """Write ``<root>/_runs/<stage>-<UTC time>-<pid>.json``: the command line, when it started, how long it took, and
    the stage's ``fields`` (settings, counts, failures). Returns the record."""
    record = {"command": sys.argv if argv is None else ["python", "-m", f"{stage}.run", *map(str, argv)],
              "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
              "seconds": time.time() - started, **fields}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    store.write_json(f"{RUNS_DIR}/{stage}-{stamp}-{os.getpid()}.json", record)
    return record
