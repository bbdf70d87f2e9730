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
from concurrent.futures import ThreadPoolExecutor

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
    """name -> size of the files directly inside ``rel`` (one listing call, also on object stores; symlinks are
    followed for the size, a dangling one has size 0)."""
    if store.is_local:
        out = {}
        try:
            with os.scandir(store.path(rel)) as it:
                for e in it:
                    if not e.is_dir():
                        try:
                            out[e.name] = e.stat().st_size
                        except FileNotFoundError:
                            out[e.name] = 0
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return out
    try:
        entries = store.fs.ls(store.path(rel), detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
            for e in entries if e.get("type") != "directory"}


def hdri_names(store: Store) -> list[str]:
    """The HDRI folders at the top of the root (:func:`is_hdri_name`), sorted; one listing."""
    try:
        entries = store.fs.ls(store.path(), detail=True)
    except FileNotFoundError:
        return []
    names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")
    return sorted(n for n in names if is_hdri_name(n))


def clip_files(store: Store, hdri_id: str, clip_ids=None) -> dict[str, dict[str, int]]:
    """clip_id -> {name: bytes} of the files directly inside each clip folder of one HDRI (``clip_ids``: only those,
    where the store can list them one by one). An object store is listed ONCE, recursively, for the whole HDRI prefix
    (:meth:`hdr.storage.Store.list_tree`: one paginated LIST), not once per folder; a local root once per clip
    folder. Folders starting with "." are skipped."""
    if store.is_local:
        if clip_ids is None:
            try:
                with os.scandir(store.path(hdri_id)) as it:
                    clip_ids = [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                return {}
        out = {c: list_files(store, clip_rel(hdri_id, c)) for c in clip_ids}
        return {c: files for c, files in out.items() if files or os.path.isdir(store.path(clip_rel(hdri_id, c)))}
    out: dict[str, dict[str, int]] = {}
    for rel, info in store.list_tree(hdri_id).items():
        parts = rel.split("/")
        folder = out.setdefault(parts[0], {}) if len(parts) > 1 else None
        if len(parts) == 2:
            folder[parts[1]] = int(info.get("size") or 0)
    return out


def clip_state(store: Store, hdri_id: str, clip_id: str, fingerprint: dict | None = None,
               files: dict[str, int] | None = None, meta: dict | None = None) -> tuple[str, str]:
    """("complete" | "missing" | "partial" | "conflict", detail).

    "partial": frames without a valid clip.json, or clip.json whose frames are missing or of another size (a crash or a
    tampered folder; the clip is redone). "conflict": complete, but rendered with other settings than ``fingerprint``
    (a setting recorded only when it is not its default, like the shutter, differs when either side has it).
    ``files``: the folder's listing (name -> bytes, :func:`clip_files`) when the caller has it, else it is listed here;
    ``meta``: clip.json as parsed (its ``frames`` and ``settings``) when the caller read it, else it is read here.
    """
    rel = clip_rel(hdri_id, clip_id)
    if files is None:
        files = list_files(store, rel)
    if not files:
        return "missing", "nothing rendered yet"
    if CLIP_JSON not in files:
        n = sum(1 for f in files if f.startswith("frame_"))
        return "partial", f"{n} frame files but no {CLIP_JSON}"
    try:
        if meta is None:
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


def hdri_clip_states(store: Store, hdri_id: str, clip_ids, fingerprint: dict | None = None) -> dict[str, tuple]:
    """clip_id -> :func:`clip_state` for several clips of one HDRI from one listing (:func:`clip_files`); clip.json
    is read only for the clips that have one. What resume planning calls once per HDRI."""
    clip_ids = list(clip_ids)
    listing = clip_files(store, hdri_id, clip_ids)
    return {c: clip_state(store, hdri_id, c, fingerprint, files=listing.get(c, {})) for c in clip_ids}


def finished_augs(store: Store, hdri_id: str, clip_id: str) -> list[str]:
    """aug_ids of the published augmentations (those with an aug.json) of one clip, sorted."""
    pattern = f"{aug_rel(hdri_id, clip_id, '*')}/{AUG_JSON}"
    return sorted(rel.split("/")[-2] for rel in store.glob(pattern))


def clip_tree(store: Store, threads: int = 16) -> dict[tuple[str, str], dict[str, int]]:
    """(hdri_id, clip_id) -> {name: bytes} of every clip folder of the root: one listing of the root, then
    :func:`clip_files` per HDRI (on an object store one recursive LIST per HDRI prefix), ``threads`` at a time."""
    hdris = hdri_names(store)
    out = {}
    with ThreadPoolExecutor(max(1, min(threads, len(hdris)))) as pool:
        for h, clips in zip(hdris, pool.map(lambda h: clip_files(store, h), hdris)):
            out.update(((h, c), files) for c, files in clips.items())
    return out


def finished_clips(store: Store) -> set[tuple[str, str]]:
    """(hdri_id, clip_id) of every published clip.json (:func:`clip_tree`: one listing per HDRI, not per folder)."""
    return {k for k, files in clip_tree(store).items() if CLIP_JSON in files}


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
