"""Issue 19, manifests at scale: writers record each file's hash as they write it, ``build`` trusts a record whose
size and mtime (or ETag) still match and re-reads nothing else, ``verify`` re-reads everything and fans out over
Ray (one task per HDRI)."""
from __future__ import annotations

import json
import os
import sys


from hdr.dataset.manifest import open_manifest
from hdr.storage import Store, recorded_matches
from manifests import build as build_mod
from manifests.build import build
from manifests.ops import verify


def _count_hashes(monkeypatch) -> list[str]:
    read = []
    real = build_mod.hash_file

    def counting(store, rel):
        read.append(rel)
        return real(store, rel)

    monkeypatch.setattr(build_mod, "hash_file", counting)
    return read


def test_writers_record_every_file_and_build_reads_none_of_them(tiny_dataset, monkeypatch):
    meta = json.loads((tiny_dataset / "sunrise/rotation_000/clip.json").read_text())
    frame = meta["frames"][0]
    path = tiny_dataset / "sunrise/rotation_000" / frame["file"]
    assert frame["sha256"] == build_mod.sha256_file(path) and frame["bytes"] == path.stat().st_size
    assert frame["mtime_ns"] == path.stat().st_mtime_ns
    aug = json.loads((tiny_dataset / "sunrise/rotation_000/ldr/paper_00/aug.json").read_text())
    assert set(aug["file_records"]) == set(aug["frames"]) | {aug["masks"][k] % t for k in ("over", "under")
                                                             for t in range(len(aug["frames"]))}
    read = _count_hashes(monkeypatch)
    res = build(str(tiny_dataset), test="1", progress=False)
    assert read == [], read[:3]  # not one frame, mask or record re-read to hash it
    h = res.record["hashing"]
    assert h["hashed"] == 0 and h["reused_from_parent"] == 0
    assert h["recorded_by_writers"] == res.record["counts"]["files"]
    assert verify(open_manifest(tiny_dataset, res.version), progress=False) == []  # the records were right


def test_a_file_changed_after_its_record_is_hashed_again(tiny_dataset, monkeypatch):
    rel = "forest/rotation_000/frame_0002.exr"
    p = tiny_dataset / rel
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF  # same size, other content, a new mtime
    p.write_bytes(bytes(data))
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    read = _count_hashes(monkeypatch)
    res = build(str(tiny_dataset), test="1", progress=False)
    assert read == [rel]
    files = {f["path"]: f for fs in open_manifest(tiny_dataset, res.version).files_table()["files"].to_pylist()
             for f in fs}
    assert files[rel]["sha256"] == build_mod.sha256_file(p)


def test_recorded_matches_rules():
    rec = {"bytes": 10, "sha256": "ab", "mtime_ns": 5}
    assert recorded_matches(rec, 10, 5) and recorded_matches(rec, 10, 0)  # a listing without mtimes: size only
    assert not recorded_matches(rec, 11, 5) and not recorded_matches(rec, 10, 6)
    assert not recorded_matches(None, 10) and not recorded_matches({"bytes": 10}, 10)
    tagged = {"bytes": 10, "sha256": "ab", "etag": "e1"}
    assert recorded_matches(tagged, 10, etag="e1") and not recorded_matches(tagged, 10, etag="e2")


def test_verify_over_ray_names_a_flipped_byte(tiny_dataset):
    import ray
    from ray import cloudpickle

    from hdr.cluster import RayOptions

    res = build(str(tiny_dataset), test="1", progress=False)
    rel = "night/highlight_zoom_in/frame_0004.exr"
    p = tiny_dataset / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, object_store_memory=80 * 1024**2, include_dashboard=False,
             logging_level="ERROR")
    try:
        problems = verify(open_manifest(tiny_dataset, res.version), progress=False, use_ray=True,
                          opts=RayOptions(max_retries=0, retry_exceptions=False))
    finally:
        ray.shutdown()
    assert len(problems) == 1 and problems[0].startswith(f"{rel}: content changed (sha256 "), problems


def test_build_on_an_object_store_gets_only_the_json_records(s3_env, bundled_hdris):
    from augment.clip import AugTask, augment_clip
    from render.job import HdriTask, RenderSettings, render_hdri

    out = Store("s3://data/run")
    out.fs.mkdir("data")
    s = RenderSettings(width=32, height=16, frames=3, samples=1, engine="direct", programs=("rotation_000",))
    for name in ("city", "forest"):
        assert render_hdri(HdriTask(str(bundled_hdris), f"{name}.exr", name, out.url, s)).count("rendered") == 1
        augment_clip(AugTask(out.url, name, "rotation_000", "paper", 1, 0))
    meta = out.read_json("city/rotation_000/clip.json")
    assert meta["frames"][0]["etag"] and "mtime_ns" not in meta["frames"][0]

    gets = []
    client = out.fs.s3  # s3fs's botocore client: every GetObject passes this hook
    client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **kw: gets.append(params["Key"]))
    res = build(out.url, test="1", progress=False)
    assert res.record["hashing"]["hashed"] == 0, res.record["hashing"]
    assert gets and all(k.endswith(".json") for k in gets), sorted(k for k in gets if not k.endswith(".json"))
    assert verify(open_manifest(out.url, res.version), progress=False) == []
