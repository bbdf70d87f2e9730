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
from dataclasses import InitVar, dataclass, field
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
from hdr.dataset.rows import ARROW_SCHEMA, FILE_HASH, SCHEMA_ID, SPLITS, source_columns
CLIP_HASH_DEF = ("sha256 over '<path>\\t<bytes>\\t<sha256>\\n' of the clip's files sorted by path (paths relative "
                 "to root)")
ROOT_HASH_DEF = "sha256 over '<key>\\t<split>\\t<clip_hash>\\n' of all clips sorted by key"
SPLIT_METHOD = ("HDRI level: HDRIs ordered by derive_seed(seed, 'split', hdri_id); test takes HDRIs in that order "
                "until it holds >= its target in clips, then val, the rest is train; at least one HDRI stays in "
                "train; HDRIs already assigned in the parent version keep their split when the split settings are "
                "unchanged")
STRATIFY = (None, "category")
STRATIFY_METHOD = ("stratified by category: the HDRIs of each primary category (manifest column hdri_category; maps "
                   "without one form one more group) are split by the rule above on their own, each group's targets "
                   "being the split's fraction of all clips times the group's clips, so every category of >= 2 HDRIs "
                   "has a test HDRI (if test > 0) and at least one of its HDRIs stays in train")


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
                  parent: dict[str, str] | None = None,
                  categories: dict[str, str | None] | None = None) -> tuple[dict[str, str], list[str]]:
    """HDRI -> split (see SPLIT_METHOD); returns (assignment, warnings). With ``categories`` (HDRI -> category or
    None) each category is split on its own with the same fractions (STRATIFY_METHOD). Linear in the HDRIs (after
    the sort)."""
    total = sum(clips_per_hdri.values())
    targets = {"test": _target(test, total), "val": _target(val, total)}
    order = sorted(clips_per_hdri, key=lambda h: (derive_seed(seed, "split", h), h))
    parent = {h: s for h, s in (parent or {}).items() if h in clips_per_hdri}
    out = dict(parent)
    groups: dict[str | None, list[str]] = {}
    for h in order:  # one group without categories; else one per category (None: the maps that have none)
        groups.setdefault(categories.get(h) if categories is not None else None, []).append(h)
    have = Counter()
    for group in groups.values():
        size = sum(clips_per_hdri[h] for h in group)
        share = size / total if categories is not None and total else 1.0
        _fill(group, clips_per_hdri, {k: t * share for k, t in targets.items()}, out)
    for h, sp in out.items():
        have[sp] += clips_per_hdri[h]
    warnings = []
    for sp in ("test", "val"):
        if targets[sp] and have[sp] < targets[sp]:
            warnings.append(f"{sp} split holds {have[sp]} clips, fewer than the requested {targets[sp]} "
                            f"(the dataset has {total} clips in {len(clips_per_hdri)} HDRIs; one HDRI stays in train)")
    if categories is not None:
        for sp in ("test", "val"):
            short = sorted(c or "(none)" for c, g in groups.items() if targets[sp] and not any(out[h] == sp for h in g))
            if short:
                warnings.append(f"stratify: no {sp} HDRI in {len(short)} of {len(groups)} categories, too few HDRIs "
                                f"({', '.join(short[:5])}{', ...' if len(short) > 5 else ''})")
    return out, warnings


def _fill(group: list[str], sizes: dict[str, int], targets: dict[str, float], out: dict[str, str]) -> None:
    """Assign the HDRIs of ``group`` (in split order) that ``out`` lacks: test until it holds >= its target in clips,
    then val, then train; the group's last new HDRI goes to train if the group has no train HDRI yet."""
    have = Counter()
    has_train = False
    for h in group:
        if h in out:
            have[out[h]] += sizes[h]
            has_train |= out[h] == "train"
    new = [h for h in group if h not in out]
    for i, h in enumerate(new):
        keep_one = not has_train and i == len(new) - 1
        sp = next((k for k in ("test", "val") if have[k] < targets[k] and not keep_one), "train")
        out[h] = sp
        have[sp] += sizes[h]
        has_train |= sp == "train"


# scanning --------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class FileEntry:
    """One file of a scan, kept compact (slots; paper scale: ~1.8 M of them on the driver). ``etag`` (the object's
    ETag from the listing) and ``recorded`` (the writer's record: clip.json frames, aug.json file_records) are only
    checked here (:func:`hdr.storage.recorded_matches`): what is kept is the recorded hash when it still matches."""

    path: str
    bytes: int
    mtime_ns: int
    sha256: str | None = None
    etag: InitVar[str | None] = None
    recorded: InitVar[dict | None] = None
    recorded_sha256: str | None = field(default=None, init=False)

    def __post_init__(self, etag: str | None, recorded: dict | None) -> None:
        if recorded_matches(recorded, self.bytes, self.mtime_ns, etag):
            self.recorded_sha256 = recorded["sha256"]


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


def scan_clip(store: Store, hdri_id: str, clip_id: str, root_real: str | None) -> ClipScan | str:
    """One clip folder -> ClipScan, or a reason string when the clip is not complete. Unsafe paths raise."""
    crel = layout.clip_rel(hdri_id, clip_id)
    check_inside(store, crel, root_real)
    listing = _listdir(store, crel)  # listed once: the clip's state and its files' sizes both come from it
    sizes = {name: e[0] for name, e in listing.items() if not e[2]}
    try:  # a clip.json is input too: its frame names are checked (ClipMeta) before anything else looks at them
        if CLIP_JSON not in sizes:
            raise FileNotFoundError(f"{crel}/{CLIP_JSON}")
        meta = ClipMeta.read(store, f"{crel}/{CLIP_JSON}")  # read once (clip_state takes it as parsed)
    except UnsafePathError:
        raise
    except (FileNotFoundError, RecordError) as e:
        state, detail = layout.clip_state(store, hdri_id, clip_id, files=sizes)
        return f"{crel}: {state if state != 'complete' else 'invalid'} ({detail if state != 'complete' else e})"
    state, detail = layout.clip_state(store, hdri_id, clip_id, files=sizes,
                                      meta={"frames": meta.frames, "settings": meta.settings})
    if state != "complete":
        return f"{crel}: {state} ({detail})"
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
        **source_columns(meta.hdri.get("source")),
    }
    return ClipScan(row=row, files=files, aug_settings=aug_settings, caption_settings=cap_settings,
                    problems=problems)


# hashing ---------------------------------------------------------------------------------------------------------
def hash_file(store: Store, rel: str, size: int | None = None) -> str:
    """SHA-256 of a file of the dataset; ``size`` (from a listing) lets an object store read it with one GET."""
    return store.sha256(rel, size=size)


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
        # the listed size lets an object store read the file with one GET; a local read has no use for it
        e.sha256 = hash_file(store, e.path) if store.is_local else hash_file(store, e.path, e.bytes)
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
def _share_settings(scan: ClipScan, shared: dict) -> None:
    """Make equal settings of different clips one object (thousands of clips carry the same preset, caption model
    and render settings: one parsed copy each would cost a few KB per clip on the driver)."""
    def one(obj):
        return shared.setdefault(json.dumps(obj, sort_keys=True), obj) if obj is not None else None

    scan.aug_settings = [one(a) for a in scan.aug_settings]
    scan.caption_settings = one(scan.caption_settings)
    if isinstance(scan.row.get("render_settings"), str):
        text = scan.row["render_settings"]
        scan.row["render_settings"] = shared.setdefault(("render_settings", text), text)


_FILE_FIELDS = tuple(f.name for f in ARROW_SCHEMA.field("files").type.value_type)  # path, bytes, mtime_ns, sha256
@dataclass
class BuildResult:
    version: str | None  # None: nothing new
    record: dict
    message: str


class ParentFiles:
    """The file entries of the parent version, looked up one clip at a time: the Arrow columns are kept, not a Python
    object per file (a dict per file costs ~0.5 KB, ~1 GB for the paper's 1.8 M files)."""

    def __init__(self, table: pa.Table | None = None):
        self._row: dict[str, int] = {}
        if table is None or table.num_rows == 0:
            return
        self._row = {k: i for i, k in enumerate(table["key"].to_pylist())}
        files = table["files"].combine_chunks()
        self._offsets = files.offsets.to_numpy()
        values = files.values
        self._cols = [values.field(n) for n in ("path", "bytes", "mtime_ns", "sha256")]

    def clip(self, key: str) -> dict[str, tuple[int, int, str]]:
        """path -> (bytes, mtime_ns, sha256) of the files of clip ``key`` in the parent ({} if it had none)."""
        i = self._row.get(key)
        if i is None:
            return {}
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        path, size, mtime, sha = (c[a:b].to_pylist() for c in self._cols)
        return dict(zip(path, zip(size, mtime, sha)))


def _parent_files(store: Store, parent: str | None) -> tuple[ParentFiles, dict, dict]:
    """(:class:`ParentFiles`, hdri -> split, parent record) of the parent version."""
    if parent is None:
        return ParentFiles(), {}, {}
    prel, jrel = version_files(parent)
    record = store.read_json(jrel)
    from hdr.dataset.manifest import open_manifest

    t = open_manifest(store.url, parent).files_table()
    splits = {k.split("/", 1)[0]: sp for k, sp in zip(t["key"].to_pylist(), t["split"].to_pylist())}
    return ParentFiles(t), splits, record


def build(root: str, *, seed: int = 0, test="50", val="0", rehash: bool = False, threads: int | None = None,
          progress: bool = True, command: list | None = None, allow_empty: bool = False,
          stratify: str | None = None) -> BuildResult:
    store = Store(root)
    root_real = real_root(store)
    clips = sorted(layout.clip_tree(store))  # every clip folder (with or without clip.json): one listing per HDRI
    if not clips and not allow_empty:
        raise ManifestError(f"{root}: no rendered clips (*/*/{CLIP_JSON}) to record")
    versions = list_versions(store)
    parent = versions[-1] if versions else None
    known, parent_splits, parent_record = _parent_files(store, parent)
    if stratify not in STRATIFY:
        raise ManifestError(f"stratify {stratify!r}: expected one of {', '.join(map(str, STRATIFY))}")
    split_settings = {"seed": int(seed), "test": str(test), "val": str(val),
                      **({"stratify": stratify} if stratify else {})}  # absent when off: older parents still match
    parse_size(test), parse_size(val)
    inherit = parent_record.get("split", {}).get("settings") == split_settings

    scans, skipped, problems, shared = [], [], [], {}
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as ex:
        it = ex.map(lambda hc: scan_clip(store, hc[0], hc[1], root_real), clips)
        for res in tqdm(it, total=len(clips), unit="clip", desc="scan", file=sys.stderr, disable=not progress,
                        dynamic_ncols=True):
            if isinstance(res, str):
                skipped.append(res)
            else:
                _share_settings(res, shared)
                scans.append(res)
                problems.extend(res.problems)

    entries = [f for s in scans for f in s.files]
    reused = recorded = 0
    for sc in scans:  # a hash is trusted from the parent version (size + mtime) or from the writer's record
        parent_clip = {} if rehash else known.clip(sc.row["key"])
        for f in sc.files:
            k = parent_clip.get(f.path)
            if rehash:
                pass
            elif k and k[0] == f.bytes and k[1] == f.mtime_ns and f.mtime_ns:
                f.sha256 = k[2]
                reused += 1
            elif f.recorded_sha256:
                f.sha256 = f.recorded_sha256
                recorded += 1
            f.recorded_sha256 = None  # used: only the hash stays
    hashed = sum(1 for f in entries if f.sha256 is None)
    hash_files(store, entries, threads, progress=progress)
    n_files, total_bytes, ext_bytes = len(entries), sum(f.bytes for f in entries), Counter()
    for f in entries:
        ext_bytes[posixpath.splitext(f.path)[1].lstrip(".") or "other"] += f.bytes
    del entries

    per_hdri = Counter(s.row["hdri_id"] for s in scans)
    category = {}  # HDRI -> primary category (every clip of a map carries the same record)
    for sc in scans:
        category.setdefault(sc.row["hdri_id"], sc.row.get("hdri_category"))
    assignment, split_warnings = assign_splits(dict(per_hdri), seed, test, val,
                                               parent_splits if inherit else None,
                                               categories=category if stratify else None)
    if stratify and not any(category.values()):
        split_warnings.append("stratify category: no clip has an hdri_category (no _sources.json records when they "
                              "were rendered): one group")
    rows = []
    for s in scans:
        r = s.row
        r["split"] = assignment[r["hdri_id"]]
        r["clip_hash"] = clip_hash(s.files)
        r["n_files"] = len(s.files)
        r["bytes"] = sum(f.bytes for f in s.files)
        rows.append(r)
    rows.sort(key=lambda r: r["key"])
    rhash = root_hash(rows)

    split_counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    hdri_counts = {s: sum(1 for h, v in assignment.items() if v == s) for s in SPLITS}
    by_category = {}  # stratified builds: HDRIs and clips per split of every category
    if stratify:
        for h, sp in sorted(assignment.items()):
            c = by_category.setdefault(category.get(h) or "(none)", {"hdris": dict.fromkeys(SPLITS, 0),
                                                                   "clips": dict.fromkeys(SPLITS, 0)})
            c["hdris"][sp] += 1
            c["clips"][sp] += per_hdri[h]
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
        "split": {"settings": split_settings, "method": SPLIT_METHOD + ("; " + STRATIFY_METHOD if stratify else ""),
                  **({"categories": dict(sorted(by_category.items()))} if stratify else {}),
                  "inherited_from": parent if inherit else None, "clips": split_counts, "hdris": hdri_counts,
                  "test_hdris": sorted(h for h, v in assignment.items() if v == "test"),
                  "val_hdris": sorted(h for h, v in assignment.items() if v == "val"),
                  "warnings": split_warnings},
        "counts": {"hdris": len(per_hdri), "clips": len(rows), "frames": sum(r["n_frames"] for r in rows),
                   "augmentations": sum(len(r["augs"]) for r in rows),
                   "ldr_frames": sum(len(a["frames"]) for r in rows for a in r["augs"]),
                   "captions": sum(1 for r in rows if r["caption"] is not None), "files": n_files,
                   "skipped_clips": len(skipped)},
        "bytes": {"total": total_bytes, **dict(sorted(ext_bytes.items()))},
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
    for sc in scans:  # the files column: a tuple per file (not a dict), the scan's entries freed as it goes
        sc.row["files"] = [tuple(getattr(f, n) for n in _FILE_FIELDS) for f in sorted(sc.files, key=lambda f: f.path)]
        sc.files = []
    _publish(store, version, rows, record)
    msg = (f"wrote {version}: {len(rows)} clips from {len(per_hdri)} HDRIs "
           f"(train {split_counts['train']}, val {split_counts['val']}, test {split_counts['test']}), "
           f"{n_files} files, {record['bytes']['total'] / 1e6:.1f} MB, root hash {rhash[:16]}...")
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
