"""Issue 19, what the scale benchmark found: S3 requests per clip (counted with a botocore hook on s3fs's client) for
resume planning, reads, ``manifests build`` and ``verify``, and the driver's Python memory per file (tracemalloc,
two sizes so fixed costs cancel) in ``build``, a no-op rebuild and ``verify``."""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from hdr.dataset import layout
from hdr.storage import Store
from render.programs import PROGRAMS

REPO = Path(__file__).resolve().parents[1]


def _load_scale():
    """benchmarks/scale.py as a module, without putting benchmarks/ on sys.path (its augment.py would shadow the
    augment package)."""
    name = "_bench_scale"  # not "scale": tests/test_bench_scale.py imports it by that name (and its import strips
    if name in sys.modules:  # benchmarks/ from sys.path again)
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


scale = _load_scale()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The scale benchmark's template clip (8x4 px, 3 frames, one paper augmentation, a caption: 15 files)."""
    return scale.load_template(scale.make_template(tmp_path_factory.mktemp("tpl")))


def _count(store: Store) -> Counter:
    """S3 operations sent by ``store`` from now on (ListObjectsV2, GetObject, HeadObject, ...)."""
    ops = Counter()
    store.fs.connect()
    store.fs.s3.meta.events.register("before-call.s3", lambda model, **kw: ops.update([model.name]))
    return ops


def _upload(store: Store, tpl: dict, keys) -> None:
    """Clones of the template under ``keys`` (records trusted on size: no mtime, no ETag)."""
    for h, c in keys:
        base = layout.clip_rel(h, c)
        arel = layout.aug_rel(h, c, tpl["aug_id"])
        clip, aug, cap = scale.clip_records(tpl, h, c, lambda name, data: {})
        blobs = {**{f"{base}/{n}": b for n, b in tpl["frames"].items()},
                 **{f"{arel}/{n}": b for n, b in tpl["ldr"].items()},
                 f"{arel}/aug.json": scale._dump(aug), f"{base}/caption.json": scale._dump(cap),
                 f"{base}/clip.json": scale._dump(clip)}
        store.fs.pipe({store.path(rel): data for rel, data in blobs.items()})


# resume planning: one LIST per HDRI ------------------------------------------------------------------------------
def _mixed_states(store: Store, hdris: list[str], fp: dict) -> None:
    """Per HDRI: complete, conflict, partial (no clip.json), partial (a frame of another size), partial (unreadable
    clip.json), complete with an augmentation folder below it, and one program never rendered."""
    frame = b"x" * 40
    for h in hdris:
        def clip(program, settings=fp, frames=(0, 1), bad_size=None, raw=None, extra=()):
            rel = layout.clip_rel(h, program)
            recs = [{"index": i, "file": layout.frame_name(i), "bytes": len(frame)} for i in frames]
            for r in recs:
                store.write_bytes(f"{rel}/{r['file']}", frame if r["index"] != bad_size else frame + b"y")
            for name in extra:
                store.write_bytes(f"{rel}/{name}", b"{}")
            if raw is not None:
                store.write_bytes(f"{rel}/clip.json", raw)
            elif settings is not None:
                store.write_json(f"{rel}/clip.json", {"frames": recs, "settings": settings})
        clip(PROGRAMS[0])
        clip(PROGRAMS[1], settings={**fp, "samples": 99})
        clip(PROGRAMS[2], settings=None)
        clip(PROGRAMS[3], bad_size=1)
        clip(PROGRAMS[4], raw=b"{not json")
        clip(PROGRAMS[5], extra=("ldr/paper_00/aug.json", "ldr/paper_00/frame_0000.png"))


def test_planning_lists_each_hdri_once_with_the_same_states(s3_env):
    from render.job import RenderSettings
    from render.run import _states

    out = Store("s3://plan/data")
    out.fs.mkdir("plan")
    settings = RenderSettings(width=8, height=4, frames=2, samples=1, engine="direct")
    fp = settings.fingerprint()
    hdris = [f"h{i}" for i in range(4)]
    _mixed_states(out, hdris, fp)
    entries = [SimpleNamespace(hdri_id=h) for h in hdris + ["never_rendered"]]

    ops = _count(out)
    old = {(e.hdri_id, p): layout.clip_state(out, e.hdri_id, p, fp) for e in entries for p in settings.programs}
    old_ops, ops = dict(ops), _count(out)
    new = _states(out, entries, settings)
    assert new == old
    want = {PROGRAMS[0]: "complete", PROGRAMS[1]: "conflict", PROGRAMS[2]: "partial", PROGRAMS[3]: "partial",
            PROGRAMS[4]: "partial", PROGRAMS[5]: "complete", PROGRAMS[6]: "missing"}
    assert {p: new[("h0", p)][0] for p in PROGRAMS} == want
    assert "unreadable clip.json" in new[("h2", PROGRAMS[4])][1] and "samples" in new[("h3", PROGRAMS[1])][1]
    assert {s for (h, _), (s, _) in new.items() if h == "never_rendered"} == {"missing"}
    n = len(entries)
    assert old_ops["ListObjectsV2"] >= 7 * n  # the per-clip path: a listing per clip folder
    # one LIST per HDRI prefix (an HDRI with nothing under it costs a HEAD + LIST more: s3fs checks the key)
    assert ops["ListObjectsV2"] == n + 1, dict(ops)
    assert ops["GetObject"] == 5 * len(hdris)  # the clip.json of the clips that have one, read once each
    assert ops["HeadObject"] == 1, dict(ops)  # only the empty prefix, not one per read


def test_finished_clips_lists_the_root_then_each_hdri_once(s3_env):
    out = Store("s3://fin/data")
    out.fs.mkdir("fin")
    fp = {"frames": 2}
    _mixed_states(out, ["a", "b", "c"], fp)
    out.write_json("_runs/render-1.json", {})
    ops = _count(out)
    assert layout.finished_clips(out) == {(h, PROGRAMS[i]) for h in "abc" for i in (0, 1, 3, 4, 5)}
    assert dict(ops) == {"ListObjectsV2": 1 + 3}
    assert layout.finished_clips(Store("s3://fin/nothing")) == set()


# reads: one GET, no HEAD; rel without system calls ---------------------------------------------------------------
def test_read_bytes_is_one_get_and_rel_is_a_string_cut(s3_env, tmp_path, monkeypatch):
    out = Store("s3://reads/data")
    out.fs.mkdir("reads")
    out.write_bytes("a/b.bin", b"12345" * 1000)
    ops = _count(out)
    assert out.read_bytes("a/b.bin") == b"12345" * 1000
    assert dict(ops) == {"GetObject": 1}
    ops.clear()
    assert out.sha256("a/b.bin", size=5000) == hashlib.sha256(b"12345" * 1000).hexdigest()  # size from a listing
    assert dict(ops) == {"GetObject": 1}
    assert out.rel("s3://reads/data/a/b.bin") == "a/b.bin" and out.rel("reads/data/a") == "a"

    local = Store(tmp_path / "root")
    (tmp_path / "root/x").mkdir(parents=True)
    (tmp_path / "root/x/y.txt").write_text("hi")

    def no_resolve(self, *a, **kw):
        raise AssertionError("Path.resolve called")

    monkeypatch.setattr(Path, "resolve", no_resolve)
    assert local.rel(f"{local.root}/x/y.txt") == "x/y.txt" and local.rel(local.root) == "."
    assert local.find() == ["x/y.txt"] and local.glob("*/*.txt") == ["x/y.txt"]
    monkeypatch.undo()
    assert local.rel(f"{local.root}/x/../x/y.txt") == "x/y.txt"  # not under the root textually: resolved as before


# build and verify on S3: requests per clip -----------------------------------------------------------------------
def test_build_and_verify_requests_per_clip(s3_env, template):
    from hdr.dataset.manifest import open_manifest
    from manifests.build import build
    from manifests.ops import verify

    out = Store("s3://bvfix/data")
    out.fs.mkdir("bvfix")
    keys = scale.clip_keys(9)  # 2 HDRIs: 7 + 2 clips
    _upload(out, template, keys)
    n, files = len(keys), 15
    ops = _count(out)
    res = build(out.url, test="0", progress=False)
    assert res.record["hashing"] == {"hashed": 0, "reused_from_parent": 0, "recorded_by_writers": n * files,
                                     "rehash": False}
    build_ops = dict(ops)
    # per clip: the 3 JSON records read once each, no HEAD; listings: the clip folder, ldr/ and the augmentation
    # folder (3 per clip) + the root and one recursive listing per HDRI; the version's few writes/checks on top
    assert build_ops["GetObject"] == 3 * n, build_ops
    assert build_ops.get("HeadObject", 0) <= 4, build_ops  # publishing the version (exists checks), not per file
    assert build_ops["ListObjectsV2"] <= 3 * n + 1 + 2 + 4, build_ops
    ops.clear()
    assert verify(open_manifest(out.url, res.version), progress=False) == []
    verify_ops = dict(ops)
    # per clip: one recursive LIST of the folder, one GET per file; no HEAD at all (the manifest's own reads aside)
    assert verify_ops["ListObjectsV2"] == n, verify_ops
    assert verify_ops["GetObject"] == n * files + 2, verify_ops  # + the version record and the parquet file
    assert verify_ops.get("HeadObject", 0) <= 1, verify_ops

    victim = "h0001/highlight_zoom_in/ldr/paper_00/frame_0001.png"
    data = bytearray(out.read_bytes(victim))
    data[-3] ^= 0x10
    out.write_bytes(victim, bytes(data))
    out.fs.rm(out.path("h0000/rotation_120/frame_0000.exr"))
    problems = verify(open_manifest(out.url, res.version), progress=False)
    assert problems == ["h0000/rotation_120/frame_0000.exr: missing",
                        f"{victim}: content changed (sha256 " + problems[1].split("(sha256 ", 1)[1]], problems
    assert verify(open_manifest(out.url, res.version), quick=True, progress=False) == [problems[0]]


# driver memory per file ------------------------------------------------------------------------------------------
def _traced_peak(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        value = fn()
        return tracemalloc.get_traced_memory()[1] - base, value
    finally:
        tracemalloc.stop()


def test_driver_memory_per_file_is_under_1_kb(template, tmp_path):
    """build, a no-op rebuild (the parent's files) and verify at 40 and 240 clips (600 and 3,600 files): the Python
    heap's peak grows by < 1 KB per file (before issue 19: ~2.5-4 KB, a FileEntry with its record dict, a dict per
    file from the parent and in verify)."""
    from hdr.dataset.manifest import open_manifest
    from manifests.build import build
    from manifests.ops import verify

    peaks = {}
    for n in (7, 40, 240):  # 7: warm-up (lazy imports, caches), not measured
        root, _ = scale.clone_local(template, tmp_path / f"n{n}", n)
        p_first, res = _traced_peak(lambda: build(str(root), test="0", progress=False))
        assert res.version == "v0001" and res.record["hashing"]["recorded_by_writers"] == n * 15
        p_noop, res2 = _traced_peak(lambda: build(str(root), test="0", progress=False))
        assert res2.version is None
        p_verify, problems = _traced_peak(lambda: verify(open_manifest(str(root), "v1"), progress=False))
        assert problems == []
        peaks[n] = (p_first, p_noop, p_verify)
        shutil.rmtree(tmp_path / f"n{n}")
    per_file = [(b - a) / (200 * 15) for a, b in zip(peaks[40], peaks[240])]
    print("bytes per file (build, no-op build, verify):", [round(x) for x in per_file])
    for step, x in zip(("build", "build_noop", "verify"), per_file):
        assert x < 1024, (step, x, peaks)


def test_file_entry_keeps_only_a_matching_recorded_hash():
    from manifests.build import FileEntry

    rec = {"bytes": 10, "sha256": "ab", "mtime_ns": 5, "focal_mm": 30.0, "index": 0}
    e = FileEntry("a/b", 10, 5, etag=None, recorded=rec)
    assert e.recorded_sha256 == "ab" and not hasattr(e, "__dict__")
    assert FileEntry("a/b", 11, 5, recorded=rec).recorded_sha256 is None  # size changed
    assert FileEntry("a/b", 10, 6, recorded=rec).recorded_sha256 is None  # mtime changed
    tagged = {"bytes": 10, "sha256": "cd", "etag": "e1"}
    assert FileEntry("a/b", 10, 0, etag="e1", recorded=tagged).recorded_sha256 == "cd"
    assert FileEntry("a/b", 10, 0, etag="e2", recorded=tagged).recorded_sha256 is None
    assert rec == {"bytes": 10, "sha256": "ab", "mtime_ns": 5, "focal_mm": 30.0, "index": 0}  # not changed
