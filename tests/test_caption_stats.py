"""Caption stage without a model: frame sampling, the Reinhard display, the masks shown, the statistics backend, the
caption.json contract, resume/conflict/overwrite and the CLI (one process and Ray)."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from hdr.degrade.masks import exposure_masks_paper
from caption import stats
from caption.clip import CAPTION_JSON, CaptionSettings, caption_dataset, check_record
from caption.frames import (OVER_COLOUR, UNDER_COLOUR, ClipInputError, load_clip_frames, reinhard_display,
                            sample_indices, vlm_images)
from caption.run import main as caption_main
from hdr.color import reinhard_per_channel, srgb_oetf
from hdr.io import read_image
from hdr.storage import Store


def synthetic_clip(frames=3, h=64, w=64):
    """HDR frames with a very bright white top half, a very dark bottom-left quadrant and a mid-grey-red
    bottom-right; masks of the LDR made at exposure 0 (clip at 1, sRGB, 8 bit)."""
    hdr = np.empty((frames, h, w, 3), np.float32)
    hdr[:, : h // 2] = (40.0, 40.0, 40.0)
    hdr[:, h // 2 :, : w // 2] = (0.002, 0.002, 0.003)
    hdr[:, h // 2 :, w // 2 :] = (0.5, 0.08, 0.05)
    ldr = np.round(srgb_oetf(np.clip(hdr, 0, 1)) * 255).astype(np.uint8)
    over, under = exposure_masks_paper(ldr)
    display, _ = reinhard_display(hdr)
    return hdr, display, over, under


def test_stats_backend_describes_bright_top_half_and_dark_bottom_left():
    hdr, display, over, under = synthetic_clip()
    d = stats.describe(display, over, under, hdr)
    assert d["overexposed"].startswith("white area across the top of the frame")
    assert "very bright" in d["overexposed"] and "50% of the frame" in d["overexposed"]
    assert "above the rest of the frame" in d["overexposed"]
    assert d["underexposed"].startswith("black area in the bottom-left of the frame")
    assert "very dark" in d["underexposed"] and "25% of the frame" in d["underexposed"]
    assert "below the rest of the frame" in d["underexposed"]
    over_words = set(d["overexposed"].replace("-", " ").replace(",", " ").split())
    assert not over_words & {"bottom", "right", "left", "centre"}
    assert "top" not in d["underexposed"].replace("-", " ").split()
    # the bottom-left is 2e-3 against a median of the rest of ~ 0.15-40: at least 6 stops below
    stops = int(d["underexposed"].split("about ")[1].split(" stop")[0])
    assert stops >= 6


def test_stats_absent_region_growth_and_patches():
    k, h, w = 4, 48, 64
    over = np.zeros((k, h, w), np.float32)
    under = np.zeros((k, h, w), np.float32)
    for t, r in enumerate((4, 6, 8, 10)):  # a disc in the centre growing over the clip
        cv2.circle(over[t], (w // 2, h // 2), r, 1.0, -1)
    under[:, :6, :6] = 1.0  # two dark patches in the top corners
    under[:, :6, -6:] = 1.0
    display = np.full((k, h, w, 3), 128, np.uint8)
    d = stats.describe(display, over, under)
    assert "centre of the frame" in d["overexposed"] and "growing from" in d["overexposed"]
    s = stats.region_summary(over)
    assert s["area_first"] < s["area_last"]
    assert "2 separate patches" in d["underexposed"] and "top" in d["underexposed"]
    d = stats.describe(display, np.zeros_like(over), under)
    assert d["overexposed"] == "none"


@pytest.mark.parametrize("box, words", [
    ((slice(None), slice(0, 10)), "along the left side"),
    ((slice(40, 48), slice(None)), "across the bottom"),
    ((slice(18, 30), slice(26, 38)), "in the centre"),
    ((slice(36, 48), slice(50, 64)), "in the bottom-right"),
    ((slice(0, 10), slice(26, 38)), "at the top"),
    ((slice(18, 30), slice(0, 10)), "on the left"),
    ((slice(2, 46), slice(2, 62)), "over most of the frame"),
])
def test_location_words(box, words):
    m = np.zeros((48, 64))
    m[box] = 1
    assert stats.location(m).startswith(words)


@pytest.mark.parametrize("rgb, name", [
    ((1.0, 1.0, 1.0), "white"), ((0.0, 0.0, 0.0), "black"), ((0.5, 0.5, 0.5), "grey"), ((0.95, 0.1, 0.1), "red"),
    ((0.1, 0.8, 0.1), "green"), ((0.1, 0.2, 0.95), "blue"), ((0.95, 0.9, 0.1), "yellow"),
    ((1.0, 0.55, 0.0), "orange"), ((0.2, 0.1, 0.02), "dark orange"), ((0.7, 0.8, 0.95), "pale blue"),
])
def test_colour_names(rgb, name):
    assert stats.colour_name(np.array([rgb]))[0] == name


def test_sample_indices_are_uniform_and_include_the_ends():
    assert sample_indices(9, 4) == [0, 3, 5, 8]
    assert sample_indices(81, 4) == [0, 27, 53, 80]
    assert sample_indices(3, 4) == [0, 1, 2]
    assert sample_indices(9, 1) == [4]


def test_reinhard_display_is_hdr_color_reinhard_and_exposure_invariant():
    rng = np.random.default_rng(0)
    hdr = (rng.lognormal(0.0, 2.0, (2, 8, 8, 3))).astype(np.float32)
    disp, scale = reinhard_display(hdr)
    want = np.round(np.clip(srgb_oetf(reinhard_per_channel(hdr * np.float32(scale))), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(disp, want)
    disp8, scale8 = reinhard_display(hdr * 8.0)  # the key normalisation removes a global exposure change
    assert scale8 == pytest.approx(scale / 8.0, rel=1e-4)
    assert np.abs(disp8.astype(int) - disp.astype(int)).max() <= 1
    flat, _ = reinhard_display(np.full((1, 4, 4, 3), 123.0, np.float32))  # log-average lands on the key 0.18
    assert abs(int(flat[0, 0, 0, 0]) - round(float(srgb_oetf(np.float64(0.18 / 1.18))) * 255)) <= 1


def test_clip_frames_are_tonemapped_exrs_with_the_single_exposure_aug_masks(tiny_dataset):
    store = Store(tiny_dataset)
    clip = load_clip_frames(store, "sunrise", "rotation_000", k=4)
    assert clip.indices == [0, 3, 5, 8] and clip.aug_id == "paper_00"  # not alt3_00, which sorts first
    crel = tiny_dataset / "sunrise" / "rotation_000"
    hdr = np.stack([read_image(crel / f"frame_{i:04d}.exr") for i in clip.indices])
    np.testing.assert_array_equal(clip.display, reinhard_display(hdr)[0])
    for t, i in enumerate(clip.indices):
        over = cv2.imread(str(crel / "ldr" / "paper_00" / f"over_{i:04d}.png"), cv2.IMREAD_UNCHANGED) / 255.0
        np.testing.assert_allclose(clip.over[t], over, atol=1e-6)
    alt = load_clip_frames(store, "sunrise", "rotation_000", k=4, aug="alt3_00")
    assert alt.aug_id == "alt3_00" and not np.array_equal(alt.over, clip.over)
    with pytest.raises(ClipInputError, match="ldr/nope/aug.json: no such finished augmentation"):
        load_clip_frames(store, "sunrise", "rotation_000", aug="nope")
    plain = load_clip_frames(store, "sunrise", "rotation_000", aug="none")
    assert plain.aug_id is None and plain.mask_source.startswith("hdr-exposure-0")


def test_vlm_images_outline_the_regions_without_tinting_them(tiny_dataset):
    clip = load_clip_frames(Store(tiny_dataset), "sunrise", "rotation_000", k=4)
    clip.over[:] = 0
    clip.under[:] = 0
    clip.over[:, 4:16, 4:16] = 1.0  # a square region, 12x12 of 32x32
    imgs = vlm_images(clip, "contour", min_pixels=64 * 64, max_pixels=448 * 448)
    assert len(imgs) == 4 and imgs[0].shape == (64, 64, 3)  # 32x32 scaled up to the model's minimum, x32 sides
    plain = vlm_images(clip, "none", min_pixels=64 * 64)
    outline = np.all(imgs[0] == OVER_COLOUR, -1)
    assert outline.sum() > 0 and not np.all(imgs[0] == UNDER_COLOUR, -1).any()
    ys, xs = np.nonzero(outline)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 31, 8, 31)  # the square's border at 2x
    np.testing.assert_array_equal(imgs[0][12:28, 12:28], plain[0][12:28, 12:28])  # interior colours untouched
    np.testing.assert_array_equal(imgs[0][40:, 40:], plain[0][40:, 40:])
    sep = vlm_images(clip, "separate", min_pixels=64 * 64)
    assert len(sep) == 8 and np.all(sep[1][8:32, 8:32] == OVER_COLOUR)
    assert np.all(sep[1] == OVER_COLOUR, -1).sum() == 24 * 24
    rng = np.random.default_rng(0)
    clip.under[:] = rng.random(clip.under.shape) < 0.01  # speckle (isolated pixels): no outline at all
    assert not np.all(vlm_images(clip, "contour", min_pixels=64 * 64)[0] == UNDER_COLOUR, -1).any()
    clip.under[:] = 0
    clip.under[:, 20:30, 2:30] = 1.0  # a real region next to it is outlined
    assert np.all(vlm_images(clip, "contour", min_pixels=64 * 64)[0] == UNDER_COLOUR, -1).any()
    big = vlm_images(clip, "contour", min_pixels=64 * 64, max_pixels=128 * 128)
    assert big[0].shape[0] % 32 == 0 and big[0].shape[0] * big[0].shape[1] <= 128 * 128


def _captions(root):
    out = {}
    for p in sorted(root.glob(f"*/*/{CAPTION_JSON}")):
        rec = json.loads(p.read_text())
        check_record(rec)
        out[f"{rec['hdri_id']}/{rec['clip_id']}"] = rec
    return out


def test_fixture_clips_have_valid_stats_captions(tiny_dataset):
    caps = _captions(tiny_dataset)
    assert len(caps) == 6
    for key, rec in caps.items():
        assert rec["backend"] == "stats" and rec["fallback"] is None and rec["attempts"] == 1
        assert rec["source"] == {"aug_id": "paper_00"} and rec["frame_indices"] == [0, 3, 5, 8]
        assert json.loads(rec["raw_text"])["overexposed"] == rec["overexposed"]
        assert rec["caption"] == f"[overexposed: {rec['overexposed']}]; [underexposed: {rec['underexposed']}]"
    assert "area" in caps["sunrise/rotation_000"]["underexposed"]


def test_resume_skips_conflicts_are_kept_and_overwrite_redoes(tiny_dataset):
    path = tiny_dataset / "night" / "rotation_000" / CAPTION_JSON
    before = path.read_bytes()
    res = caption_dataset(str(tiny_dataset))
    assert set(res.values()) == {"skipped"} and path.read_bytes() == before
    three = CaptionSettings(frames=3)
    res = caption_dataset(str(tiny_dataset), settings=three)
    assert all(v.startswith("conflict: captioned with other settings (prompt_hash") for v in res.values())
    assert path.read_bytes() == before
    res = caption_dataset(str(tiny_dataset), settings=three, overwrite=True)
    assert set(res.values()) == {"written"}
    assert json.loads(path.read_text())["frame_indices"] == [0, 4, 8]
    res = caption_dataset(str(tiny_dataset), settings=CaptionSettings(frames=3, aug="alt3_00"))
    assert all("source aug 'paper_00' -> 'alt3_00'" in v for v in res.values())


def test_cli_stats_one_process_records_the_run_and_reports_a_broken_clip(tiny_dataset):
    for p in tiny_dataset.glob(f"*/*/{CAPTION_JSON}"):
        p.unlink()
    os.remove(tiny_dataset / "forest" / "rotation_000" / "frame_0003.exr")
    (tiny_dataset / "night" / "highlight_zoom_in" / "frame_0005.exr").write_bytes(b"not an exr at all")
    rc = caption_main(["--dataset", str(tiny_dataset), "--backend", "stats", "--no-ray", "--batch-size", "4"])
    assert rc == 1
    caps = _captions(tiny_dataset)
    assert len(caps) == 4 and "forest/rotation_000" not in caps and "night/highlight_zoom_in" not in caps
    runs = list((tiny_dataset / "_runs").glob("caption-*.json"))
    assert len(runs) == 1
    run = json.loads(runs[0].read_text())
    assert run["counts"] == {"written": 4, "skipped": 0, "conflict": 0, "failed": 2}
    assert run["problems"][0] == "forest/rotation_000: failed: forest/rotation_000/frame_0003.exr: missing frame"
    assert run["problems"][1].startswith("night/highlight_zoom_in: failed: night/highlight_zoom_in/frame_0005.exr: ")
    assert len(run["problems"]) == 2


@pytest.fixture
def ray_local():
    """A private Ray instance (address="local": never join another Ray instance running on this machine)."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_cli_with_ray_writes_the_same_captions_as_one_process(tiny_dataset, tmp_path, ray_local):
    other = tmp_path / "copy"
    shutil.copytree(tiny_dataset, other)
    args = ["--backend", "stats", "--batch-size", "2", "--frames", "3", "--overwrite"]
    assert caption_main(["--dataset", str(tiny_dataset), "--no-ray", *args]) == 0
    assert caption_main(["--dataset", str(other), "--ray", *args]) == 0
    a, b = _captions(tiny_dataset), _captions(other)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        for field in ("caption", "scene", "prompt_hash", "frame_indices", "model", "raw_text"):
            assert a[key][field] == b[key][field], (key, field)
    assert caption_main(["--dataset", str(other), "--no-ray", *args[:-1]]) == 0  # resume: nothing to do


def test_vllm_backend_fails_with_one_clear_line_without_vllm_or_gpu(tiny_dataset, capsys):
    rc = caption_main(["--dataset", str(tiny_dataset), "--backend", "vllm", "--model", "some/model", "--overwrite",
                       "--no-ray"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the vllm backend") and ("pip install vllm" in err or "CUDA" in err)


def test_missing_model_folder_is_one_line(tiny_dataset, tmp_path, capsys):
    rc = caption_main(["--dataset", str(tiny_dataset), "--model", str(tmp_path / "nope"), "--overwrite", "--no-ray"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {tmp_path / 'nope'}: no such model folder"



def test_prompt_hash_tracks_the_question_not_the_clip():
    from caption.clip import settings_hash
    from caption.prompt import user_text

    base = settings_hash("qwen3vl", CaptionSettings())
    assert base == settings_hash("qwen3vl", CaptionSettings(attempts=5))  # retries do not change the question
    for other in (CaptionSettings(mask_mode="separate"), CaptionSettings(frames=6), CaptionSettings(key=0.36),
                  CaptionSettings(max_pixels=256 * 256)):
        assert settings_hash("qwen3vl", other) != base
    assert settings_hash("stats", CaptionSettings()) == settings_hash("stats", CaptionSettings(mask_mode="none"))
    assert settings_hash("stats", CaptionSettings()) != base
    text = user_text(4, [0, 3, 5, 8], "rotation_000", "contour", "at the top of the frame, 5% of the frame", "none")
    assert "MAGENTA" in text and "overexposed: at the top of the frame, 5% of the frame; underexposed: none." in text
    assert "MAGENTA" not in user_text(4, [0, 3, 5, 8], "rotation_000", "none", "none", "none")


def test_check_record_rejects_contract_violations(tiny_dataset):
    rec = json.loads((tiny_dataset / "sunrise" / "rotation_000" / CAPTION_JSON).read_text())
    check_record(rec)
    for key, value, why in (("caption", "[overexposed: x]", "caption: not"),
                            ("attempts", 0, "attempts: 0; expected >= 1"),
                            ("backend", "gpt", "backend: 'gpt'"), ("model", {"id": "x"}, "model: expected"),
                            ("scene", 3, "scene: expected str or null"), ("source", {}, "source: expected")):
        bad = dict(rec, **{key: value})
        with pytest.raises(ValueError, match=why):
            check_record(bad)
    with pytest.raises(ValueError, match="prompt_hash: missing"):
        check_record({k: v for k, v in rec.items() if k != "prompt_hash"})
