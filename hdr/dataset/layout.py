"""Every path and file name of a dataset, and the rules for telling a finished item from a partial one.

    <root>/<hdri_id>/<clip_id>/frame_0000.exr ...            HDR frames (render)
    <root>/<hdri_id>/<clip_id>/clip.json                     the clip record, published last (render)
    <root>/<hdri_id>/<clip_id>/ldr/<aug_id>/frame_0000.png   8-bit LDR frames (augment)
    <root>/<hdri_id>/<clip_id>/ldr/<aug_id>/over_0000.png    exposure masks, also under_0000.png (augment)
    <root>/<hdri_id>/<clip_id>/ldr/<aug_id>/aug.json         the augmentation record, published last (augment)
    <root>/<hdri_id>/<clip_id>/caption.json                  the caption record (caption)
    <root>/manifests/v0001.parquet + v0001.json              manifest versions, the record last (manifests)
    <root>/_runs/<stage>-<time>-<pid>.json                   one record per stage run

Top-level names starting with "." or "_" (scratch, run records) and the manifests folder are not HDRIs
(:func:`is_hdri_name`). A manifest is input, never trusted: the path-safety rules are here too. The spec of every
file and field is docs/dataset.md.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
import sys
import time

from hdr.storage import Store, UnsafePathError, check_rel

CLIP_JSON = "clip.json"
AUG_JSON = "aug.json"
CAPTION_JSON = "caption.json"
LDR_DIR = "ldr"
RUNS_DIR = "_runs"
MANIFEST_DIR = "manifests"
LDR_FRAME = "frame_%04d.png"
OVER_MASK = "over_%04d.png"
UNDER_MASK = "under_%04d.png"
PREVIEW = "preview.mp4"
FAILURES_FILE = "render_failures.json"  # <root>/render_failures.json: the failures of the latest render run
HDR_FRAME_GLOB = "frame_*.exr"  # the HDR frames of a clip folder (and of a prediction folder)
LDR_FRAME_GLOB = "frame_*.png"


def is_hdri_name(name: str) -> bool:
    """Whether a top-level folder of the root holds an HDRI's clips (not scratch, run records or manifests)."""
    return bool(name) and not name.startswith((".", "_")) and name != MANIFEST_DIR


def frame_name(index: int) -> str:
    """The HDR frame file of frame ``index`` (render's output, and every prediction folder)."""
    return f"frame_{index:04d}.exr"


def is_frame_name(name: str) -> bool:
    return name.startswith("frame_")


def clip_rel(hdri_id: str, clip_id: str) -> str:
    return f"{hdri_id}/{clip_id}"


def aug_rel(hdri_id: str, clip_id: str, aug_id: str) -> str:
    return f"{hdri_id}/{clip_id}/{LDR_DIR}/{aug_id}"


def aug_id(kind: str, preset: str, index: int) -> str:
    """"paper_00" for single-exposure LDR of preset paper, "alt3_01" for the second alt3 sequence."""
    return f"{preset if kind == 'single' else kind}_{index:02d}"



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
    tampered folder; the clip is redone). "conflict": complete, but rendered with other settings than ``fingerprint``
    (a setting recorded only when it is not its default, like the shutter, differs when either side has it).
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
        diff = {k: (old.get(k), fingerprint.get(k)) for k in {**old, **fingerprint} if old.get(k) != fingerprint.get(k)}
        if diff:
            text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            return "conflict", f"rendered with other settings ({text})"
    return "complete", f"{len(frames)} frames"


def finished_augs(store: Store, hdri_id: str, clip_id: str) -> list[str]:
    """aug_ids of the published augmentations (those with an aug.json) of one clip, sorted."""
    pattern = f"{aug_rel(hdri_id, clip_id, '*')}/{AUG_JSON}"
    return sorted(rel.split("/")[-2] for rel in store.glob(pattern))


def finished_clips(store: Store) -> set[tuple[str, str]]:
    """(hdri_id, clip_id) of every published clip.json (one listing; cheap on object stores)."""
    out = set()
    for rel in store.glob(f"*/*/{CLIP_JSON}"):
        hdri_id, clip_id, _ = rel.split("/")
        if is_hdri_name(hdri_id):
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


# manifest versions and path safety ---------------------------------------------------------------------------
_VERSION = re.compile(r"^v?(\d{1,6})$")
EXT = "parquet"


class ManifestError(ValueError):
    """A manifest or version that cannot be used (missing, incomplete, tampered, malformed); one-line message."""


def version_name(v: str | int) -> str:
    """"3", 3, "v3", "v0003", "v0003.parquet" -> "v0003"."""
    s = str(v).strip()
    s = s[: -len("." + EXT)] if s.endswith("." + EXT) else s
    s = s[: -len(".json")] if s.endswith(".json") else s
    m = _VERSION.match(s)
    if not m:
        raise ManifestError(f"{v!r}: not a version name (expected e.g. v3 or v0003)")
    return f"v{int(m.group(1)):04d}"


def version_files(version: str) -> tuple[str, str]:
    v = version_name(version)
    return f"{MANIFEST_DIR}/{v}.{EXT}", f"{MANIFEST_DIR}/{v}.json"


def list_versions(store: Store) -> list[str]:
    """Published versions (those with a record), oldest first."""
    out = []
    for rel in store.glob(f"{MANIFEST_DIR}/v*.json"):
        try:
            out.append(version_name(rel.rsplit("/", 1)[1]))
        except ManifestError:
            continue
    return sorted(set(out))


# path safety -----------------------------------------------------------------------------------------------------
_BAD = r"(^/)|(^[A-Za-z]:)|(://)|(\\)|(^$)|(^|/)\.\.?(/|$)|(//)|(/$)"


def check_paths(paths, what: str) -> None:
    """Reject (with one line naming the path) any absolute path, '..' or '.' component, drive letter or URL in a
    column of relative paths; vectorised (one regex pass over every path of a 5400-clip manifest)."""
    import pyarrow.compute as pc

    if len(paths) == 0:
        return
    bad = pc.match_substring_regex(paths, _BAD)
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        idx = pc.index(bad, True).as_py()
        p = paths[idx].as_py()
        try:
            check_rel("" if p is None else p)
        except UnsafePathError as e:
            raise UnsafePathError(f"{what}: {e}") from None
        raise UnsafePathError(f"{what}: {p!r}: not a safe path relative to the root")


def check_name(name: str, where: str) -> str:
    """A plain file name (no '/') as listed in clip.json / aug.json."""
    if not isinstance(name, str) or "/" in name or "\\" in name:
        raise UnsafePathError(f"{where}: {name!r}: file names there must be plain names inside the folder")
    check_rel(name)
    return name


def real_root(store: Store) -> str | None:
    return os.path.realpath(store.path()) if store.is_local else None


def check_inside(store: Store, rel: str, root_real: str | None = None) -> str:
    """The filesystem path of ``rel``; on a local root, refuse anything (a symlinked file or folder on the way)
    that resolves outside the root."""
    path = store.path(check_rel(rel))
    if store.is_local:
        root_real = root_real or real_root(store)
        resolved = os.path.realpath(path)
        if not (resolved == root_real or resolved.startswith(root_real.rstrip(os.sep) + os.sep)):
            raise UnsafePathError(f"{rel}: resolves to {resolved}, outside the dataset root {root_real} "
                                  "(symlinks must stay inside the root)")
    return path
