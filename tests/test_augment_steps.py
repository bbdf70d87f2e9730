"""Camera steps of the degradation (hdr.degrade.curves, hdr.degrade.steps), tested on statistics: curve shapes and
exact inverses, the quantiser on any curve, white-balance channel ratios, JPEG and codec error bands, the codec's
temporal (I/P-frame) artifacts, and a whole preset re-made bit for bit from its aug.json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hdr.dataset import layout
from hdr.dataset.ldr import make_ldr, remake
from hdr.dataset.records import AugMeta, ClipMeta
from hdr.degrade import curves, steps
from hdr.degrade.presets import PRESETS, PresetError, apply_overrides, linear_to_ldr8, load_preset, sample_params
from hdr.io import decode_ldr, read_image
from hdr.storage import Store

V1 = Path(__file__).parent / "fixtures" / "dataset_v1"
X = np.linspace(0.0, 1.0, 4097)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("spec", ["srgb", "gamma2.2", "gamma:1.8", "sigmoid:0.9:0.6", "sigmoid:1.4:0.25"])
def test_curves_are_monotone_from_0_to_1_with_exact_inverses(spec):
    y = curves.encode(spec, X)
    assert y[0] == 0.0 and abs(y[-1] - 1.0) < 1e-12 and np.all(np.diff(y) > 0)
    assert np.max(np.abs(curves.decode(spec, y) - X)) < 1e-9


def test_sigmoid_is_hdrcnns_formula_and_the_default_draws_follow_its_distribution():
    n, a = 0.9, 0.6
    assert np.allclose(curves.encode(curves.sigmoid_spec(n, a), X), (1 + a) * X**n / (X**n + a))
    drawn = [steps.sample_steps([{"step": "curve"}], s)[0]["transfer"] for s in range(400)]
    ns = np.array([float(d.split(":")[1]) for d in drawn])
    a_s = np.array([float(d.split(":")[2]) for d in drawn])
    assert abs(ns.mean() - 0.9) < 0.02 and abs(ns.std() - 0.1) < 0.02
    assert abs(a_s.mean() - 0.6) < 0.02 and abs(a_s.std() - 0.1) < 0.02


@pytest.mark.parametrize("spec", ["gamma:1.8", "sigmoid:0.9:0.6", "gamma:0.4"])
def test_the_quantiser_encodes_with_the_curve_exactly(spec):
    """code = round(255 * curve(x)) except exactly on a boundary; gamma:0.4 is steep enough to need the search."""
    x = np.random.default_rng(0).random(200_000).astype(np.float32)
    got = linear_to_ldr8(x, "round", spec)
    want = np.round(255.0 * curves.encode(spec, x.astype(np.float64))).astype(np.int64)
    assert np.mean(got == want) > 0.9999 and np.max(np.abs(got.astype(np.int64) - want)) <= 1


def test_measured_curve_files_dorf_and_columns(tmp_path):
    x = np.linspace(0, 1, 1024)
    dorf = tmp_path / "dorfCurves.txt"
    dorf.write_text("agfacolor-futura-100CD\ngraph\nI =\n" + " ".join(f"{v:.6f}" for v in x)
                    + "\nB =\n" + " ".join(f"{v:.6f}" for v in x**0.5) + "\n")
    spec = curves.load_curve_file(dorf)
    assert spec.startswith("table:") and abs(curves.encode(spec, np.array([0.25]))[0] - 0.5) < 1e-3
    cols = tmp_path / "curve.txt"
    cols.write_text("\n".join(f"{a} {b}" for a, b in zip(x, x**0.5)))
    assert abs(curves.decode(curves.load_curve_file(cols), np.array([0.5]))[0] - 0.25) < 1e-3
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0\n0.5 0.7\n1 0.6\n")
    with pytest.raises(curves.CurveError, match="must increase"):
        curves.load_curve_file(bad)
    with pytest.raises(curves.CurveError, match="cannot be shipped"):
        curves.load_curve_file(tmp_path / "missing.txt")


def test_white_balance_gains_follow_the_colour_temperature():
    assert np.allclose(steps.white_balance_gains(6504.0), [1, 1, 1], atol=2e-3)
    warm, cool = steps.white_balance_gains(3500.0), steps.white_balance_gains(9000.0)
    assert warm[0] / warm[2] > 2.0 and cool[0] / cool[2] < 0.8  # warm: R over B; cool: B over R
    gray = np.full((2, 4, 4, 3), 0.18, np.float32)
    out = steps.apply_linear(gray, [{"step": "white_balance", "applied": True, "gains": warm}])
    assert np.allclose(out[0, 0, 0] / 0.18, warm, rtol=1e-6)
    y = out[..., 0] * 0.2126 + out[..., 1] * 0.7152 + out[..., 2] * 0.0722
    assert np.allclose(y, 0.18, rtol=1e-5)  # luminance is kept: the cast changes the colour, not the exposure


def _texture(t=8, h=48, w=64, moving=True):
    r = np.random.default_rng(3)
    base = (r.random((h + t, w + t, 3)) * 255).astype(np.uint8)
    base = np.clip(base.astype(np.float32), 0, 255)
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 1.5).astype(np.uint8)
    return np.stack([base[i:i + h, i:i + w] if moving else base[:h, :w] for i in range(t)])


def test_jpeg_error_grows_as_quality_falls_and_is_deterministic():
    f = _texture(t=2)
    q95, q30 = steps.jpeg_roundtrip(f, 95), steps.jpeg_roundtrip(f, 30)
    assert np.array_equal(q30, steps.jpeg_roundtrip(f, 30))
    assert _psnr(q95, f) > _psnr(q30, f) + 5 and 20 < _psnr(q30, f) < 40


def test_video_roundtrip_error_band_determinism_and_bitrate():
    f = _texture(t=8, h=47, w=63)  # odd size: padded for yuv420p and cropped back
    hi, info_hi = steps.video_roundtrip(f, "libx264", crf=18, gop=4)
    lo, info_lo = steps.video_roundtrip(f, "libx264", crf=40, gop=4)
    assert hi.shape == f.shape and np.array_equal(hi, steps.video_roundtrip(f, "libx264", crf=18, gop=4)[0])
    assert _psnr(hi, f) > 30 and _psnr(lo, f) < _psnr(hi, f) - 5
    assert info_lo["bitrate_kbps"] < info_hi["bitrate_kbps"] and info_hi["frame_types"][0] == "I"


def test_video_codec_flickers_between_i_and_p_frames():
    """A static scene through H.264 with a short GOP: the decoded frames change at every I-frame (the temporal
    artifact real footage has), far more than between P-frames that reference each other."""
    f = _texture(t=12, moving=False)
    out, info = steps.video_roundtrip(f, "libx264", crf=34, gop=4)
    change = np.array([np.mean(np.abs(out[t].astype(np.int16) - out[t - 1])) for t in range(1, len(out))])
    i_frames = [t for t, k in enumerate(info["frame_types"]) if k == "I" and t > 0]
    assert i_frames, info["frame_types"]
    at_i = change[[t - 1 for t in i_frames]]
    elsewhere = np.delete(change, [t - 1 for t in i_frames])
    assert at_i.mean() > 0.2 and at_i.mean() > 3 * elsewhere.mean(), (at_i, elsewhere)


def test_presets_keep_their_draws_and_steps_draw_from_their_own_streams():
    base = sample_params(PRESETS["paper"], 11)
    with_steps = sample_params(apply_overrides(PRESETS["paper"], []).__class__(
        **{**PRESETS["paper"].__dict__, "steps": ({"step": "jpeg"},)}), 11)
    for k in ("exposure_stops", "noise", "sigma_s", "sigma_c"):
        assert getattr(base, k) == getattr(with_steps, k)
    assert "steps" not in base.to_json() and "transfer" not in base.to_json()
    assert "steps" not in PRESETS["paper"].to_json()
    with pytest.raises(PresetError, match="has no video step"):
        apply_overrides(PRESETS["paper"], [("step.video.crf", 20)])
    with pytest.raises(PresetError, match="step video has no field 'qp'"):
        apply_overrides(PRESETS["realistic-video"], [("step.video.qp", 20)])


def test_yaml_preset_file(tmp_path):
    p = tmp_path / "phone.yaml"
    p.write_text("sigma_s_range: [0, 0.005]\nsteps:\n  - step: jpeg\n    quality: [60, 90]\n")
    preset = load_preset(str(p))
    assert preset.name == "phone" and preset.sigma_s_range == (0, 0.005) and preset.steps[0]["quality"] == [60, 90]
    p.write_text("steps:\n  - step: blur\n")
    with pytest.raises(PresetError, match="unknown step 'blur'"):
        load_preset(str(p))


def test_realistic_video_through_augment_is_remade_bit_for_bit(tmp_path):
    from augment.run import main

    root = tmp_path / "data"
    shutil.copytree(V1, root)
    assert main(["--root", str(root), "--preset", "realistic-video", "--no-ray", "--quiet",
                 "--set", "step.video.crf=[24,24]"]) == 0
    store = Store(str(root))
    base = "sunrise/highlight_zoom_in/ldr/realistic-video_00"
    aug = AugMeta.read(store, f"{base}/{layout.AUG_JSON}")
    assert aug.masks["linearisation"].startswith("sigmoid:") and aug.params["steps"][2]["crf"] == 24
    assert aug.step_results[0]["step"] == "video" and aug.step_results[0]["bitrate_kbps"] > 0
    meta = ClipMeta.read(store, "sunrise/highlight_zoom_in/clip.json")
    hdr = np.stack([read_image(store.path(f"sunrise/highlight_zoom_in/{n}")) for n in meta.files])
    made = remake(hdr, aug)
    for t, name in enumerate(aug.frames):
        assert np.array_equal(made.frames[t], decode_ldr(store.read_bytes(f"{base}/{name}"), name))
    # the loader's on-the-fly path runs the same pipeline
    on_the_fly = make_ldr(hdr, "single", PRESETS["realistic-video"], sample_params(PRESETS["realistic-video"], 1))
    assert on_the_fly.transfer.startswith("sigmoid:") and on_the_fly.step_results[0]["step"] == "video"
    json.dumps(aug.to_json())


@pytest.mark.parametrize("operator", ["exposure", "reinhard", "mantiuk", "drago"])
def test_tone_mapping_operators_keep_the_order_of_radiance_and_use_the_range(operator):
    from dataclasses import replace

    r = np.random.default_rng(1)
    lum = (r.random((2, 24, 32)) ** 3 * 100).astype(np.float32)
    hdr = np.repeat(lum[..., None], 3, axis=-1) * np.float32([1.0, 0.9, 0.8])
    preset = replace(PRESETS["expandnet"], steps=({"step": "tmo", "operator": operator},))
    params = sample_params(preset, 4)
    made = make_ldr(hdr, "single", preset, params)
    assert made.frames.min() == 0 and made.frames.max() >= 250  # mapped to the whole range
    assert made.transfer == curves.gamma_spec(params.steps[0]["gamma"]) and 1.8 <= params.steps[0]["gamma"] <= 2.2
    g = made.frames[..., 1].astype(np.float64).ravel()
    order = np.argsort(lum.ravel())
    rank = np.corrcoef(np.argsort(np.argsort(lum.ravel())), np.argsort(np.argsort(g + 1e-6 * order)))[0, 1]
    assert rank > 0.9, rank  # a brighter scene point is a brighter code
    assert np.array_equal(made.frames, make_ldr(hdr, "single", preset, params).frames)


def test_expandnet_draws_one_operator_per_clip_with_its_ranges():
    ops = [sample_params(PRESETS["expandnet"], s).steps[0] for s in range(200)]
    assert {o["operator"] for o in ops} == {"exposure", "reinhard", "mantiuk", "drago"}
    assert all(0.65 <= o["scale"] <= 0.85 for o in ops if o["operator"] == "mantiuk")
    assert all(-1 <= o["intensity"] <= 1 and 0.8 <= o["light_adapt"] <= 1 for o in ops if o["operator"] == "reinhard")
    p = sample_params(PRESETS["expandnet"], 0)
    assert p.exposure_stops == 0.0 and not p.noise


def test_the_diffhdr_window_masks_linearise_with_the_windows_curve():
    """The trainer's recomputed masks use the curve the window was made with (recorded in the item's params): code
    250 is over-exposed (linear > 0.95) through sRGB (0.956) and not through the sigmoid curve (0.944)."""
    import torch

    from train.diffhdr.task import recompute_masks

    code = torch.full((2, 3, 4, 4), 250 / 255.0)
    assert curves.decode("srgb", np.array([250 / 255]))[0] > 0.95 > curves.decode("sigmoid:0.9:0.6",
                                                                                  np.array([250 / 255]))[0]
    assert recompute_masks(code, "paper", 1.0)["over"].min() == 1.0
    assert recompute_masks(code, "paper", 1.0, transfer="sigmoid:0.9:0.6")["over"].max() == 0.0


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_bayer_keeps_flat_colour_and_fringes_at_edges(pattern):
    flat = np.ones((1, 8, 10, 3), np.float32) * np.float32([0.8, 0.4, 0.1])
    assert np.abs(steps.bayer_roundtrip(flat, pattern) - flat).max() < 1e-4  # the pattern is OpenCV's
    m = steps.mosaic(flat, pattern)
    assert m.shape == (1, 8, 10) and np.allclose(np.unique(m), [0.1, 0.4, 0.8])
    edge = np.zeros((1, 16, 16, 3), np.float32)
    edge[:, :, 8:] = 0.9  # a sharp gray edge: demosaicking makes colour where there was none
    out = steps.bayer_roundtrip(edge, pattern, "bilinear")
    chroma = out.max(axis=-1) - out.min(axis=-1)
    assert chroma[:, 2:-2, 6:10].max() > 0.05 and chroma[:, 2:-2, :4].max() < 1e-4 and chroma[:, 2:-2, 13:].max() < 1e-4


def test_bayer_step_runs_between_noise_and_curve_and_excludes_tmo():
    from dataclasses import replace

    hdr = (np.random.default_rng(2).random((2, 12, 16, 3)) * 2).astype(np.float32)
    preset = replace(PRESETS["paper"], steps=({"step": "bayer"}, {"step": "curve", "family": "gamma"}))
    params = sample_params(preset, 1)
    made = make_ldr(hdr, "single", preset, params)
    assert made.transfer.startswith("gamma:") and np.array_equal(made.frames, make_ldr(hdr, "single", preset,
                                                                                         params).frames)
    plain = make_ldr(hdr, "single", replace(preset, steps=preset.steps[1:]),
                     sample_params(replace(preset, steps=preset.steps[1:]), 1))
    assert not np.array_equal(made.frames, plain.frames)
    both = replace(PRESETS["paper"], steps=({"step": "bayer"}, {"step": "tmo"}))
    with pytest.raises(steps.StepError, match="exclude each other"):
        make_ldr(hdr, "single", both, sample_params(both, 1))
