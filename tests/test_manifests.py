"""manifests: build/verify/diff, immutability, splits, path safety, the loader API and exports, on the tiny dataset
made by the real render and augment stages (tests/conftest.py)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hdr.storage import UnsafePathError
from manifests import ManifestError, open_manifest
from manifests.build import assign_splits, build, parse_size
from manifests.ops import diff, verify

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "manifests", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def write_caption(root: Path, hdri: str, clip: str, over: str, under: str) -> None:
    """A caption.json as the caption stage writes it (contract in the task notes)."""
    rec = {"schema": "hdr-toolkit/caption/1", "hdri_id": hdri, "clip_id": clip,
           "caption": f"[overexposed: {over}]; [underexposed: {under}]", "overexposed": over, "underexposed": under,
           "scene": None, "backend": "stats", "model": {"id": "stats", "revision": None}, "prompt_hash": "0" * 16,
           "frame_indices": [0, 4, 8], "source": {"aug_id": None}, "generation": {}, "raw_text": "", "attempts": 1,
           "fallback": None, "seconds": 0.01, "created": "2026-11-25T00:00:00+00:00"}
    (root / hdri / clip / "caption.json").write_text(json.dumps(rec))


@pytest.fixture
def bare(tiny_dataset):
    """The tiny dataset without caption.json files (captions are optional; tests add their own)."""
    for p in tiny_dataset.glob("*/*/caption.json"):
        p.unlink()
    return tiny_dataset


@pytest.fixture
def built(bare):
    res = build(str(bare), test="2", progress=False)
    assert res.version == "v0001"
    return bare


# build / verify --------------------------------------------------------------------------------------------------
def test_build_records_everything_and_verify_names_changed_and_missing_files(tiny_dataset):
    r = cli("build", "--root", tiny_dataset, "--test", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote v0001: 6 clips from 3 HDRIs" in r.stdout
    rec = json.loads((tiny_dataset / "manifests/v0001.json").read_text())
    import hdr

    assert rec["toolkit_version"] == hdr.__version__ and rec["parent"] is None
    assert len(rec["git"]["commit"]) == 40  # the checkout is a git repository
    n_cap = len(list(tiny_dataset.glob("*/*/caption.json")))  # the fixture may or may not carry captions
    n_files = 6 * (9 + 1 + 2 * (27 + 1)) + n_cap
    assert rec["counts"] == {"hdris": 3, "clips": 6, "frames": 54, "augmentations": 12, "ldr_frames": 108,
                             "captions": n_cap, "files": n_files, "skipped_clips": 0}
    on_disk = sum(p.stat().st_size for p in tiny_dataset.rglob("*") if p.is_file()
                  and "manifests" not in p.parts and ".tmp" not in p.parts)
    assert rec["bytes"]["total"] == on_disk
    assert rec["settings"]["render"][0]["settings"]["resolution"] == [32, 32]
    assert {s["settings"]["kind"] for s in rec["settings"]["augment"]} == {"single", "alt3"}
    m = open_manifest(tiny_dataset / "manifests/v0001.parquet")
    assert m.root_hash == rec["root_hash"] and m.version == "v0001"
    # the file table's hashes are real sha256 of the files
    import hashlib

    t = m.files_table()
    f0 = t["files"][0].as_py()[0]
    assert hashlib.sha256((tiny_dataset / f0["path"]).read_bytes()).hexdigest() == f0["sha256"]

    r = cli("verify", "v1", "--root", tiny_dataset, "--quiet")
    assert r.returncode == 0 and f"all {n_files} files present and identical" in r.stdout, r.stdout + r.stderr

    # flip one byte in one EXR (same size): verify names exactly that file; --quick sees the mtime change
    exr = tiny_dataset / "forest/rotation_000/frame_0003.exr"
    data = bytearray(exr.read_bytes())
    data[len(data) // 2] ^= 0xFF
    exr.write_bytes(bytes(data))
    r = cli("verify", "v1", "--root", tiny_dataset, "--quiet")
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["forest/rotation_000/frame_0003.exr: content changed (sha256 "
                                     f"{hashlib.sha256(bytes(data)).hexdigest()[:16]}..., the manifest says "
                                     f"{_sha(m, 'forest/rotation_000/frame_0003.exr')[:16]}...)"]
    assert f"1 of {n_files} files missing or changed" in r.stderr
    r = cli("verify", "v1", "--root", tiny_dataset, "--quick", "--quiet")
    assert r.returncode == 1 and r.stdout.startswith("forest/rotation_000/frame_0003.exr: modified after the build")

    # delete a frame and a mask: both named
    (tiny_dataset / "night/highlight_zoom_in/frame_0008.exr").unlink()
    (tiny_dataset / "sunrise/rotation_000/ldr/paper_00/over_0002.png").unlink()
    problems = verify(m, progress=False)
    assert sorted(problems) == ["forest/rotation_000/frame_0003.exr: content changed (sha256 "
                                f"{hashlib.sha256(bytes(data)).hexdigest()[:16]}..., the manifest says "
                                f"{_sha(m, 'forest/rotation_000/frame_0003.exr')[:16]}...)",
                                "night/highlight_zoom_in/frame_0008.exr: missing",
                                "sunrise/rotation_000/ldr/paper_00/over_0002.png: missing"]


def _sha(m, path):
    for files in m.files_table()["files"].to_pylist():
        for f in files:
            if f["path"] == path:
                return f["sha256"]
    raise KeyError(path)


def test_no_change_no_new_version_and_versions_are_immutable(built):
    v1 = (built / "manifests/v0001.parquet").read_bytes()
    r = cli("build", "--root", built, "--test", "2", "--quiet")
    assert r.returncode == 0 and "no change since v0001" in r.stdout
    assert sorted(p.name for p in (built / "manifests").iterdir()) == ["v0001.json", "v0001.parquet"]
    # a caption appears: new version v0002 with v0001 as parent; hashes of unchanged files come from v0001
    write_caption(built, "night", "rotation_000", "a bright lamp", "the dark corner")
    res = build(str(built), test="2", progress=False)
    assert res.version == "v0002" and res.record["parent"] == "v0001"
    assert res.record["hashing"] == {"hashed": 0, "reused_from_parent": 396, "recorded_by_writers": 1, "rehash": False}
    assert res.record["counts"]["captions"] == 1
    assert (built / "manifests/v0001.parquet").read_bytes() == v1
    m2 = open_manifest(built, "v2")
    c = m2.clip("night/rotation_000")
    assert c.caption == "[overexposed: a bright lamp]; [underexposed: the dark corner]"
    assert (c.overexposed, c.underexposed) == ("a bright lamp", "the dark corner")
    assert m2.clip("night/highlight_zoom_in").caption is None
    d = diff(open_manifest(built, "v1"), m2)
    assert d.added == [] and d.removed == [] and d.changed == {
        "night/rotation_000": ["caption added", "night/rotation_000/caption.json added"]}
    # the published files are read-only, and a tampered version is refused on open
    for name in ("v0001.parquet", "v0001.json", "v0002.parquet", "v0002.json"):
        assert (built / "manifests" / name).stat().st_mode & 0o777 == 0o444
    p = built / "manifests/v0001.parquet"
    os.chmod(p, 0o644)
    t = pq.read_table(p)
    pq.write_table(t.slice(0, 5), p)
    with pytest.raises(ManifestError, match="SHA-256 differs"):
        open_manifest(built, "v1")
    # an incomplete version (no record) is not a version
    (built / "manifests/v0002.json").unlink()
    with pytest.raises(ManifestError, match="v0002.json is missing: v0002 is incomplete"):
        open_manifest(built / "manifests/v0002.parquet")


def test_diff_after_adding_an_hdri_lists_exactly_its_clips(built, bundled_hdris):
    from augment.clip import AugTask, augment_clip
    from render.job import HdriTask, RenderSettings, render_hdri
    from tests.conftest import TINY

    s = RenderSettings(width=TINY["width"], height=TINY["height"], frames=TINY["frames"], samples=4,
                       engine="direct", programs=TINY["programs"])
    assert render_hdri(HdriTask(str(bundled_hdris), "city.exr", "city", str(built), s)).count("rendered") == 2
    augment_clip(AugTask(str(built), "city", "rotation_000", "paper", 1, 0))
    res = build(str(built), test="2", progress=False)
    assert res.version == "v0002" and res.record["split"]["inherited_from"] == "v0001"
    r = cli("diff", "v1", "v2", "--root", built)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["v0001 -> v0002: 2 added, 0 removed, 0 changed", "+ city/highlight_zoom_in",
                                     "+ city/rotation_000"]
    # splits of the HDRIs already recorded did not move
    m1, m2 = open_manifest(built, "v1"), open_manifest(built, "v2")
    assert {c.key: c.split for c in m1.clips()} == {c.key: c.split for c in m2.clips() if c.hdri_id != "city"}
    assert [a.aug_id for a in m2.clip("city/rotation_000").augs] == ["paper_00"]
    assert m2.clip("city/highlight_zoom_in").augs == []


# splits ----------------------------------------------------------------------------------------------------------
def test_splits_are_hdri_level_deterministic_and_sized():
    clips = {f"hdri_{i:03d}": 7 for i in range(100)}
    clips["odd"] = 3
    a, w = assign_splits(clips, seed=0, test="50", val="0.05")
    assert w == []
    n = Counter()
    for h, s in a.items():
        n[s] += clips[h]
    assert 50 <= n["test"] < 57 and round(0.05 * 703) <= n["val"] < round(0.05 * 703) + 7
    assert n["train"] == 703 - n["test"] - n["val"]
    assert assign_splits(dict(reversed(list(clips.items()))), seed=0, test="50", val="0.05")[0] == a  # order-free
    b, _ = assign_splits(clips, seed=1, test="50", val="0.05")
    assert b != a  # another seed, another held-out set
    # ratio
    r, _ = assign_splits(clips, seed=0, test="0.1")
    assert 70 <= sum(clips[h] for h, s in r.items() if s == "test") < 77
    # parent assignments are kept; new HDRIs fill the held-out targets only when needed
    more = dict(clips, new_a=7, new_b=7)
    c, _ = assign_splits(more, seed=0, test="50", val="0.05", parent=a)
    assert {h: c[h] for h in a} == a
    val_now = sum(more[h] for h, s in c.items() if s == "val")
    assert val_now >= round(0.05 * 717) and sum(more[h] for h, s in a.items() if s == "val") < round(0.05 * 717)
    a0, _ = assign_splits(clips, seed=0, test="50")
    c0, _ = assign_splits(more, seed=0, test="50", parent=a0)  # test already holds its 50: new HDRIs train
    assert {h: c0[h] for h in a0} == a0 and c0["new_a"] == c0["new_b"] == "train"
    # never everything in test: one HDRI stays for training, with a warning
    t, w = assign_splits({"x": 7, "y": 7}, seed=0, test="50")
    assert sorted(t.values()) == ["test", "train"] and "fewer than the requested 50" in w[0]
    assert parse_size("50") == ("clips", 50) and parse_size("0.25") == ("ratio", 0.25)
    with pytest.raises(ManifestError):
        parse_size("1.5")


def test_manifest_splits_are_disjoint_by_hdri(built):
    m = open_manifest(built, "v1")
    by_split = {s: {c.hdri_id for c in m.clips(s)} for s in ("train", "val", "test")}
    assert by_split["test"] and by_split["train"]
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & (by_split["train"] |
                                                                                   by_split["test"]))
    assert sum(len(m.clips(s)) for s in ("train", "val", "test")) == len(m.clips()) == 6
    assert len(m.clips("test")) == 2  # one HDRI (2 clips) reaches --test 2


# security ----------------------------------------------------------------------------------------------------------
def _forge(root: Path, edit) -> None:
    """Publish a v0002 whose rows were edited by ``edit`` (a manifest is input: someone can write anything)."""
    import hashlib

    t = pq.read_table(root / "manifests/v0001.parquet").to_pylist()
    edit(t)
    from hdr.dataset.rows import ARROW_SCHEMA

    p = root / "manifests/v0002.parquet"
    pq.write_table(pa.Table.from_pylist(t, schema=ARROW_SCHEMA), p)
    rec = json.loads((root / "manifests/v0001.json").read_text())
    rec.update(version="v0002", manifest="v0002.parquet", manifest_sha256=hashlib.sha256(p.read_bytes()).hexdigest())
    (root / "manifests/v0002.json").write_text(json.dumps(rec))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "forest/../../x.exr", "s3://bucket/x.exr"])
def test_path_traversal_in_a_manifest_is_rejected(built, bad):
    def edit(rows):
        rows[1]["frames"][3] = bad

    _forge(built, edit)
    with pytest.raises(UnsafePathError, match="HDR frame") as e:
        open_manifest(built, "v2")
    assert bad in str(e.value)
    r = cli("verify", "v2", "--root", built)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and bad in r.stderr and "Traceback" not in r.stderr


def test_traversal_in_files_table_and_aug_paths_is_rejected(built):
    def edit(rows):
        rows[0]["augs"][0]["over"][0] = "../outside.png"

    _forge(built, edit)
    with pytest.raises(UnsafePathError, match="augmentation over"):
        open_manifest(built, "v2")
    os.chmod(built / "manifests/v0002.parquet", 0o644)
    (built / "manifests/v0002.json").unlink()

    def edit2(rows):
        rows[0]["files"][0]["path"] = "../../secret"

    _forge(built, edit2)
    with pytest.raises(UnsafePathError, match="file"):
        verify(open_manifest(built, "v2"), progress=False)


def test_symlinks_leaving_the_root_are_rejected(built, tmp_path):
    outside = tmp_path / "outside.exr"
    frame = built / "night/rotation_000/frame_0002.exr"
    outside.write_bytes(frame.read_bytes())
    frame.unlink()
    frame.symlink_to(outside)
    # verify and the loader refuse the recorded file that now points outside
    m = open_manifest(built, "v1")
    problems = verify(m, progress=False)
    assert len(problems) == 1 and problems[0].startswith("night/rotation_000/frame_0002.exr: resolves to") \
        and "outside the dataset root" in problems[0]
    with pytest.raises(UnsafePathError, match="outside the dataset root"):
        m.local_file("night/rotation_000/frame_0002.exr")
    # a build refuses it too, with one line from the CLI
    r = cli("build", "--root", built, "--quiet")
    assert r.returncode == 2 and "frame_0002.exr: resolves to" in r.stderr and "Traceback" not in r.stderr
    # a symlink that stays inside the root is fine
    frame.unlink()
    (built / "night/rotation_000/copy.bin").write_bytes(outside.read_bytes())
    frame.symlink_to("copy.bin")
    assert verify(m, progress=False) == []


def test_unsafe_names_in_clip_json_are_rejected_at_build(tiny_dataset):
    # (with the fixture's own captions, if any: build must work with and without caption.json)
    assert build(str(tiny_dataset), progress=False).version == "v0001"
    p = tiny_dataset / "forest/rotation_000/clip.json"
    meta = json.loads(p.read_text())
    meta["frames"][0]["file"] = "../../sunrise/rotation_000/frame_0000.exr"
    p.write_text(json.dumps(meta))
    with pytest.raises(UnsafePathError, match="forest/rotation_000/clip.json"):
        build(str(tiny_dataset), progress=False)


# loader ------------------------------------------------------------------------------------------------------------
def test_record_and_open_by_root_and_version(built, tmp_path):
    m = open_manifest(str(built), "v1")
    assert open_manifest(built, "1").root_hash == open_manifest(built, "v0001").root_hash == m.root_hash
    run = tmp_path / "run"
    rec = m.record(run)
    assert json.loads((run / "manifest.json").read_text()) == rec == {
        "manifest": str(built / "manifests/v0001.parquet"), "version": "v0001", "root_hash": m.root_hash,
        "root": str(built)}
    assert open_manifest(rec["manifest"]).root_hash == m.root_hash
    with pytest.raises(ManifestError, match="no such manifest version"):
        open_manifest(built, "v7")
    with pytest.raises(ValueError):
        m.clips("training")


def test_loader_windows_align_hdr_ldr_and_masks(built):
    import cv2
    import torch

    from hdr.degrade.alternating import alternating_ldr
    from hdr.degrade.presets import Params, degrade
    from hdr.io import read_image
    from hdr.dataset.loader import ClipWindowDataset, collate_windows

    write_caption(built, "forest", "highlight_zoom_in", "the sun", "the trees")
    build(str(built), test="2", progress=False)
    m = open_manifest(built, "latest")
    assert m.version == "v0002"

    def png(rel):
        img = cv2.imread(str(built / rel), cv2.IMREAD_UNCHANGED)
        return img[..., ::-1] if img.ndim == 3 else img

    for kind in ("single", "alt3"):
        ds = ClipWindowDataset(m, "train", window=4, ldr="stored", aug_kind=kind, seed=3)
        starts = set()
        for i in range(len(ds)):
            it = ds[i]
            c = ds.clips[i]
            t0 = it["start"]
            starts.add(t0)
            assert 0 <= t0 <= c.n_frames - 4 and it["key"] == c.key
            hdr_all = np.stack([read_image(built / f) for f in c.frames])
            # HDR, LDR and masks are the same frames t0..t0+3
            np.testing.assert_array_equal(it["hdr"].numpy(), hdr_all[t0:t0 + 4].transpose(0, 3, 1, 2))
            a = c.aug(kind)[0]
            ldr_all = np.stack([png(f) for f in a.frames])
            np.testing.assert_array_equal((it["ldr"].numpy() * 255).round().astype(np.uint8),
                                          ldr_all[t0:t0 + 4].transpose(0, 3, 1, 2))
            over = np.stack([png(f) for f in a.over])[t0:t0 + 4] / 255.0
            np.testing.assert_allclose(it["over"][:, 0].numpy(), over, atol=1e-6)
            # and the stored LDR is the degradation of exactly this HDR window (from the recorded params)
            p = Params(**{k: v for k, v in a.params.items() if k != "alternating"})
            if kind == "single":
                again, _ = degrade(hdr_all, p)
                assert it["exposures"].tolist() == [1.0] * 4
            else:
                evs = a.params["alternating"]["ev"]
                again, exps = alternating_ldr(hdr_all, evs, p)
                assert it["exposures"].tolist() == exps[t0:t0 + 4]
            np.testing.assert_array_equal(again[t0:t0 + 4], ldr_all[t0:t0 + 4])
            if c.key == "forest/highlight_zoom_in":
                assert it["caption"] == "[overexposed: the sun]; [underexposed: the trees]"
                assert it["overexposed"] == "the sun"
            else:
                assert it["caption"] == "" and it["underexposed"] == ""
        # starts are deterministic and vary with the epoch
        again_ds = ClipWindowDataset(m, "train", window=4, ldr="stored", aug_kind=kind, seed=3)
        assert [again_ds[i]["start"] for i in range(len(ds))] == [ds.window_start(i) for i in range(len(ds))]
        per_epoch = set()
        for e in range(6):
            ds.set_epoch(e)
            per_epoch.add(tuple(ds.window_start(i) for i in range(len(ds))))
        assert len(per_epoch) > 1
    batch = collate_windows([ds[0], ds[1]])
    assert batch["hdr"].shape == (2, 4, 3, 32, 32) and batch["ldr"].dtype == torch.float32
    assert len(batch["params"]) == 2 and isinstance(batch["key"], list)


def test_loader_augments_on_the_fly_through_the_augment_library(built):
    from hdr.degrade.alternating import alternating_evs, alternating_ldr
    from hdr.degrade.presets import PRESETS, degrade, sample_params
    from hdr.degrade.masks import exposure_masks
    from hdr.seeding import derive_seed
    from hdr.dataset.loader import ClipWindowDataset

    m = open_manifest(built, "v1")
    for kind, preset in (("single", "diffhdr-code"), ("alt2", "paper")):
        ds = ClipWindowDataset(m, "test", window=5, ldr="augment", preset=preset, aug_kind=kind, seed=7, epoch=2)
        it = ds[1]
        c = ds.clips[1]
        t0 = it["start"]
        hdr = it["hdr"].numpy().transpose(0, 2, 3, 1)
        params = sample_params(PRESETS[preset], derive_seed(7, c.key, "loader-augment", 2))
        assert it["params"]["seed"] == params.seed and it["params"]["preset"] == preset
        if kind == "single":
            ldr, _ = degrade(hdr, params)
        else:
            evs = alternating_evs(c.n_frames, 2)[t0:t0 + 5]  # the clip's EV cycle, not restarted at the window
            ldr, exps = alternating_ldr(hdr, evs, params)
            assert it["exposures"].tolist() == exps and it["params"]["alternating"]["ev"] == evs
        np.testing.assert_array_equal((it["ldr"].numpy() * 255).round().astype(np.uint8),
                                      ldr.transpose(0, 3, 1, 2))
        # the masks augment.run would write: the preset's for single exposures, the paper's on gamma 2.2 otherwise
        over, under = (exposure_masks(ldr, "diffhdr-code") if kind == "single"
                       else exposure_masks(ldr, "paper", "gamma2.2"))
        np.testing.assert_allclose(it["under"][:, 0].numpy(), under)
        np.testing.assert_allclose(it["over"][:, 0].numpy(), over)
        # another epoch, other parameters
        ds.set_epoch(3)
        assert ds[1]["params"]["seed"] != params.seed
    with pytest.raises(ValueError, match="window 10 is longer"):
        ClipWindowDataset(m, "train", window=10)
    with pytest.raises(ValueError, match="no stored 'alt2'"):
        ClipWindowDataset(m, "train", window=4, aug_kind="alt2")


# exports ---------------------------------------------------------------------------------------------------------
def test_diffhdr_csv_export_matches_the_public_loader_layout(built):
    write_caption(built, "night", "rotation_000", "a lamp", "a corner")
    build(str(built), test="2", progress=False)
    r = cli("export", "v2", "--root", built, "--format", "diffhdr-csv")
    assert r.returncode == 0, r.stderr
    out = built / "_exports/v0002/diffhdr-csv/metadata"
    m = open_manifest(built, "v2")
    for split in ("train", "test"):
        rows = list(csv.DictReader((out / f"metadata_synthetic_{split}.csv").open()))
        assert [list(r) for r in rows] == [["video"]] * len(rows)
        keys = []
        for r in rows:
            v = r["video"]
            # the layout: <root>/<hdri_id>/<clip_id>/frame_%04d.exr; the loader counts from the number in the name
            p = Path(v)
            assert p.name == "frame_0000.exr" and p.is_file() and p.parent.parent.parent == built
            assert int(p.name[6:-4]) == 0 and (p.parent / "frame_0008.exr").is_file()
            keys.append(f"{p.parent.parent.name}/{p.parent.name}")
        assert keys == [c.key for c in m.clips(split)]
        prompts = {r["video"].split("/")[-3] + "_" + r["video"].split("/")[-2]: r["prompt"]
                   for r in csv.DictReader((out / f"prompt_{split}.csv").open())}
        over = {r["video"]: r["prompt"] for r in csv.DictReader((out / f"prompt_over_{split}.csv").open())}
        under = {r["video"]: r["prompt"] for r in csv.DictReader((out / f"prompt_under_{split}.csv").open())}
        for c, r in zip(m.clips(split), rows):
            name = c.hdri_id + "_" + c.clip_id
            assert prompts[name] == (c.caption or "")
            if c.caption:  # the loader joins over + " " + under: that is the structured caption again
                assert over[r["video"]] + " " + under[r["video"]] == c.caption
    assert json.loads((out.parent / "export.json").read_text())["root_hash"] == m.root_hash
    r = cli("export", "v2", "--root", built, "--format", "diffhdr-csv")
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_hf_and_webdataset_exports(built, monkeypatch):
    import webdataset as wds

    m = open_manifest(built, "v1")
    from manifests.export import export

    hf = Path(export(m, "hf", progress=False))
    card = (hf / "README.md").read_text()
    head = card.split("---")[1]
    assert "config_name: clips" in head and "path: data/clips/train.parquet" in head and m.root_hash in card
    t = pq.read_table(hf / "data/clips/test.parquet")
    assert t["key"].to_pylist() == [c.key for c in m.clips("test")]
    a = pq.read_table(hf / "data/augmentations/train.parquet")
    assert a.num_rows == 8 and set(a["kind"].to_pylist()) == {"single", "alt3"}
    # the card's configs and splits are what Hugging Face `datasets` reads (offline, from the folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    cache = str(hf.parent / "hf-cache")
    clips = datasets.load_dataset(str(hf), "clips", cache_dir=cache)
    assert set(clips) == {s for s in ("train", "val", "test") if m.clips(s)}
    assert clips["test"]["key"] == [c.key for c in m.clips("test")]
    augs = datasets.load_dataset(str(hf), "augmentations", split="train", cache_dir=cache)
    assert augs.num_rows == 8 and json.loads(augs[0]["params"])["seed"]

    out = Path(export(m, "webdataset", shard_size="150KB", progress=False))
    shards = sorted(out.glob("train-*.tar"))
    assert len(shards) > 1  # ~150 KB shards of ~150 KB clips
    samples = [s for sh in shards for s in wds.WebDataset(str(sh), shardshuffle=False)]
    assert [json.loads(s["manifest.json"])["key"] for s in samples] == [c.key for c in m.clips("train")]
    s0, c0 = samples[0], m.clips("train")[0]
    assert s0["frame_0004.exr"] == (built / c0.frames[4]).read_bytes()
    assert s0["ldr_0008.png"] == (built / c0.aug("single")[0].frames[8]).read_bytes()
    assert sum(1 for k in s0 if k.endswith(".exr")) == 9


def test_incomplete_work_is_left_out_and_named(bare):
    (bare / "night/rotation_000/clip.json").unlink()  # a clip whose render did not finish
    (bare / "forest/rotation_000/ldr/alt3_00/aug.json").unlink()  # an augmentation that did not finish
    (bare / "sunrise/rotation_000/caption.json").write_text("{not json")  # a broken caption
    r = cli("build", "--root", bare, "--test", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "wrote v0001: 5 clips from 3 HDRIs" in r.stdout and "1 incomplete clips left out" in r.stdout
    assert "note: night/rotation_000: partial (9 frame files but no clip.json)" in r.stderr
    assert "note: forest/rotation_000/ldr/alt3_00: no aug.json (incomplete augmentation, left out)" in r.stderr
    assert "sunrise/rotation_000/caption.json: not valid JSON" in r.stderr and "recorded without a caption" in r.stderr
    m = open_manifest(bare, "v1")
    assert [a.aug_id for a in m.clip("forest/rotation_000").augs] == ["paper_00"]
    assert m.clip("sunrise/rotation_000").caption is None
    assert {c.split for c in m.clips()} == {"train"}  # --test 0: no held-out set
    r = cli("list", "--root", bare)
    assert r.returncode == 0 and r.stdout.startswith("v0001  ") and "5 clips (train 5, val 0, test 0)" in r.stdout


def test_object_store_roots_work_and_root_hash_is_location_free(built):
    """The same data on an fsspec object store (memory://) gives the same root hash; verify and the loader work."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in built.rglob("*"):
        if p.is_file() and not {"manifests", ".tmp"} & set(p.relative_to(built).parts):
            fs.pipe(f"/mf-test/{p.relative_to(built).as_posix()}", p.read_bytes())
    try:
        res = build("memory://mf-test", test="2", progress=False)
        assert res.version == "v0001" and res.record["root_hash"] == open_manifest(built, "v1").root_hash
        m = open_manifest("memory://mf-test/manifests/v0001.parquet")
        assert m.root == "memory:///mf-test" and verify(m, progress=False) == []
        size = (built / "forest/rotation_000/frame_0001.exr").stat().st_size
        fs.pipe("/mf-test/forest/rotation_000/frame_0001.exr", b"x" * 10)
        assert verify(m, progress=False) == ["forest/rotation_000/frame_0001.exr: size changed (10 bytes, the "
                                             f"manifest says {size})"]
        from hdr.dataset.loader import ClipWindowDataset

        local = ClipWindowDataset(open_manifest(built, "v1"), "test", window=3)
        remote = ClipWindowDataset(m, "test", window=3)
        a, b = local[1], remote[1]
        assert a["start"] == b["start"] and all(bool((a[k] == b[k]).all()) for k in ("hdr", "ldr", "over", "under"))
    finally:
        fs.rm("/mf-test", recursive=True)
