"""Manifest costs, measured in one run: per-file hashing vs raw reading of the same files, and the size and load time
of a synthetic paper-sized manifest (5400 clips x 81 frames, one stored augmentation and a caption per clip) as
Parquet (what ``manifests build`` writes) and as JSONL.

    python benchmarks/manifests.py [--files 40 --file-mb 10] [--clips 5400]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdr.storage import Store  # noqa: E402
from manifests import open_manifest  # noqa: E402
from manifests.build import FileEntry, hash_files, publish_table  # noqa: E402
from hdr.dataset.rows import ARROW_SCHEMA, AUG_TYPE, FILE_TYPE, SCHEMA_ID, record_from_row  # noqa: E402

CHUNK = 1 << 20


def raw_read(path: str) -> int:
    n = 0
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                return n
            n += k


def digest(path: str, name: str) -> str:
    h = hashlib.new(name)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(view)
            if not k:
                return h.hexdigest()
            h.update(view[:k])


def bench_hash(n_files: int, file_mb: int, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    d = Path(tempfile.mkdtemp(prefix="bench-hash-"))
    try:
        paths = []
        for i in range(n_files):
            p = d / f"frame_{i:04d}.exr"
            p.write_bytes(os.urandom(file_mb << 20))
            paths.append(str(p))
        total = n_files * (file_mb << 20) / 1e6
        for p in paths:  # warm the page cache: every variant then reads from memory, as `cat` would a second time
            raw_read(p)

        def timed(fn, *, pool: int = 1) -> float:
            t = time.perf_counter()
            if pool == 1:
                for p in paths:
                    fn(p)
            else:
                with ThreadPoolExecutor(pool) as ex:
                    list(ex.map(fn, paths))
            return total / (time.perf_counter() - t)

        rows = [("raw read (cat-style)", timed(raw_read)),
                ("sha256", timed(lambda p: digest(p, "sha256"))),
                ("blake2b", timed(lambda p: digest(p, "blake2b"))),
                ("md5", timed(lambda p: digest(p, "md5"))),
                (f"raw read, {threads} threads", timed(raw_read, pool=threads))]
        store = Store(d)
        entries = [FileEntry(Path(p).name, file_mb << 20, 0) for p in paths]
        t = time.perf_counter()
        hash_files(store, entries, threads=threads, progress=False)
        rows.append((f"sha256 manifests.build.hash_files, {threads} threads", total / (time.perf_counter() - t)))
        assert entries[0].sha256 == digest(paths[0], "sha256")
        raw = rows[0][1]
        print(f"== hashing vs raw read: {n_files} files x {file_mb} MB = {total:.0f} MB, page-cached, "
              f"{os.cpu_count()} cores")
        for name, mbs in rows:
            print(f"{name:48s} {mbs:8.0f} MB/s  {mbs / raw:5.2f}x raw read")
        best = rows[-1][1]
        print(f"paper dataset (437,400 float32 720p frames, ~4.4 TB): sha256 at {best:.0f} MB/s = "
              f"{4.4e6 / best / 3600:.1f} h on this machine; a rebuild re-hashes only files whose size/mtime changed")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def synthetic_table(n_clips: int, n_frames: int = 81) -> pa.Table:
    """A manifest table of the paper's shape, built column-wise (random hashes; 7 clips per HDRI)."""
    import numpy as np

    rng = np.random.default_rng(0)
    keys, hdris, clips, rels = [], [], [], []
    frames, aug_rows, files = [], [], []
    programs = ["highlight_zoom_in", "highlight_zoom_out", "shadow_zoom_in", "shadow_zoom_out", "rotation_000",
                "rotation_120", "rotation_240"]
    pool = rng.bytes(32 * n_clips * (4 * n_frames + 6)).hex()
    hexes = iter([pool[i:i + 64] for i in range(0, len(pool), 64)])
    for i in range(n_clips):
        h, c = f"polyhaven_hdri_{i // 7:04d}_4k", programs[i % 7]
        rel = f"{h}/{c}"
        keys.append(rel)
        hdris.append(h)
        clips.append(c)
        rels.append(rel)
        fr = [f"{rel}/frame_{t:04d}.exr" for t in range(n_frames)]
        arel = f"{rel}/ldr/paper_00"
        ldr = [f"{arel}/frame_{t:04d}.png" for t in range(n_frames)]
        over = [f"{arel}/over_{t:04d}.png" for t in range(n_frames)]
        under = [f"{arel}/under_{t:04d}.png" for t in range(n_frames)]
        frames.append(fr)
        aug_rows.append([{"aug_id": "paper_00", "rel": arel, "preset": "paper", "kind": "single", "frames": ldr,
                          "over": over, "under": under,
                          "params": json.dumps({"exposure_stops": 0.5, "noise": True, "preset": "paper",
                                                "quantize": "round", "rho": 0.5, "seed": 123456789,
                                                "sigma_c": 1e-5, "sigma_s": 5e-4, "noise_scale": 1.0})}])
        paths = fr + [f"{rel}/clip.json", f"{rel}/caption.json"] + ldr + over + under + [f"{arel}/aug.json"]
        files.append([{"path": p, "bytes": 10_200_000, "mtime_ns": 1_764_000_000_000_000_000 + k,
                       "sha256": next(hexes)} for k, p in enumerate(sorted(paths))])
    n = n_clips
    cols = {
        "key": keys, "hdri_id": hdris, "hdri_sha256": [next(hexes) for _ in range(n)], "clip_id": clips,
        "program": clips, "split": ["test" if i < 50 else "train" for i in range(n)], "n_frames": [n_frames] * n,
        "width": [1280] * n, "height": [720] * n, "rel": rels, "frames": frames, "augs": aug_rows,
        "caption": ["[overexposed: the sun and the bright sky near it]; [underexposed: the shadowed ground]"] * n,
        "overexposed": ["the sun and the bright sky near it"] * n, "underexposed": ["the shadowed ground"] * n,
        "caption_backend": ["qwen3vl"] * n, "caption_model": ["Qwen/Qwen3-VL-8B-Instruct"] * n,
        "clip_hash": [next(hexes) for _ in range(n)], "n_files": [len(f) for f in files],
        "bytes": [sum(x["bytes"] for x in f) for f in files], "dr_stops": [15.0] * n,
        "radiance_max": [3e4] * n, "radiance_mean": [2.0] * n, "radiance_p50": [0.5] * n, "radiance_p99": [20.0] * n,
        "frac_above_1": [0.3] * n, "render_settings": [json.dumps({"frames": n_frames, "resolution": [1280, 720]})] * n,
        "files": files,
    }
    assert ARROW_SCHEMA.field("files").type.value_type == FILE_TYPE and AUG_TYPE is not None
    return pa.table(cols, schema=ARROW_SCHEMA)


def bench_load(n_clips: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    try:
        t = time.perf_counter()
        table = synthetic_table(n_clips)
        t_make = time.perf_counter() - t
        n_files = sum(len(x) for x in table["files"].to_pylist()) if n_clips <= 100 else \
            int(pa.compute.sum(table["n_files"]).as_py())
        record = {"schema": SCHEMA_ID, "root_hash": "0" * 64, "parent": None, "counts": {"clips": n_clips,
                                                                                         "files": n_files}}
        t = time.perf_counter()
        publish_table(Store(root), "v0001", table, record)
        t_write = time.perf_counter() - t
        pq_size = (root / "manifests/v0001.parquet").stat().st_size

        t = time.perf_counter()
        m = open_manifest(root / "manifests/v0001.parquet")
        t_open = time.perf_counter() - t
        t = time.perf_counter()
        recs = m.clips("train")
        t_clips = time.perf_counter() - t
        t = time.perf_counter()
        ft = m.files_table()
        t_files = time.perf_counter() - t
        assert len(recs) == n_clips - 50 and ft.num_rows == n_clips

        jsonl = root / "v0001.jsonl"
        rows = table.to_pylist()
        t = time.perf_counter()
        with open(jsonl, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        t_jwrite = time.perf_counter() - t
        del rows
        t = time.perf_counter()
        with open(jsonl) as f:
            back = [json.loads(line) for line in f]
        t_jload = time.perf_counter() - t
        assert len(back) == n_clips
        t = time.perf_counter()
        jrecs = [record_from_row(r) for r in back if r["split"] == "train"]
        t_jrec = time.perf_counter() - t
        assert len(jrecs) == len(recs)
        del back, jrecs
        js = jsonl.stat().st_size
        print(f"== synthetic manifest: {n_clips} clips x 81 frames, 1 augmentation + caption each = "
              f"{n_files:,} files ({t_make:.1f} s to make in memory)")
        print(f"parquet (zstd): {pq_size / 1e6:7.1f} MB, write {t_write:5.2f} s")
        print(f"  open_manifest (sha256 of the file + read all but the file table + path checks): {t_open:5.2f} s")
        print(f"  m.clips('train') -> {len(recs)} ClipRecords: {t_clips:5.2f} s")
        print(f"  files_table() (verify/diff/build: {n_files:,} path/size/mtime/sha256 rows): {t_files:5.2f} s")
        print(f"  loader total (open + clips): {t_open + t_clips:5.2f} s")
        print(f"jsonl:          {js / 1e6:7.1f} MB, write {t_jwrite:5.2f} s, load (json.loads per line, no column "
              f"projection possible): {t_jload:5.2f} s")
        print(f"  jsonl -> {len(recs)} ClipRecords: {t_jload + t_jrec:5.2f} s (load + {t_jrec:.2f} s records)")
        print(f"ratio: jsonl is {js / pq_size:.1f}x larger; its loader path takes "
              f"{(t_jload + t_jrec) / (t_open + t_clips):.1f}x the parquet loader path (which also checks the file's "
              "sha256 and every path)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=40, help="files to hash")
    p.add_argument("--file-mb", type=int, default=10, help="size of each (a 720p float32 EXR is ~10 MB)")
    p.add_argument("--threads", type=int, default=min(8, (os.cpu_count() or 1) * 2))
    p.add_argument("--clips", type=int, default=5400)
    p.add_argument("--only", choices=("hash", "load"), help="run one of the two parts")
    a = p.parse_args()
    if a.only != "load":
        bench_hash(a.files, a.file_mb, a.threads)
    if a.only != "hash":
        bench_load(a.clips)


if __name__ == "__main__":
    main()
