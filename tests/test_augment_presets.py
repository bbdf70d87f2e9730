"""The presets that follow other authors' released code, tested on statistics: HDRCNN's virtual camera (hue/saturation
jitter, content-dependent exposure clipping a drawn fraction of the clip, signal-independent noise, clamped sigmoid,
JPEG quality), SingleHDR's training LDR (mean-anchored exposure, shot + read noise with one deviate, one curve of a
DoRF file per clip), every new preset re-made bit for bit from its aug.json, and the presets' ordered pipelines."""
from __future__ import annotations

import colorsys
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hdr.dataset import layout
from hdr.dataset.ldr import make_ldr, remake
from hdr.dataset.records import AugMeta, ClipMeta
from hdr.degrade import curves, presets, steps
from hdr.degrade.presets import PRESETS, PresetError, apply_overrides, degrade, sample_params
from hdr.io import decode_ldr, read_image
from hdr.storage import Store

V1 = Path(__file__).parent / "fixtures" / "dataset_v1"
CLIP = "sunrise/highlight_zoom_in"


def _hdr_clip(t=4, h=24, w=32, seed=1) -> np.ndarray:
    """A log-normal radiance clip (continuous values, no ties) with a colour cast and per-pixel colour variation."""
    r = np.random.default_rng(seed)
    lum = np.exp(r.normal(0.0, 1.5, (t, h, w, 1)))
    return (lum * np.float32([1.0, 0.8, 0.6]) * np.exp(r.normal(0.0, 0.2, (t, h, w, 3)))).astype(np.float32)


def _write_dorf(path: Path, gammas=(1.6, 2.0, 2.4, 3.0)) -> list[str]:
    return curves.write_dorf_gammas(path, gammas)


# --- the hue/saturation step --------------------------------------------------------------------------------------
def _hsv_stdlib(lin: np.ndarray) -> np.ndarray:
    """Hue (degrees), saturation, value of sqrt(lin) by Python's colorsys (an implementation independent of ours)."""
    return np.array([[360.0 * h, s, v] for h, s, v in (colorsys.rgb_to_hsv(*p) for p in np.sqrt(lin.reshape(-1, 3)))])


def test_hue_saturation_draws_hdrcnns_distribution():
    drawn = [steps.sample_steps([{"step": "hue_saturation"}], s)[0] for s in range(600)]
    hue, sat = np.array([d["hue"] for d in drawn]), np.array([d["saturation"] for d in drawn])
    # N(0, 7) degrees and N(0, 0.1): 600 draws put the mean within 3 sigma / sqrt(600) and the std within ~10%
    assert abs(hue.mean()) < 3 * 7 / np.sqrt(600) and abs(hue.std() - 7.0) < 0.7
    assert abs(sat.mean()) < 3 * 0.1 / np.sqrt(600) and abs(sat.std() - 0.1) < 0.01
    assert all(d["applied"] for d in drawn)


def test_hue_saturation_rotates_hue_and_offsets_saturation_by_the_drawn_values_keeping_the_largest_channel():
    r = np.random.default_rng(0)
    # known colours: sqrt-domain saturation in [0.3, 0.7] (no clamping at the drawn offset) and any hue
    h, s, v = r.uniform(0, 1, 400), r.uniform(0.3, 0.7, 400), r.uniform(0.2, 3.0, 400)
    lin = (np.array([colorsys.hsv_to_rgb(*p) for p in zip(h, s, v)]) ** 2).astype(np.float32).reshape(1, 20, 20, 3)
    d = steps.sample_steps([{"step": "hue_saturation"}], 5)[0]
    out = steps.apply_linear(lin, [d])
    before, after = _hsv_stdlib(lin), _hsv_stdlib(out)
    dh = (after[:, 0] - before[:, 0] + 180.0) % 360.0 - 180.0
    assert abs(dh.mean() - d["hue"]) < 1e-3 and dh.std() < 1e-3, (dh.mean(), d["hue"])
    assert np.allclose(after[:, 1] - before[:, 1], d["saturation"], atol=1e-5)
    # HDRCNN works in HSV: the value (largest channel) is kept, in sqrt and so in linear light; luminance is not
    assert np.allclose(out.max(axis=-1), lin.max(axis=-1), rtol=1e-6)
    # gray (hue 0 in HSV) stays gray under a hue rotation alone; a positive offset tints it towards the rotated
    # hue 0, as HDRCNN's HSV arithmetic does; a large offset clamps the saturation to [0, 1]
    gray = np.full((1, 2, 2, 3), 0.3, np.float32)
    assert np.allclose(steps.hue_saturation(gray, 40.0, 0.0), gray, rtol=1e-6)
    assert np.allclose(_hsv_stdlib(steps.hue_saturation(gray, 40.0, 0.1))[:, :2], [40.0, 0.1], atol=1e-4)
    assert np.allclose(np.ptp(steps.hue_saturation(lin, 0.0, -2.0), axis=-1), 0.0, atol=1e-6)
    assert np.allclose(steps.hue_saturation(lin, 0.0, 2.0).min(axis=-1), 0.0, atol=1e-12)


def test_hue_saturation_is_hdrcnns_opencv_recipe():
    """virtualcamera.cpp: pow 0.5, cvtColor RGB2HSV (float: hue in degrees), H += hue, S += sat, HSV2RGB, pow 2."""
    import cv2

    lin = _hdr_clip(t=1, h=16, w=16)[0]
    hsv = cv2.cvtColor(np.sqrt(lin), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + 25.0) % 360.0  # OpenCV's HSV2RGB wraps the hue itself; kept in range here
    hsv[..., 1] = np.clip(hsv[..., 1] + 0.08, 0.0, 1.0)  # the clamp is ours (see docs/augment.md)
    theirs = np.square(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    ours = steps.hue_saturation(lin[None], 25.0, 0.08)[0]
    assert np.allclose(ours, theirs, rtol=2e-5, atol=1e-7)  # OpenCV works in float32, we in float64


# --- hdrcnn --------------------------------------------------------------------------------------------------------
def test_hdrcnn_exposure_clips_the_drawn_fraction_of_the_clip():
    hdr = _hdr_clip()
    n = hdr.size
    for seed in range(12):
        p = sample_params(PRESETS["hdrcnn"], seed, frames=hdr)
        e = p.exposure
        assert e["mode"] == "clip_fraction" and 0.05 <= e["target_fraction"] <= 0.15
        # recount independently with the float32 gain degrade() uses: every channel value of every frame pooled
        achieved = float(np.mean(hdr * np.float32(2.0**p.exposure_stops) >= 1.0))
        assert achieved == e["achieved_fraction"]
        # the quantile is exact on this clip (n < CLIP_SAMPLE, no ties): k = round(target n) values clip, so the
        # fraction is off by at most half a value
        assert abs(achieved - e["target_fraction"]) <= 0.5 / n + 1e-12
        assert 0.05 - 0.5 / n <= achieved <= 0.15 + 0.5 / n


def test_hdrcnn_ldr_frames_clip_that_fraction_and_pixels_mode():
    hdr = _hdr_clip()
    # without the steps that move values after the quantiser (JPEG) or between channels (hue/saturation), the
    # fraction of code 255 is the clipped fraction: + the few values in [curve^-1(254.5/255), 1) that round to 255,
    # +- the values noise (std <= 0.01) moves across 1; measured excess <= 0.3% on this clip, bound 1%
    plain = apply_overrides(PRESETS["hdrcnn"], [("step.jpeg.probability", 0), ("step.hue_saturation.probability", 0)])
    for seed in range(4):
        p = sample_params(plain, seed, frames=hdr)
        f255 = float(np.mean(make_ldr(hdr, "single", plain, p).frames == 255))
        assert p.exposure["target_fraction"] - 0.005 <= f255 <= p.exposure["target_fraction"] + 0.01, (f255, p.exposure)
    pix = replace(PRESETS["hdrcnn"], clip_fraction_of="pixels")
    p = sample_params(pix, 3, frames=hdr)
    assert abs(np.mean(hdr.max(axis=-1) * np.float32(2.0**p.exposure_stops) >= 1) - p.exposure["target_fraction"]) \
        <= 0.5 / (hdr.size // 3)


def test_hdrcnn_exposure_on_a_strided_subsample_of_a_large_clip(monkeypatch):
    hdr = _hdr_clip(t=4, h=48, w=64)
    monkeypatch.setattr(presets, "CLIP_SAMPLE", 4096)  # 36864 values: every 11th (coprime with the row of 192)
    p = sample_params(PRESETS["hdrcnn"], 7, frames=hdr)
    e = p.exposure
    assert e["sampled"] == len(hdr.reshape(-1)[::11]) and e["total"] == hdr.size
    # a quantile from m = 4096 samples: its binomial std sqrt(f (1 - f) / m) <= 0.0056; bound at 3.5 std
    assert abs(e["achieved_fraction"] - e["target_fraction"]) < 0.02
    assert e["achieved_fraction"] == float(np.mean(hdr * np.float32(2.0**p.exposure_stops) >= 1.0))


def test_hdrcnn_noise_curve_and_jpeg_follow_the_virtual_camera():
    # noise: signal-independent Gaussian, std U(0, 0.01), white in time (rho = 0)
    flat = np.full((6, 32, 32, 3), 0.4, np.float32)
    p = replace(sample_params(PRESETS["hdrcnn"], 2, frames=flat), exposure_stops=0.0)
    assert p.sigma_s == 0.0 and 0 < p.sigma_c <= 0.01 and p.rho == 0.0
    _, lin = degrade(flat, p, return_linear=True)
    n = lin - flat
    assert abs(n.std() / p.sigma_c - 1) < 0.03  # 18432 deviates: the std's relative error is ~0.5%
    assert abs(np.corrcoef(n[:-1].ravel(), n[1:].ravel())[0, 1]) < 0.05
    sig = np.array([sample_params(PRESETS["hdrcnn"], s, frames=flat).sigma_c for s in range(300)])
    assert sig.min() >= 0 and sig.max() <= 0.01 and abs(sig.mean() - 0.005) < 0.0005
    # sigmoid n ~ N(0.9, 0.1) clamped to [0.2, 2.5]; JPEG quality min(30 + U{0..74}, 100): P(100) = 5/75
    cfg = PRESETS["hdrcnn"].steps
    drawn = [steps.sample_steps(cfg, s) for s in range(3000)]
    q = np.array([d[2]["quality"] for d in drawn])
    assert q.min() == 30 and q.max() == 100 and abs(np.mean(q == 100) - 5 / 75) < 3 * np.sqrt(0.067 * 0.933 / 3000)
    ns = np.array([float(d[1]["transfer"].split(":")[1]) for d in drawn])
    assert abs(ns.mean() - 0.9) < 0.01 and abs(ns.std() - 0.1) < 0.01


# --- singlehdr -----------------------------------------------------------------------------------------------------
def test_singlehdr_without_the_curve_file_fails_with_one_clear_line(tmp_path, capsys):
    from augment.run import main

    root = tmp_path / "data"
    shutil.copytree(V1, root)
    assert main(["--root", str(root), "--preset", "singlehdr", "--no-ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for words in ("dorfCurves.txt", "DoRF", "Columbia CAVE", "--set step.curve.file="):
        assert words in err, err
    assert not list(root.glob("*/*/ldr/singlehdr_*"))


def test_singlehdr_picks_one_of_the_files_curves_and_the_frames_and_masks_use_it(tmp_path):
    dorf = tmp_path / "dorfCurves.txt"
    names = _write_dorf(dorf)
    assert curves.curve_names(dorf) == names
    preset = apply_overrides(PRESETS["singlehdr"], [("step.curve.file", str(dorf))])
    hdr = _hdr_clip(t=2, h=16, w=16)
    picked = []
    for seed in range(40):
        p = sample_params(preset, seed, frames=hdr)
        c = p.steps[0]
        assert c["curve"] == names[c["index"]] and p.transfer == curves.load_curve_file(dorf, c["index"])
        picked.append(c["index"])
    assert set(picked) == set(range(len(names)))  # uniform over 4 curves: all seen in 40 draws (p miss < 4e-5)
    # noise and JPEG off: the 8-bit codes are round(255 * B(x)) with B the picked curve, read here by the test itself
    quiet = apply_overrides(preset, [("noise_probability", 0), ("step.jpeg.probability", 0)])
    x = np.linspace(0.0, 1.0, 1024)
    for seed in (0, 1, 2):
        p = sample_params(quiet, seed, frames=hdr)
        g = (1.6, 2.0, 2.4, 3.0)[p.steps[0]["index"]]
        made = make_ldr(hdr, "single", quiet, p)
        exposed = np.clip(hdr * np.float32(2.0**p.exposure_stops), 0, 1).astype(np.float64)
        want = np.round(255 * np.interp(exposed, x, np.round(x ** (1 / g), 6)))
        assert np.mean(made.frames == want) > 0.999
        # the masks linearise with that curve: over = Y > 0.95 of B^-1(code / 255) on the first frame (EMA: M_0)
        lin = np.interp(made.frames[0] / 255.0, np.round(x ** (1 / g), 6), x)
        over = (lin @ np.array([0.2126, 0.7152, 0.0722])) > 0.95
        assert made.transfer == p.transfer and np.array_equal(made.over[0] > 0.5, over) and over.any()


def test_singlehdr_exposure_and_noise_follow_its_training_code():
    hdr = _hdr_clip(t=2, h=16, w=16)
    means = []
    for seed in range(200):
        p = sample_params(PRESETS["singlehdr"].with_overrides(steps=()), seed, frames=hdr)
        e = p.exposure
        # scaled to mean 0.5, then t = 2^U[-3, 3]
        assert abs(e["clip_mean"] - float(hdr.astype(np.float64).mean())) < 1e-9
        assert abs(e["clip_mean"] * 2.0 ** (p.exposure_stops - e["relative_stops"]) - 0.5) < 1e-9
        assert -3 <= e["relative_stops"] <= 3
        # one uniform per channel scales both sigmas: sigma_s / sigma_c = (0.08 / 6) / 0.005 channel by channel
        assert np.allclose(np.array(p.sigma_s) / np.array(p.sigma_c), (0.08 / 6) / 0.005)
        means.append(e["relative_stops"])
    assert abs(np.mean(means)) < 3 * (6 / np.sqrt(12)) / np.sqrt(200)
    # std = sigma_s L + sigma_c per channel (shot term proportional to L, the same deviate for both terms)
    flat = np.full((4, 48, 48, 3), 0.25, np.float32)
    p = replace(sample_params(PRESETS["singlehdr"].with_overrides(steps=()), 3, frames=flat), exposure_stops=0.0)
    _, lin = degrade(flat, p, return_linear=True)
    want = np.array(p.sigma_s) * 0.25 + np.array(p.sigma_c)
    assert np.allclose((lin - flat).reshape(-1, 3).std(axis=0) / want, 1.0, atol=0.04)  # 9216 deviates a channel


def test_dorf_files_with_many_curves_and_bad_indices(tmp_path):
    dorf = tmp_path / "dorf.txt"
    _write_dorf(dorf, gammas=(2.0, 2.2))
    a, b = curves.load_curve_file(dorf, 0), curves.load_curve_file(dorf, 1)
    assert a != b and abs(curves.encode(b, np.array([0.5]))[0] - 0.5 ** (1 / 2.2)) < 1e-4
    with pytest.raises(curves.CurveError, match="index 2 out of range"):
        curves.load_curve_file(dorf, 2)
    fixed = apply_overrides(PRESETS["singlehdr"], [("step.curve.file", str(dorf)), ("step.curve.index", 1)])
    assert sample_params(fixed, 0, frames=_hdr_clip(t=1, h=4, w=4)).transfer == b
    with pytest.raises(PresetError, match="computed on the clip"):
        sample_params(fixed, 0)


# --- records ------------------------------------------------------------------------------------------------------
def _record(store: Store, rel: str, preset, params, made) -> AugMeta:
    """The aug.json augment writes (augment/clip.py), through JSON on disk and back."""
    AugMeta(hdri_id="sunrise", clip_id="highlight_zoom_in", aug_id=rel.rsplit("/", 1)[-1], preset=preset.name,
            preset_settings=preset.to_json(), seed=params.seed, dataset_seed=0, seed_derivation="test",
            params=params.to_json(), frames=[layout.LDR_FRAME % t for t in range(len(made.frames))],
            masks={"over": layout.OVER_MASK, "under": layout.UNDER_MASK, "mode": made.mask_mode,
                   "linearisation": made.transfer}, format=made.format, source_clip={},
            step_results=made.step_results or None, toolkit_version="test", created="now",
            seconds=0.0).write(store, f"{rel}/{layout.AUG_JSON}")
    return AugMeta.read(store, f"{rel}/{layout.AUG_JSON}")


@pytest.mark.parametrize("name", ["hdrcnn", "singlehdr"])
def test_new_presets_are_remade_bit_for_bit_from_aug_json(name, tmp_path):
    store = Store(str(tmp_path))
    meta = ClipMeta.read(Store(str(V1)), f"{CLIP}/clip.json")
    hdr = np.stack([read_image(V1 / CLIP / f) for f in meta.files])
    preset = PRESETS[name]
    if name == "singlehdr":
        _write_dorf(tmp_path / "dorfCurves.txt")
        preset = apply_overrides(preset, [("step.curve.file", str(tmp_path / "dorfCurves.txt"))])
    for seed in (3, 4):
        params = sample_params(preset, seed, frames=hdr)
        made = make_ldr(hdr, "single", preset, params)
        aug = _record(store, f"{CLIP}/ldr/{name}_{seed:02d}", preset, params, made)
        assert aug.params["exposure"]["mode"] == ("clip_fraction" if name == "hdrcnn" else "mean")
        curves._TABLES.clear()  # a measured curve comes back from the file the record names
        again = remake(hdr, aug)
        assert np.array_equal(again.frames, made.frames) and np.array_equal(again.over, made.over)
        assert np.array_equal(again.under, made.under) and again.transfer == aug.masks["linearisation"]


def test_new_presets_through_augment_run(tmp_path):
    from augment.run import main

    root = tmp_path / "data"
    shutil.copytree(V1, root)
    _write_dorf(tmp_path / "dorfCurves.txt")
    store = Store(str(root))
    meta = ClipMeta.read(store, f"{CLIP}/clip.json")
    hdr = np.stack([read_image(root / CLIP / f) for f in meta.files])
    for name, extra in (("hdrcnn", []), ("singlehdr", ["--set", f"step.curve.file={tmp_path / 'dorfCurves.txt'}"])):
        assert main(["--root", str(root), "--preset", name, "--no-ray", "--quiet", *extra]) == 0
        base = f"{CLIP}/ldr/{name}_00"
        aug = AugMeta.read(store, f"{base}/{layout.AUG_JSON}")
        made = remake(hdr, aug)
        for t, f in enumerate(aug.frames):
            assert np.array_equal(made.frames[t], decode_ldr(store.read_bytes(f"{base}/{f}"), f))


# --- pipelines, records of the older presets, overrides ------------------------------------------------------------
def test_pipelines_are_ordered_and_listed_by_the_help():
    from augment.run import build_parser

    assert PRESETS["paper"].pipeline() == ["exposure", "noise", "srgb", "clip", "quantize"]
    assert PRESETS["hdrcnn"].pipeline() == ["hue_saturation", "exposure", "noise", "curve", "clip", "quantize", "jpeg"]
    assert PRESETS["singlehdr"].pipeline() == ["exposure", "noise", "curve", "clip", "quantize", "jpeg"]
    assert PRESETS["expandnet"].pipeline() == ["tmo", "clip", "quantize"]
    text = build_parser().format_help()
    for name, preset in PRESETS.items():
        assert sum(line.split()[:1] == [name] and " -> ".join(preset.pipeline()) in line
                   for line in text.splitlines()) == 1, name


def test_older_presets_records_have_no_new_fields():
    for name in ("paper", "diffhdr-code", "realistic-video", "expandnet"):
        s = PRESETS[name].to_json()
        assert not {"clip_fraction_range", "clip_fraction_of", "exposure_mean", "noise_model", "pipeline"} & set(s)
        p = sample_params(PRESETS[name], 9).to_json()
        assert "exposure" not in p and "noise_model" not in p
    assert PRESETS["hdrcnn"].to_json()["clip_fraction_range"] == [0.05, 0.15]
    assert PRESETS["singlehdr"].to_json()["noise_model"] == "singlehdr"


def test_overrides_are_checked_in_one_place():
    from augment.run import parse_overrides

    for bad in ("sigma=3", "a.rho=1", "step.video=1"):
        with pytest.raises(PresetError) as cli_error:
            parse_overrides([bad])
        with pytest.raises(PresetError) as lib_error:
            apply_overrides(PRESETS["paper"], [(bad.split("=")[0], 1)])
        assert str(cli_error.value) == str(lib_error.value) and "\n" not in str(cli_error.value)
    assert parse_overrides(["clip_fraction_range=[0.1, 0.2]"]) == (("clip_fraction_range", (0.1, 0.2)),)
