"""``verify`` (re-hash, or sizes and mtimes with ``quick``) and ``diff`` (clips added, removed, changed, and why)."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from hdr.dataset.layout import check_inside, real_root
from hdr.dataset.manifest import Manifest
from hdr.storage import Store, UnsafePathError
from manifests.build import hash_file


def check_file(store: Store, e: dict, quick: bool = False, root_real: str | None = None) -> str | None:
    """One line if the file of manifest entry ``e`` (path, bytes, mtime_ns, sha256) is missing or changed, else
    None. ``quick``: sizes and mtimes only. ``root_real``: the local root's real path (symlinks must stay inside)."""
    rel = e["path"]
    try:
        if store.is_local:
            path = check_inside(store, rel, root_real)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"{rel}: missing"
            size, mtime = st.st_size, st.st_mtime_ns
        else:
            if not store.exists(rel):
                return f"{rel}: missing"
            size, mtime = store.size(rel), None
        if size != e["bytes"]:
            return f"{rel}: size changed ({size} bytes, the manifest says {e['bytes']})"
        if quick:
            if mtime is not None and e["mtime_ns"] and mtime != e["mtime_ns"]:
                return f"{rel}: modified after the build (mtime changed; run verify without --quick)"
            return None
        h = hash_file(store, rel)
        if h != e["sha256"]:
            return f"{rel}: content changed (sha256 {h[:16]}..., the manifest says {e['sha256'][:16]}...)"
    except UnsafePathError as ex:
        return str(ex)
    except OSError as ex:
        return f"{rel}: unreadable ({ex})"
    return None


@dataclass(frozen=True)
class VerifyTask:
    """The files of one HDRI of a version, checked by one Ray task (:func:`verify_task`)."""

    root: str
    hdri_id: str
    entries: tuple  # manifest file entries (dicts)
    quick: bool = False
    threads: int = 0


def _check_all(store: Store, entries, quick: bool, threads: int, on_done=None) -> list[str | None]:
    root_real = real_root(store)

    def one(e):
        try:
            return check_file(store, e, quick, root_real)
        finally:
            if on_done:
                on_done(e)

    with ThreadPoolExecutor(threads or min(8, (os.cpu_count() or 1) * 2)) as ex:
        return list(ex.map(one, entries))


def verify_task(task: VerifyTask) -> list[str | None]:
    """The problem (or None) of every file of ``task``, in order; the plain function a Ray task runs."""
    return _check_all(Store(task.root), task.entries, task.quick, task.threads)


def verify(m: Manifest, quick: bool = False, threads: int | None = None, progress: bool = True,
           use_ray: bool = False, opts=None) -> list[str]:
    """One line per missing or changed file, in the manifest's order (empty list: the data is exactly what the
    version recorded). With ``use_ray`` every HDRI's files are checked by one Ray task (:mod:`hdr.cluster`; the
    root must be readable by the workers: an object store or a shared filesystem), else by threads here."""
    t = m.files_table()
    entries = [f for files in t["files"].to_pylist() for f in files]
    bar = tqdm(total=sum(e["bytes"] for e in entries), unit="B", unit_scale=True, desc="verify", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    if not use_ray:
        problems = _check_all(m.store, entries, quick, threads or 0, on_done=lambda e: bar.update(e["bytes"]))
        bar.close()
        return [p for p in problems if p]
    from hdr.cluster import run_tasks

    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e["path"].split("/", 1)[0], []).append(i)
    tasks = [VerifyTask(m.store.url, h, tuple(entries[i] for i in idx), quick, threads or 0)
             for h, idx in groups.items()]
    found: dict[int, str | None] = {}

    def done(task: VerifyTask, result) -> None:
        for i, p in zip(groups[task.hdri_id], result):
            found[i] = p
        bar.update(sum(e["bytes"] for e in task.entries))

    def failed(task: VerifyTask, message: str) -> None:
        found[groups[task.hdri_id][0]] = f"{task.hdri_id}/: could not be verified ({message})"
        bar.update(sum(e["bytes"] for e in task.entries))

    run_tasks(verify_task, tasks, use_ray=True, opts=opts, on_result=done, on_error=failed)
    bar.close()
    return [found[i] for i in sorted(found) if found[i]]


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
