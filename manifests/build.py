"""``build``: scan rendered clips, augmentations and captions, hash every file, assign HDRI-level splits and publish
a new immutable version (``manifests/vNNNN.parquet`` then ``manifests/vNNNN.json``).

Hashes: SHA-256 of every file (hashlib/OpenSSL; with SHA-NI it out-runs BLAKE2b here, see README). Unless
``rehash=True``, a hash is not recomputed when it is known: a file whose size and mtime equal those recorded in the
parent version keeps that hash (like git's index); otherwise a file whose writer recorded it (clip.json ``frames``,
aug.json ``file_records``: bytes, sha256, and the mtime or the object's ETag, :func:`hdr.storage.recorded_matches`)
takes the writer's hash; the JSON records themselves are hashed from the bytes the scan reads. So a build reads no
frame that its writer recorded. ``verify`` always re-hashes.

    clip_hash = sha256 over "<path>\\t<bytes>\\t<sha256>\\n" of the clip's files, sorted by path
    root_hash = sha256 over "<key>\\t<split>\\t<clip_hash>\\n" of all clips, sorted by key
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import hdr
from hdr.seeding import derive_seed
from hdr.storage import Store, UnsafePathError, etag_of, recorded_matches, sha256_file
from hdr.dataset import layout
from hdr.dataset.layout import (AUG_JSON, CAPTION_JSON, CLIP_JSON, LDR_DIR, MANIFEST_DIR, ManifestError,
                                check_inside, list_versions, real_root, version_files, version_name)
from hdr.dataset.records import AugMeta, CaptionMeta, ClipMeta, RecordError
from hdr.dataset.rows import ARROW_SCHEMA, FILE_HASH, SCHEMA_ID, SPLITS
CLIP_HASH_DEF = ("sha256 over '<path>\\t<bytes>\\t<sha256>\\n' of the clip's files sorted by path (paths relative "
                 "to root)")
ROOT_HASH_DEF = "sha256 over '<key>\\t<split>\\t<clip_hash>\\n' of all clips sorted by key"
SPLIT_METHOD = ("HDRI level: HDRIs ordered by derive_seed(seed, 'split', hdri_id); test takes HDRIs in that order "
                "until it holds >= its target in clips, then val, the rest is train; at least one HDRI stays in "
                "train; HDRIs already assigned in the parent version keep their split when the split settings are "
                "unchanged")


# sizes of held-out sets -------------------------------------------------------------------------------------------
def parse_size(spec) -> tuple[str, float]:
    """"50" -> ("clips", 50); "0.1" -> ("ratio", 0.1); "0" -> ("clips", 0)."""
    s = str(spec).strip()
    try:
        if any(c in s for c in ".eE"):
            v = float(s)
            if not 0.0 <= v < 1.0:
                raise ValueError
            return ("ratio", v)
        v = int(s)
        if v < 0:
            raise ValueError
        return ("clips", float(v))
    except ValueError:
        raise ManifestError(f"split size {spec!r}: give a clip count (e.g. 50) or a ratio in [0, 1) (e.g. 0.1)") \
            from None


def _target(spec, total: int) -> int:
    kind, v = parse_size(spec)
    return int(v) if kind == "clips" else int(round(v * total))


def assign_splits(clips_per_hdri: dict[str, int], seed: int, test="50", val="0",
                  parent: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """HDRI -> split (see SPLIT_METHOD); returns (assignment, warnings)."""
    total = sum(clips_per_hdri.values())
    targets = {"test": _target(test, total), "val": _target(val, total)}
    order = sorted(clips_per_hdri, key=lambda h: (derive_seed(seed, "split", h), h))
    parent = {h: s for h, s in (parent or {}).items() if h in clips_per_hdri}
    out = dict(parent)
    have = Counter()
    for h, s in out.items():
        have[s] += clips_per_hdri[h]
    warnings = []
    new = [h for h in order if h not in out]
    for i, h in enumerate(new):
        remaining_new = len(new) - i
        no_train_yet = not any(s == "train" for s in out.values())
        for s in ("test", "val"):
            if have[s] < targets[s] and not (no_train_yet and remaining_new == 1):
                out[h] = s
                break
        else:
            out[h] = "train"
        have[out[h]] += clips_per_hdri[h]
    for s in ("test", "val"):
        if targets[s] and have[s] < targets[s]:
            warnings.append(f"{s} split holds {have[s]} clips, fewer than the requested {targets[s]} "
                            f"(the dataset has {total} clips in {len(clips_per_hdri)} HDRIs; one HDRI stays in train)")
    return out, warnings


# scanning --------------------------------------------------------------------------------------------------------
@dataclass
class FileEntry:
    path: str
    bytes: int
    mtime_ns: int
    sha256: str | None = None
    etag: str | None = None  # the object store's ETag from the listing, where it has one
    recorded: dict | None = None  # the writer's record of the file (clip.json frames, aug.json file_records)


@dataclass
class ClipScan:
    row: dict
    files: list = field(default_factory=list)
    aug_settings: list = field(default_factory=list)
    caption_settings: dict | None = None
    problems: list = field(default_factory=list)


def _listdir(store: Store, rel: str) -> dict[str, tuple[int, int, bool, str | None]]:
    """name -> (bytes, mtime_ns, is_dir, etag) of the entries directly inside ``rel`` (symlinks are followed for the
    size but must stay inside the root, which the callers check; etag: None on filesystems)."""
    if store.is_local:
        out = {}
        try:
            with os.scandir(store.path(rel)) as it:
                for e in it:
                    st = e.stat(follow_symlinks=True) if e.is_symlink() else e.stat(follow_symlinks=False)
                    out[e.name] = (st.st_size, st.st_mtime_ns, stat.S_ISDIR(st.st_mode), None)
        except FileNotFoundError:
            return {}
        return out
    try:
        entries = store.fs.ls(store.path(rel), detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for e in entries:
        name = posixpath.basename(e["name"].rstrip("/"))
        m = e.get("mtime") or e.get("LastModified") or e.get("updated") or e.get("last_modified")
        if hasattr(m, "timestamp"):
            m = m.timestamp()
        try:
            mns = int(float(m) * 1e9) if m is not None else 0
        except (TypeError, ValueError):
            mns = 0
        out[name] = (int(e.get("size") or 0), mns, e.get("type") == "directory", etag_of(e))
    return out


def _clip_folders(store: Store) -> set[tuple[str, str]]:
    """(hdri_id, clip_id) of every folder two levels down (also those without a clip.json, which scan_clip then
    reports as incomplete); top-level names starting with '.' or '_' and the manifests folder are not HDRIs."""
    try:
        hits = store.fs.glob(store.path() + "/*/*", detail=True)
    except FileNotFoundError:
        return set()
    out = set()
    for path, info in hits.items():
        if info.get("type") != "directory":
            continue
        parts = store.rel(path).split("/")
        if len(parts) == 2 and layout.is_hdri_name(parts[0]) and not parts[1].startswith("."):
            out.add((parts[0], parts[1]))
    return out


def scan_clip(store: Store, hdri_id: str, clip_id: str, root_real: str | None) -> ClipScan | str:
    """One clip folder -> ClipScan, or a reason string when the clip is not complete. Unsafe paths raise."""
    crel = layout.clip_rel(hdri_id, clip_id)
    check_inside(store, crel, root_real)
    try:  # a clip.json is input too: its frame names are checked (ClipMeta) before anything else looks at them
        meta = ClipMeta.read(store, f"{crel}/{CLIP_JSON}")
    except UnsafePathError:
        raise
    except (FileNotFoundError, RecordError) as e:
        state, detail = layout.clip_state(store, hdri_id, clip_id)
        return f"{crel}: {state if state != 'complete' else 'invalid'} ({detail if state != 'complete' else e})"
    state, detail = layout.clip_state(store, hdri_id, clip_id)
    if state != "complete":
        return f"{crel}: {state} ({detail})"
    listing = _listdir(store, crel)
    files: list[FileEntry] = []

    def add(rel: str, entry, recorded: dict | None = None) -> None:
        if root_real is not None:
            check_inside(store, rel, root_real)
        files.append(FileEntry(rel, entry[0], entry[1], etag=entry[3], recorded=recorded))

    frames = [f"{crel}/{name}" for name in meta.files]
    for fr in meta.frames:
        add(f"{crel}/{fr['file']}", listing[fr["file"]], fr)
    add(f"{crel}/{CLIP_JSON}", listing[CLIP_JSON], meta.file_digest)

    problems, augs, aug_settings = [], [], []
    ldr = _listdir(store, f"{crel}/{LDR_DIR}") if LDR_DIR in listing else {}
    for aid in sorted(n for n, (_, _, is_dir, _) in ldr.items() if is_dir and not n.startswith(".")):
        arel = layout.aug_rel(hdri_id, clip_id, aid)
        check_inside(store, arel, root_real)
        alist = _listdir(store, arel)
        if AUG_JSON not in alist:
            problems.append(f"{arel}: no {AUG_JSON} (incomplete augmentation, left out)")
            continue
        try:
            aug = AugMeta.read(store, f"{arel}/{AUG_JSON}")
        except UnsafePathError:
            raise
        except RecordError as e:
            problems.append(f"{e}; augmentation left out")
            continue
        missing = [n for n in aug.files if n not in alist]
        if missing:
            problems.append(f"{arel}: {len(missing)} files listed in {AUG_JSON} are missing (first: {missing[0]}); "
                            "augmentation left out")
            continue
        records = {**(aug.file_records or {}), AUG_JSON: aug.file_digest}
        for n in aug.files + [AUG_JSON]:
            add(f"{arel}/{n}", alist[n], records.get(n))
        params = dict(aug.params)
        if aug.alternating:
            params["alternating"] = aug.alternating
        augs.append({"aug_id": aid, "rel": arel, "preset": aug.preset, "kind": aug.kind,
                     "frames": [f"{arel}/{n}" for n in aug.frames], "over": [f"{arel}/{n}" for n in aug.over],
                     "under": [f"{arel}/{n}" for n in aug.under], "params": json.dumps(params, sort_keys=True)})
        aug_settings.append({"preset": aug.preset, "kind": aug.kind, "dataset_seed": aug.dataset_seed,
                             "preset_settings": aug.preset_settings, "format": aug.format,
                             "masks": {k: v for k, v in aug.masks.items() if k in ("mode", "encoding")}})

    caption = {"caption": None, "overexposed": None, "underexposed": None, "backend": None, "model": None}
    cap_settings = None
    if CAPTION_JSON in listing:
        crel_cap = f"{crel}/{CAPTION_JSON}"
        try:
            cap = CaptionMeta.read(store, crel_cap)
            caption = {"caption": cap.caption, "overexposed": cap.overexposed, "underexposed": cap.underexposed,
                       "backend": cap.backend, "model": cap.model["id"]}
            cap_settings = {"backend": cap.backend, "model": cap.model, "prompt_hash": cap.prompt_hash}
            add(crel_cap, listing[CAPTION_JSON], cap.file_digest)
        except RecordError as e:
            problems.append(f"{e}; clip recorded without a caption")

    rad = meta.radiance
    width, height = meta.resolution
    row = {
        "key": f"{hdri_id}/{clip_id}", "hdri_id": hdri_id, "hdri_sha256": meta.hdri.get("sha256"),
        "clip_id": clip_id, "program": meta.program, "split": None, "n_frames": len(frames),
        "width": width, "height": height, "rel": crel, "frames": frames, "augs": augs,
        "caption": caption["caption"], "overexposed": caption["overexposed"],
        "underexposed": caption["underexposed"], "caption_backend": caption["backend"],
        "caption_model": caption["model"], "dr_stops": rad.get("dynamic_range_stops"),
        "radiance_max": rad.get("max"), "radiance_mean": rad.get("mean"), "radiance_p50": rad.get("p50"),
        "radiance_p99": rad.get("p99"), "frac_above_1": rad.get("frac_above_1"),
        "render_settings": json.dumps(meta.settings, sort_keys=True),
    }
    return ClipScan(row=row, files=files, aug_settings=aug_settings, caption_settings=cap_settings,
                    problems=problems)


# hashing ---------------------------------------------------------------------------------------------------------
def hash_file(store: Store, rel: str) -> str:
    return store.sha256(rel)


def hash_files(store: Store, entries: list[FileEntry], threads: int | None = None, desc: str = "hash",
               progress: bool = True) -> None:
    """Fill ``entry.sha256`` in place (hashlib releases the GIL, so threads give real parallelism)."""
    todo = [e for e in entries if e.sha256 is None]
    if not todo:
        return
    threads = threads or min(8, (os.cpu_count() or 1) * 2)
    bar = tqdm(total=sum(e.bytes for e in todo), unit="B", unit_scale=True, desc=desc, file=sys.stderr,
               disable=not progress, dynamic_ncols=True)

    def one(e: FileEntry):
        e.sha256 = hash_file(store, e.path)
        bar.update(e.bytes)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, todo))
    bar.close()


def clip_hash(files) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\t{f.bytes}\t{f.sha256}\n".encode())
    return h.hexdigest()


def root_hash(rows) -> str:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["key"]):
        h.update(f"{r['key']}\t{r['split']}\t{r['clip_hash']}\n".encode())
    return h.hexdigest()


# provenance --------------------------------------------------------------------------------------------------------
def toolkit_git() -> dict:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0
                else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _distinct(items) -> list[dict]:
    c = Counter(json.dumps(i, sort_keys=True) for i in items)
    return [{"settings": json.loads(k), "count": n} for k, n in sorted(c.items())]


# build -------------------------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    version: str | None  # None: nothing new
    record: dict
    message: str


def _parent_files(store: Store, parent: str | None) -> tuple[dict, dict, dict]:
    """(path -> (bytes, mtime_ns, sha256), hdri -> split, parent record) of the parent version."""
    if parent is None:
        return {}, {}, {}
    prel, jrel = version_files(parent)
    record = store.read_json(jrel)
    from hdr.dataset.manifest import open_manifest

    t = open_manifest(store.url, parent).files_table()
    t = t.append_column("hdri_id", pa.array([k.split("/")[0] for k in t["key"].to_pylist()], pa.string()))
    known, splits = {}, {}
    for h, s, files in zip(t["hdri_id"].to_pylist(), t["split"].to_pylist(), t["files"].to_pylist()):
        splits[h] = s
        for fe in files:
            known[fe["path"]] = (fe["bytes"], fe["mtime_ns"], fe["sha256"])
    return known, splits, record


def build(root: str, *, seed: int = 0, test="50", val="0", rehash: bool = False, threads: int | None = None,
          progress: bool = True, command: list | None = None, allow_empty: bool = False) -> BuildResult:
    store = Store(root)
    root_real = real_root(store)
    clips = sorted(layout.finished_clips(store) | _clip_folders(store))
    if not clips and not allow_empty:
        raise ManifestError(f"{root}: no rendered clips (*/*/{CLIP_JSON}) to record")
    versions = list_versions(store)
    parent = versions[-1] if versions else None
    known, parent_splits, parent_record = _parent_files(store, parent)
    split_settings = {"seed": int(seed), "test": str(test), "val": str(val)}
    parse_size(test), parse_size(val)
    inherit = parent_record.get("split", {}).get("settings") == split_settings

    scans, skipped, problems = [], [], []
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as ex:
        it = ex.map(lambda hc: scan_clip(store, hc[0], hc[1], root_real), clips)
        for res in tqdm(it, total=len(clips), unit="clip", desc="scan", file=sys.stderr, disable=not progress,
                        dynamic_ncols=True):
            if isinstance(res, str):
                skipped.append(res)
            else:
                scans.append(res)
                problems.extend(res.problems)

    entries = [f for s in scans for f in s.files]
    reused = recorded = 0
    if not rehash:  # a hash is trusted from the parent version (size + mtime) or from the writer's record
        for f in entries:
            k = known.get(f.path)
            if k and k[0] == f.bytes and k[1] == f.mtime_ns and f.mtime_ns:
                f.sha256 = k[2]
                reused += 1
            elif recorded_matches(f.recorded, f.bytes, f.mtime_ns, f.etag):
                f.sha256 = f.recorded["sha256"]
                recorded += 1
    hashed = sum(1 for f in entries if f.sha256 is None)
    hash_files(store, entries, threads, progress=progress)

    per_hdri = Counter(s.row["hdri_id"] for s in scans)
    assignment, split_warnings = assign_splits(dict(per_hdri), seed, test, val,
                                               parent_splits if inherit else None)
    rows = []
    for s in scans:
        r = s.row
        r["split"] = assignment[r["hdri_id"]]
        r["clip_hash"] = clip_hash(s.files)
        r["n_files"] = len(s.files)
        r["bytes"] = sum(f.bytes for f in s.files)
        r["files"] = [{"path": f.path, "bytes": f.bytes, "mtime_ns": f.mtime_ns, "sha256": f.sha256}
                      for f in sorted(s.files, key=lambda f: f.path)]
        rows.append(r)
    rows.sort(key=lambda r: r["key"])
    rhash = root_hash(rows)

    split_counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    hdri_counts = {s: sum(1 for h, v in assignment.items() if v == s) for s in SPLITS}
    ext_bytes = Counter()
    for f in entries:
        ext_bytes[posixpath.splitext(f.path)[1].lstrip(".") or "other"] += f.bytes
    record = {
        "schema": SCHEMA_ID,
        "version": None,
        "parent": parent,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "toolkit_version": hdr.__version__,
        "git": toolkit_git(),
        "command": command,
        "root": store.uri(),
        "manifest": None,
        "manifest_sha256": None,
        "format": "parquet (zstd), one row per clip; schema in manifests/records.py",
        "root_hash": rhash,
        "root_hash_definition": ROOT_HASH_DEF,
        "clip_hash_definition": CLIP_HASH_DEF,
        "file_hash": FILE_HASH,
        "hashing": {"hashed": hashed, "reused_from_parent": reused, "recorded_by_writers": recorded,
                    "rehash": bool(rehash)},
        "split": {"settings": split_settings, "method": SPLIT_METHOD,
                  "inherited_from": parent if inherit else None, "clips": split_counts, "hdris": hdri_counts,
                  "test_hdris": sorted(h for h, v in assignment.items() if v == "test"),
                  "val_hdris": sorted(h for h, v in assignment.items() if v == "val"),
                  "warnings": split_warnings},
        "counts": {"hdris": len(per_hdri), "clips": len(rows), "frames": sum(r["n_frames"] for r in rows),
                   "augmentations": sum(len(r["augs"]) for r in rows),
                   "ldr_frames": sum(len(a["frames"]) for r in rows for a in r["augs"]),
                   "captions": sum(1 for r in rows if r["caption"] is not None), "files": len(entries),
                   "skipped_clips": len(skipped)},
        "bytes": {"total": sum(f.bytes for f in entries), **dict(sorted(ext_bytes.items()))},
        "settings": {"render": _distinct(json.loads(r["render_settings"]) for r in rows),
                     "augment": _distinct(a for s in scans for a in s.aug_settings),
                     "caption": _distinct(s.caption_settings for s in scans if s.caption_settings)},
        "skipped": skipped,
        "problems": problems,
    }
    if parent is not None and parent_record.get("root_hash") == rhash:
        return BuildResult(None, parent_record,
                           f"no change since {parent} (root hash {rhash[:16]}...): no new version written")
    version = version_name(int(parent[1:]) + 1 if parent else 1)
    _publish(store, version, rows, record)
    msg = (f"wrote {version}: {len(rows)} clips from {len(per_hdri)} HDRIs "
           f"(train {split_counts['train']}, val {split_counts['val']}, test {split_counts['test']}), "
           f"{len(entries)} files, {record['bytes']['total'] / 1e6:.1f} MB, root hash {rhash[:16]}...")
    if skipped:
        msg += f"; {len(skipped)} incomplete clips left out"
    return BuildResult(version, record, msg)


def _publish(store: Store, version: str, rows: list[dict], record: dict) -> None:
    publish_table(store, version, pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), record)


def publish_table(store: Store, version: str, table: pa.Table, record: dict) -> None:
    """Write ``manifests/<version>.parquet`` (no-clobber, read-only) and then its record ``<version>.json``."""
    prel, jrel = version_files(version)
    if store.exists(prel) or store.exists(jrel):
        raise ManifestError(f"{store.uri(prel)} already exists: versions are never rewritten (another build running?)")
    table = table.replace_schema_metadata({b"hdr_toolkit_manifest": json.dumps(
        {"schema": SCHEMA_ID, "version": version, "root_hash": record["root_hash"]}).encode()})
    scratch = store.scratch_dir(prefix="manifest-")
    try:
        tmp = scratch / f"{version}.parquet"
        pq.write_table(table, tmp, compression="zstd")
        digest = sha256_file(tmp)
        if store.is_local:  # no-clobber publish: a hard link fails if the name exists
            dest = store.path(prel)
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise ManifestError(f"{dest} already exists: versions are never rewritten") from None
            os.chmod(dest, 0o444)
        else:
            store.publish(tmp, prel)
        record.update(version=version, manifest=posixpath.basename(prel), manifest_sha256=digest)
        store.write_json(jrel, record)  # last: the version exists from here on
        if store.is_local:
            os.chmod(store.path(jrel), 0o444)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["build", "assign_splits", "parse_size", "hash_file", "clip_hash", "root_hash", "MANIFEST_DIR"]
