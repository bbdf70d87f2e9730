"""HDRI source records: ``_sources.json`` (render.fetch) -> clip.json ``hdri.source`` -> the manifest's hdri_*
columns, the HF card's attribution, and ``manifests build --stratify category``."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hdr.dataset.manifest import open_manifest
from hdr.dataset.records import ClipMeta, RecordError, check_source
from hdr.dataset.rows import SOURCE_COLUMNS, primary_category, source_columns
from hdr.seeding import derive_seed
from hdr.storage import Store
from render.hdri import SOURCES_FILE, HdriEntry, read_sources

# primary categories: outdoor = city, courtyard, forest, sunrise; indoor = interior, studio; night = night, sunset
CATEGORIES = {"city": ["outdoor", "urban"], "courtyard": ["outdoor", "urban"], "forest": ["outdoor", "nature"],
              "sunrise": ["skies", "outdoor"], "interior": ["indoor", "natural light"], "studio": ["indoor"],
              "night": ["outdoor", "night"], "sunset": ["night", "outdoor"]}
AUTHORS = {"city": {"Greg Zaal": "All"}, "courtyard": {"Sergej Majboroda": "All"}, "forest": {"Greg Zaal": "All"},
           "sunrise": {"Andreas Mischok": "All"}, "interior": {"Greg Zaal": "Photography", "Rico Cilliers": "Edit"},
           "studio": {"Dimitrios Savva": "All"}, "night": {"Jarod Guest": "All"}, "sunset": {"Greg Zaal": "All"}}
RUN = ["--engine", "direct", "--resolution", "32x16", "--frames", "2", "--programs", "rotation_000", "--no-ray",
       "--quiet"]


def record(name: str) -> dict:
    """A map's record in render.fetch's shape (source_record plus the download date)."""
    return {"id": name, "name": name.title(), "authors": AUTHORS[name], "license": "CC0",
            "license_url": "https://creativecommons.org/publicdomain/zero/1.0/", "categories": CATEGORIES[name],
            "tags": [f"{name}-tag", "hdr"], "resolution": "1k", "format": "exr",
            "url": f"https://dl.polyhaven.org/file/ph-assets/HDRIs/exr/1k/{name}_1k.exr", "md5": "0" * 32,
            "bytes": 1234, "page": f"https://polyhaven.com/a/{name}", "api": "https://api.polyhaven.com",
            "downloaded": "2026-12-01T10:00:00+00:00"}


def write_sources(folder: Path, names) -> dict:
    maps = {f"{n}.exr": record(n) for n in names}
    (folder / SOURCES_FILE).write_text(json.dumps({"source": "Poly Haven (https://polyhaven.com), via its public API",
                                                   "license": "CC0", "maps": maps}))
    return maps


@pytest.fixture(scope="module")
def rendered(bundled_hdris, tmp_path_factory):
    """The 8 bundled maps with a hand-written _sources.json, rendered by render.run (direct engine, 32x16, 2 frames,
    one program, no Ray). READ-ONLY."""
    from render.run import main

    base = tmp_path_factory.mktemp("sources")
    hdris = base / "hdris"
    hdris.mkdir()
    for n in CATEGORIES:
        shutil.copy(bundled_hdris / f"{n}.exr", hdris / f"{n}.exr")
    maps = write_sources(hdris, CATEGORIES)
    assert main(["--hdris", str(hdris), "--root", str(base / "out"), *RUN]) == 0
    return hdris, base / "out", maps


def _copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)  # keeps mtimes: manifests reuse nothing by accident
    return dst


# reading _sources.json ----------------------------------------------------------------------------------------------
def test_read_sources_matches_by_rel_or_name_and_never_fails(tmp_path):
    entries = [HdriEntry("forest.exr", "forest"), HdriEntry("sub/night.exr", "sub__night"),
               HdriEntry("other.exr", "other")]
    store = Store(str(tmp_path))
    assert read_sources(store, entries) == {}  # no file
    maps = write_sources(tmp_path, ["forest", "night"])
    got = read_sources(store, entries)
    assert got == {"forest.exr": maps["forest.exr"], "sub/night.exr": maps["night.exr"]}  # base name matches too

    said = []
    (tmp_path / SOURCES_FILE).write_text("{not json")
    assert read_sources(store, entries, warn=said.append) == {}
    assert len(said) == 1 and str(tmp_path / SOURCES_FILE) in said[0] and "\n" not in said[0]

    bad = {"maps": {"forest.exr": {**record("forest"), "tags": "trees"}, "night.exr": record("night")}}
    (tmp_path / SOURCES_FILE).write_text(json.dumps(bad))
    said.clear()
    got = read_sources(store, entries, warn=said.append)
    assert list(got) == ["sub/night.exr"]  # the bad record is dropped, the good one kept
    assert len(said) == 1 and "maps.forest.exr.tags" in said[0] and "forest.exr" in said[0]

    remote = Store("memory://sources-test")  # an fsspec store reads the same way (s3:// in production)
    remote.write_bytes(SOURCES_FILE, json.dumps({"maps": {"forest.exr": record("forest")}}).encode())
    assert read_sources(remote, entries) == {"forest.exr": record("forest")}


def test_check_source_types():
    rec = {**record("city"), "extra_key": {"kept": True}}
    assert check_source(rec, "x") is rec
    check_source({"id": "a", "authors": ["A", "B"]}, "x")  # authors as a list of names
    for bad, where in (({"name": "no id"}, "x.id"), ({"id": "a", "authors": {"A": 3}}, "x.authors"),
                       ({"id": "a", "categories": [1]}, "x.categories"), ({"id": 5}, "x.id")):
        with pytest.raises(RecordError, match=where.replace(".", r"\.")):
            check_source(bad, "x")


# render -> clip.json -----------------------------------------------------------------------------------------------
def test_clip_json_carries_the_record_and_a_rerun_without_it_renders_nothing(rendered, tmp_path):
    from render.run import main

    hdris, out, maps = rendered
    clip_jsons = sorted(out.glob("*/rotation_000/clip.json"))
    assert len(clip_jsons) == 8
    for p in clip_jsons:
        meta = ClipMeta.read(Store(str(out)), str(p.relative_to(out)))
        assert meta.hdri["source"] == maps[f"{meta.hdri_id}.exr"]
        assert "source" not in meta.settings  # not a setting: it never enters the fingerprint
    # rerun on a copy, the maps now without _sources.json: everything is complete, nothing is rendered
    root = _copy_root(out, tmp_path / "out")
    shutil.copytree(hdris, tmp_path / "hdris", copy_function=os.link, ignore=shutil.ignore_patterns(SOURCES_FILE))
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/rotation_000/*")}
    assert len(before) == 8 * 3  # 2 frames + clip.json per clip
    assert main(["--hdris", str(tmp_path / "hdris"), "--root", str(root), *RUN]) == 0
    runs = sorted((root / "_runs").glob("render-*.json"), key=lambda p: p.stat().st_mtime_ns)
    counts = json.loads(runs[-1].read_text())["counts"]
    assert counts["rendered"] == 0 and counts["skipped"] == 8, counts
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


# the manifest -------------------------------------------------------------------------------------------------------
def test_primary_category_rule():
    assert primary_category(["outdoor", "night", "urban"]) == "night"
    assert primary_category(["indoor", "Studio"]) == "Studio"
    assert primary_category(["outdoor", "indoor"]) == "indoor"
    assert primary_category(["skies", "nature"]) == "skies"
    assert primary_category([]) is None and primary_category(None) is None
    assert source_columns(None) == dict.fromkeys(SOURCE_COLUMNS)
    assert source_columns({"id": "a", "url": "https://dl.polyhaven.org/f/a.exr"})["hdri_source"] == "polyhaven"


def test_manifest_columns_and_card_attribution(rendered, tmp_path):
    from manifests.__main__ import main
    from manifests.export import export

    _, out, maps = rendered
    root = _copy_root(out, tmp_path / "data")
    assert main(["build", "--root", str(root), "--test", "1", "--quiet"]) == 0
    t = pq.read_table(root / "manifests/v0001.parquet").to_pylist()
    assert len(t) == 8
    for row in t:
        rec = maps[f"{row['hdri_id']}.exr"]
        assert row["hdri_source"] == "polyhaven" and row["hdri_source_id"] == rec["id"]
        assert row["hdri_license"] == "CC0" and json.loads(row["hdri_authors"]) == rec["authors"]
        assert row["hdri_categories"] == rec["categories"] and row["hdri_tags"] == rec["tags"]
        assert row["hdri_page"] == f"https://polyhaven.com/a/{row['hdri_id']}"
    cats = {r["hdri_id"]: r["hdri_category"] for r in t}
    assert cats == {"city": "outdoor", "courtyard": "outdoor", "forest": "outdoor", "sunrise": "outdoor",
                    "interior": "indoor", "studio": "indoor", "night": "night", "sunset": "night"}
    m = open_manifest(root, "v1")
    c = m.clip("interior/rotation_000")
    assert c.hdri_authors == AUTHORS["interior"] and c.hdri_category == "indoor" and c.hdri_tags == ["interior-tag",
                                                                                                     "hdr"]
    card = (Path(export(m, "hf", progress=False)) / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("* polyhaven:"))
    assert "8 HDRIs" in line and "CC0" in line
    for name in {a for v in AUTHORS.values() for a in v}:
        assert name in line


def test_old_manifest_without_source_columns_opens(rendered, tmp_path):
    from manifests.build import build

    _, out, _ = rendered
    root = _copy_root(out, tmp_path / "data")
    build(str(root), test="1", progress=False)
    p, j = root / "manifests/v0001.parquet", root / "manifests/v0001.json"
    old = pq.read_table(p).drop_columns(list(SOURCE_COLUMNS))  # as written before the columns existed
    os.chmod(p, 0o644)
    os.chmod(j, 0o644)
    pq.write_table(old, p)
    rec = json.loads(j.read_text())
    rec["manifest_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    j.write_text(json.dumps(rec))
    clips = open_manifest(root, "v1").clips()
    assert len(clips) == 8
    assert all(c.hdri_source is None and c.hdri_category is None and c.hdri_categories == [] for c in clips)


# --stratify category ------------------------------------------------------------------------------------------------
def _old_assign(clips_per_hdri, seed, targets, parent):
    """The unstratified rule as it was written before (quadratic), as a reference."""
    order = sorted(clips_per_hdri, key=lambda h: (derive_seed(seed, "split", h), h))
    out = {h: s for h, s in (parent or {}).items() if h in clips_per_hdri}
    have = Counter()
    for h, s in out.items():
        have[s] += clips_per_hdri[h]
    new = [h for h in order if h not in out]
    for i, h in enumerate(new):
        no_train_yet = not any(s == "train" for s in out.values())
        for s in ("test", "val"):
            if have[s] < targets[s] and not (no_train_yet and len(new) - i == 1):
                out[h] = s
                break
        else:
            out[h] = "train"
        have[out[h]] += clips_per_hdri[h]
    return out


def test_unstratified_assignment_is_unchanged():
    from manifests.build import assign_splits

    for seed in range(40):
        n = 1 + seed % 9
        sizes = {f"h{i}": 1 + (derive_seed(seed, "n", i) % 7) for i in range(n)}
        parent = {"h0": "train"} if seed % 3 == 0 else {"h1": "test"} if seed % 3 == 1 else None
        test, val = ("3", "2") if seed % 2 else ("0.2", "0.1")
        total = sum(sizes.values())
        targets = {"test": int(test) if "." not in test else round(float(test) * total),
                   "val": int(val) if "." not in val else round(float(val) * total)}
        got, _ = assign_splits(sizes, seed, test, val, parent)
        assert got == _old_assign(sizes, seed, targets, parent), seed


def test_stratified_splits_put_every_category_in_test_and_train():
    from manifests.build import assign_splits

    cats = {f"o{i}": "outdoor" for i in range(4)} | {"i0": "indoor", "i1": "indoor", "n0": "night", "n1": "night"}
    sizes = dict.fromkeys(cats, 7)
    seeds_missing = 0
    for seed in range(20):
        plain, _ = assign_splits(sizes, seed, test="0.25")
        strat, warns = assign_splits(sizes, seed, test="0.25", categories=cats)
        assert strat == assign_splits(sizes, seed, test="0.25", categories=cats)[0]  # deterministic
        by = {c: {strat[h] for h in cats if cats[h] == c} for c in ("outdoor", "indoor", "night")}
        assert all(v == {"test", "train"} for v in by.values()), (seed, strat)
        assert sum(1 for s in strat.values() if s == "test") == 3 and not warns
        seeds_missing += any({plain[h] for h in cats if cats[h] == c} == {"train"} for c in by)
    assert seeds_missing > 0  # unstratified, some seeds leave a category without a test HDRI
    # val too: three HDRIs per category give one of each; a parent's assignment is kept
    cats3 = {f"{c}{i}": c for c in ("a", "b") for i in range(3)}
    got, _ = assign_splits(dict.fromkeys(cats3, 5), 1, test="0.2", val="0.2", categories=cats3)
    assert sorted(got[f"a{i}"] for i in range(3)) == sorted(got[f"b{i}"] for i in range(3)) == ["test", "train", "val"]
    first_test = next(h for h in cats3 if got[h] == "test")
    kept, _ = assign_splits(dict.fromkeys(cats3, 5), 1, test="0.2", val="0.2", parent={first_test: "train"},
                            categories=cats3)
    assert kept[first_test] == "train" and sum(1 for s in kept.values() if s == "test") == 2


def test_build_stratify_category_end_to_end(rendered, tmp_path):
    from manifests.__main__ import main

    _, out, _ = rendered
    root = _copy_root(out, tmp_path / "data")
    assert main(["build", "--root", str(root), "--test", "0.25", "--stratify", "category", "--quiet"]) == 0
    m = open_manifest(root, "latest")
    splits = {}
    for c in m.clips():
        splits.setdefault(c.hdri_category, set()).add(c.split)
    assert splits == {"outdoor": {"test", "train"}, "indoor": {"test", "train"}, "night": {"test", "train"}}
    split = m.record_dict["split"]
    assert split["settings"]["stratify"] == "category" and "stratified by category" in split["method"]
    assert split["categories"]["indoor"]["hdris"] == {"train": 1, "val": 0, "test": 1}
    assert split["categories"]["outdoor"]["clips"]["train"] == 3


def test_assign_splits_is_linear():
    from manifests.build import assign_splits

    n = 20_000
    sizes = {f"hdri_{i:05d}": 7 for i in range(n)}
    cats = {h: f"c{i % 12}" for i, h in enumerate(sizes)}
    parent = {f"hdri_{i:05d}": "train" for i in range(0, n, 10)}
    for kw in ({}, {"categories": cats}):
        t0 = time.perf_counter()
        got, _ = assign_splits(sizes, 0, test="0.1", val="0.05", parent=parent, **kw)
        seconds = time.perf_counter() - t0
        assert seconds < 1.0, (kw.keys(), seconds)
        print(f"assign_splits, {n} HDRIs, {sorted(kw) or 'unstratified'}: {seconds:.3f} s")
        test = sum(sizes[h] for h, s in got.items() if s == "test")
        assert 7 * n // 10 <= test <= 7 * n // 10 + 7 * 12  # >= the target; over by at most one HDRI per group
