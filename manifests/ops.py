"""``verify`` (re-hash, or sizes and mtimes with ``quick``) and ``diff`` (clips added, removed, changed, and why)."""
from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from hdr.dataset.layout import check_inside, real_root
from hdr.dataset.manifest import Manifest
from hdr.storage import Store, UnsafePathError
from manifests.build import hash_file


class Entry(NamedTuple):
    """One file of a manifest as verify checks it (a tuple: ~1.8 M of them at paper scale)."""

    path: str
    bytes: int
    mtime_ns: int
    sha256: str


def check_file(store: Store, e, quick: bool = False, root_real: str | None = None,
               listed: dict[str, int] | None = None) -> str | None:
    """One line if the file of manifest entry ``e`` (:class:`Entry` or a dict with path, bytes, mtime_ns, sha256) is
    missing or changed, else None. ``quick``: sizes and mtimes only. ``root_real``: the local root's real path
    (symlinks must stay inside). ``listed``: path -> size from a listing of the file's folder (object stores: then
    the file costs no HEAD, and one GET when it is hashed)."""
    e = e if isinstance(e, Entry) else Entry(e["path"], e["bytes"], e["mtime_ns"], e["sha256"])
    rel = e.path
    try:
        if store.is_local:
            path = check_inside(store, rel, root_real)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"{rel}: missing"
            size, mtime = st.st_size, st.st_mtime_ns
        elif listed is not None:
            if rel not in listed:
                return f"{rel}: missing"
            size, mtime = listed[rel], None
        else:
            if not store.exists(rel):
                return f"{rel}: missing"
            size, mtime = store.size(rel), None
        if size != e.bytes:
            return f"{rel}: size changed ({size} bytes, the manifest says {e.bytes})"
        if quick:
            if mtime is not None and e.mtime_ns and mtime != e.mtime_ns:
                return f"{rel}: modified after the build (mtime changed; run verify without --quick)"
            return None
        h = hash_file(store, rel) if store.is_local else hash_file(store, rel, size)
        if h != e.sha256:
            return f"{rel}: content changed (sha256 {h[:16]}..., the manifest says {e.sha256[:16]}...)"
    except UnsafePathError as ex:
        return str(ex)
    except OSError as ex:
        return f"{rel}: unreadable ({ex})"
    return None


def check_clip(store: Store, entries, quick: bool = False, root_real: str | None = None) -> list[str | None]:
    """The problem (or None) of every file of one clip (:class:`Entry` list, all below the clip's folder). On an
    object store the clip folder is listed once, recursively (sizes from the listing: no HEAD per file)."""
    if not entries or store.is_local:
        return [check_file(store, e, quick, root_real) for e in entries]
    crel = "/".join(entries[0].path.split("/", 2)[:2])
    try:
        listed = {f"{crel}/{r}": int(info.get("size") or 0) for r, info in store.list_tree(crel).items()}
    except OSError:
        listed = None  # unlistable: each file is checked on its own (and reports its error)
    inside = crel + "/"
    return [check_file(store, e, quick, root_real, listed if e.path.startswith(inside) else None) for e in entries]


def clip_entries(table: pa.Table, batch: int = 256) -> Iterator[list[Entry]]:
    """The :class:`Entry` list of each clip (row) of a files table, in order, converted from the Arrow columns
    ``batch`` clips at a time (no Python object per file beyond the current batch)."""
    for chunk in table["files"].chunks:
        offsets, values = chunk.offsets.to_numpy(), chunk.values
        for start in range(0, len(chunk), batch):
            stop = min(len(chunk), start + batch)
            a0, b0 = int(offsets[start]), int(offsets[stop])
            cols = [values.field(n)[a0:b0].to_pylist() for n in Entry._fields]
            flat = list(map(Entry, *cols))
            for i in range(start, stop):
                yield flat[int(offsets[i]) - a0:int(offsets[i + 1]) - a0]


@dataclass(frozen=True)
class VerifyTask:
    """The files of one HDRI of a version, checked by one Ray task (:func:`verify_task`)."""

    root: str
    hdri_id: str
    clips: tuple  # one tuple of Entry per clip
    quick: bool = False
    threads: int = 0

    @property
    def bytes(self) -> int:
        return sum(e.bytes for c in self.clips for e in c)


def _check_clips(store: Store, clips, quick: bool, threads: int, on_done=None) -> Iterator[list[str | None]]:
    """:func:`check_clip` of every clip of the iterable ``clips``, ``threads`` clips at a time, results in order;
    at most a few batches of clips are in memory."""
    root_real = real_root(store)
    threads = threads or min(8, (os.cpu_count() or 1) * 2)

    def one(entries):
        try:
            return check_clip(store, entries, quick, root_real)
        finally:
            if on_done:
                on_done(sum(e.bytes for e in entries))

    it = iter(clips)
    with ThreadPoolExecutor(threads) as ex:
        while True:
            part = list(itertools.islice(it, threads * 8))
            if not part:
                return
            yield from ex.map(one, part)


def verify_task(task: VerifyTask) -> list[str | None]:
    """The problem (or None) of every file of ``task``, in order; the plain function a Ray task runs."""
    return [p for res in _check_clips(Store(task.root), task.clips, task.quick, task.threads) for p in res]


def verify(m: Manifest, quick: bool = False, threads: int | None = None, progress: bool = True,
           use_ray: bool = False, opts=None) -> list[str]:
    """One line per missing or changed file, in the manifest's order (empty list: the data is exactly what the
    version recorded). With ``use_ray`` every HDRI's files are checked by one Ray task (:mod:`hdr.cluster`; the
    root must be readable by the workers: an object store or a shared filesystem), else by threads here. Clips are
    read from the manifest's Arrow table a batch at a time; on an object store each clip folder is listed once and
    each file read with one GET (:func:`check_clip`)."""
    t = m.files_table()
    total = pc.sum(pc.struct_field(pc.list_flatten(t["files"]), "bytes")).as_py() or 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    if not use_ray:
        problems = [p for res in _check_clips(m.store, clip_entries(t), quick, threads or 0, on_done=bar.update)
                    for p in res if p]
        bar.close()
        return problems
    from hdr.cluster import run_tasks

    groups: dict[str, list] = {}
    for entries in clip_entries(t):
        if entries:
            groups.setdefault(entries[0].path.split("/", 1)[0], []).append(tuple(entries))
    tasks = [VerifyTask(m.store.url, h, tuple(clips), quick, threads or 0) for h, clips in groups.items()]
    del groups
    order = {task.hdri_id: i for i, task in enumerate(tasks)}
    found: dict[int, list[str]] = {}

    def done(task: VerifyTask, result) -> None:
        found[order[task.hdri_id]] = [p for p in result if p]
        bar.update(task.bytes)

    def failed(task: VerifyTask, message: str) -> None:
        found[order[task.hdri_id]] = [f"{task.hdri_id}/: could not be verified ({message})"]
        bar.update(task.bytes)

    run_tasks(verify_task, tasks, use_ray=True, opts=opts, on_result=done, on_error=failed)
    bar.close()
    return [p for i in sorted(found) for p in found[i]]


@dataclass
class Diff:
    a: str
    b: str
    added: list
    removed: list
    changed: dict  # key -> list of reasons

    def lines(self, limit: int = 5) -> list[str]:
        out = [f"{self.a} -> {self.b}: {len(self.added)} added, {len(self.removed)} removed, "
               f"{len(self.changed)} changed"]
        out += [f"+ {k}" for k in self.added]
        out += [f"- {k}" for k in self.removed]
        for k, reasons in self.changed.items():
            shown = reasons[:limit] + ([f"... {len(reasons) - limit} more"] if len(reasons) > limit else [])
            out.append(f"~ {k}: " + "; ".join(shown))
        return out


def diff(a: Manifest, b: Manifest) -> Diff:
    def index(m: Manifest) -> dict:
        t = m.files_table()
        recs = {r.key: r for r in m.clips()}
        return {k: (s, h, {f["path"]: f for f in files}, recs[k]) for k, s, h, files in
                zip(t["key"].to_pylist(), t["split"].to_pylist(), t["clip_hash"].to_pylist(),
                    t["files"].to_pylist())}

    ia, ib = index(a), index(b)
    added = sorted(set(ib) - set(ia))
    removed = sorted(set(ia) - set(ib))
    changed = {}
    for k in sorted(set(ia) & set(ib)):
        sa, ha, fa, ra = ia[k]
        sb, hb, fb, rb = ib[k]
        if sa == sb and ha == hb:
            continue
        reasons = []
        if sa != sb:
            reasons.append(f"split {sa} -> {sb}")
        if (ra.caption, ra.overexposed, ra.underexposed) != (rb.caption, rb.overexposed, rb.underexposed):
            reasons.append("caption changed" if ra.caption and rb.caption else
                           "caption added" if rb.caption else "caption removed")
        augs_a, augs_b = {x.aug_id for x in ra.augs}, {x.aug_id for x in rb.augs}
        reasons += [f"augmentation {x} added" for x in sorted(augs_b - augs_a)]
        reasons += [f"augmentation {x} removed" for x in sorted(augs_a - augs_b)]
        skip = {x.rel + "/" for x in ra.augs if x.aug_id in augs_a - augs_b} | \
               {x.rel + "/" for x in rb.augs if x.aug_id in augs_b - augs_a}

        def shown(p: str) -> bool:
            return not any(p.startswith(s) for s in skip)

        reasons += [f"{p} added" for p in sorted(set(fb) - set(fa)) if shown(p)]
        reasons += [f"{p} removed" for p in sorted(set(fa) - set(fb)) if shown(p)]
        reasons += [f"{p} content changed" for p in sorted(set(fa) & set(fb)) if fa[p]["sha256"] != fb[p]["sha256"]]
        changed[k] = reasons or ["clip hash changed"]
    return Diff(a.version, b.version, added, removed, changed)
