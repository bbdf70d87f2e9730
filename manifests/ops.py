"""``verify`` (re-hash, or sizes and mtimes with ``quick``) and ``diff`` (clips added, removed, changed, and why)."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from hdr.storage import UnsafePathError
from manifests.build import hash_file
from hdr.dataset.manifest import Manifest


def verify(m: Manifest, quick: bool = False, threads: int | None = None, progress: bool = True) -> list[str]:
    """One line per missing or changed file (empty list: the data is exactly what the version recorded)."""
    t = m.files_table()
    entries = [f for files in t["files"].to_pylist() for f in files]
    store = m.store
    problems: list[str | None] = [None] * len(entries)
    bar = tqdm(total=sum(e["bytes"] for e in entries), unit="B", unit_scale=True, desc="verify", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)

    def one(i: int) -> None:
        e = entries[i]
        rel = e["path"]
        try:
            if store.is_local:
                path = m.local_file(rel)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    problems[i] = f"{rel}: missing"
                    return
                size, mtime = st.st_size, st.st_mtime_ns
            else:
                if not store.exists(rel):
                    problems[i] = f"{rel}: missing"
                    return
                size, mtime = store.size(rel), None
            if size != e["bytes"]:
                problems[i] = f"{rel}: size changed ({size} bytes, the manifest says {e['bytes']})"
            elif quick:
                if mtime is not None and e["mtime_ns"] and mtime != e["mtime_ns"]:
                    problems[i] = f"{rel}: modified after the build (mtime changed; run verify without --quick)"
            else:
                h = hash_file(store, rel)
                if h != e["sha256"]:
                    problems[i] = (f"{rel}: content changed (sha256 {h[:16]}..., the manifest says "
                                   f"{e['sha256'][:16]}...)")
        except UnsafePathError as ex:
            problems[i] = str(ex)
        except OSError as ex:
            problems[i] = f"{rel}: unreadable ({ex})"
        finally:
            bar.update(e["bytes"])

    threads = threads or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(len(entries))))
    bar.close()
    return [p for p in problems if p]


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
