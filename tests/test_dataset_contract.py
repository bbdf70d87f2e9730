"""The dataset contract (hdr.dataset): records validate with one-line errors, datasets written before the contract
moved still read (schema 1), and every stored LDR clip is re-made bit for bit from its aug.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hdr.dataset import layout
from hdr.dataset.ldr import make_ldr, remake, sequence_spec
from hdr.dataset.records import AugMeta, CaptionMeta, ClipMeta, RecordError
from hdr.degrade.presets import PRESETS, sample_params
from hdr.io import decode_ldr, read_image
from hdr.storage import Store, UnsafePathError

V1 = Path(__file__).parent / "fixtures" / "dataset_v1"
CLIP = "sunrise/highlight_zoom_in"


@pytest.fixture
def v1(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(V1, root)
    return root


def _hdr(store, meta: ClipMeta):
    return np.stack([read_image(store.path(f"{CLIP}/{name}")) for name in meta.files])


def test_v1_records_read_and_write_back_byte_identical():
    store = Store(str(V1))
    seen = 0
    for cls, pattern in ((ClipMeta, "*/*/clip.json"), (AugMeta, "*/*/ldr/*/aug.json"),
                         (CaptionMeta, "*/*/caption.json")):
        for rel in store.glob(pattern):
            rec = cls.read(store, rel)
            assert (json.dumps(rec.to_json(), indent=1) + "\n").encode() == store.read_bytes(rel)
            seen += 1
    assert seen == 5  # one clip, three augmentations, one caption


def test_v1_ldr_frames_and_masks_are_remade_bit_for_bit_from_aug_json():
    store = Store(str(V1))
    meta = ClipMeta.read(store, f"{CLIP}/{layout.CLIP_JSON}")
    hdr = _hdr(store, meta)
    kinds = set()
    for aid in layout.finished_augs(store, "sunrise", "highlight_zoom_in"):
        base = layout.aug_rel("sunrise", "highlight_zoom_in", aid)
        aug = AugMeta.read(store, f"{base}/{layout.AUG_JSON}")
        made = remake(hdr, aug)
        kinds.add(aug.kind)
        assert made.mask_mode == aug.masks["mode"] and made.transfer == aug.masks["linearisation"]
        assert made.format == aug.format
        for t in range(len(aug.frames)):
            frame = decode_ldr(store.read_bytes(f"{base}/{aug.frames[t]}"), aug.frames[t])
            assert np.array_equal(made.frames[t], frame), aid
            over = decode_ldr(store.read_bytes(f"{base}/{aug.over[t]}"), aug.over[t])
            assert np.array_equal(np.round(made.over[t] * 255).astype(np.uint8), over), aid
        if aug.alternating:
            assert made.exposures == aug.alternating["exposure"]
    assert kinds == {"single", "alt3"}


def test_the_loader_and_augment_make_the_same_ldr():
    """The loader's on-the-fly window equals the same frames of the whole clip made by make_ldr (EV cycle from t0)."""
    store = Store(str(V1))
    hdr = _hdr(store, ClipMeta.read(store, f"{CLIP}/{layout.CLIP_JSON}"))
    p = sample_params(PRESETS["paper"], 7)
    whole = make_ldr(hdr, "alt3", PRESETS["paper"], p)
    tail = make_ldr(hdr[1:], "alt3", PRESETS["paper"], p, start=1)
    assert tail.exposures == whole.exposures[1:]
    assert sequence_spec("alt2", PRESETS["diffhdr-code"]) == ("gamma2.2", "paper")
    assert sequence_spec("single", PRESETS["diffhdr-code"]) == ("srgb", "diffhdr-code")
    with pytest.raises(ValueError, match="kind 'alt4'"):
        make_ldr(hdr, "alt4", PRESETS["paper"], p)


def test_v1_dataset_builds_a_manifest_and_loads(v1):
    from hdr.dataset import open_manifest
    from hdr.dataset.loader import ClipWindowDataset
    from manifests.build import build

    res = build(str(v1), test="0", progress=False)
    assert res.version == "v0001" and not res.record["problems"], res.record["problems"]
    m = open_manifest(str(v1), "v0001")
    (c,) = m.clips()
    assert {a.kind for a in c.augs} == {"single", "alt3"} and c.caption.startswith("[overexposed: ")
    item = ClipWindowDataset(m, "train", window=3, ldr="stored", preset="paper")[0]
    assert tuple(item["ldr"].shape) == (3, 3, 8, 16)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("seed"), "aug.json: seed: missing"),
    (lambda d: d.update(seed="3"), "aug.json: seed: expected int, got str"),
    (lambda d: d.update(schema="hdr-toolkit/aug/9"), "aug.json: schema: version 9 cannot be read"),
    (lambda d: d.update(schema="hdr-toolkit/clip/1"), "aug.json: schema: 'hdr-toolkit/clip/1' is not a aug.json"),
    (lambda d: d["frames"].__setitem__(0, "../x.png"), "aug.json: frames[0]"),
    (lambda d: d["masks"].update(over="over.png"), "aug.json: masks.over: 'over.png' is not a frame-number pattern"),
    (lambda d: d["alternating"]["ev"].pop(), "aug.json: alternating.ev: 2 values for 3 frames"),
])
def test_bad_aug_json_is_one_line_naming_file_and_field(v1, edit, message):
    rel = f"{CLIP}/ldr/alt3_00/{layout.AUG_JSON}"
    data = json.loads((v1 / rel).read_text())
    edit(data)
    (v1 / rel).write_text(json.dumps(data))
    with pytest.raises((RecordError, UnsafePathError)) as e:  # an unsafe name is its own error (manifests refuse it)
        AugMeta.read(Store(str(v1)), rel)
    msg = str(e.value)
    assert "\n" not in msg and message in msg and str(v1) in msg


def test_bad_clip_json_and_caption_json(v1):
    store = Store(str(v1))
    rel = f"{CLIP}/{layout.CLIP_JSON}"
    data = json.loads((v1 / rel).read_text())
    data["frames"][1]["bytes"] = "12"
    (v1 / rel).write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"clip.json: frames\[1\].bytes: expected int"):
        ClipMeta.read(store, rel)
    (v1 / rel).write_text("{not json")
    with pytest.raises(RecordError, match="clip.json: not valid JSON"):
        ClipMeta.read(store, rel)
    crel = f"{CLIP}/{layout.CAPTION_JSON}"
    cap = json.loads((v1 / crel).read_text())
    cap["overexposed"] = " "
    (v1 / crel).write_text(json.dumps(cap))
    with pytest.raises(RecordError, match="caption.json: overexposed: empty"):
        CaptionMeta.read(store, crel)


def test_unknown_keys_are_kept_and_records_validate_before_writing(tmp_path):
    store = Store(str(V1))
    rel = f"{CLIP}/ldr/paper_00/{layout.AUG_JSON}"
    data = json.loads(store.read_bytes(rel))
    data["added_by_a_newer_writer"] = {"x": 1}
    rec = AugMeta.from_json(data, rel)
    assert rec.extra == {"added_by_a_newer_writer": {"x": 1}} and rec.to_json() == data
    rec.seed = "not an int"
    out = Store(str(tmp_path))
    with pytest.raises(RecordError, match="seed: expected int"):
        rec.write(out, "x/aug.json")
    assert not (tmp_path / "x" / "aug.json").exists()


def test_layout_names():
    assert layout.aug_id("single", "paper", 0) == "paper_00" and layout.aug_id("alt3", "paper", 2) == "alt3_02"
    assert layout.aug_rel("h", "c", "paper_00") == "h/c/ldr/paper_00"
    assert [layout.is_hdri_name(n) for n in ("sunrise", "_runs", ".scratch", "manifests")] == [True, False, False,
                                                                                              False]
    assert layout.finished_clips(Store(str(V1))) == {("sunrise", "highlight_zoom_in")}
