"""evaluate, as the public DiffHDR evaluation (eval/cal_metrics.py) does it: the nits anchor, the CLIP-IQA/MUSIQ
tonemap, PU21-PIQE, the FovVideoVDP call; and mu-law's one home."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from evaluate import metrics as M
from evaluate.run import EvalSettings, Evaluator
from evaluate.run import main as run_main
from hdr.io import read_image, write_exr

ROOT = Path(__file__).resolve().parents[1]


def srgb(x):  # the sRGB OETF written out, independent of hdr.color
    x = np.clip(np.asarray(x, np.float64), 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def lum(rgb):
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


def sun_in_first_frame() -> np.ndarray:
    """4 grey frames of 40x50 = 2000 px at 1.0; frame 0 has 20 px (1%) at 1000. Per-frame P99.9: 1000, 1, 1, 1
    (mean 250.75); clip-wide the 20 px are 0.25% of 8000, so the clip P99.9 is 1000."""
    clip = np.ones((4, 40, 50, 3))
    clip[0, :2, :10] = 1000.0
    return clip


# ------------------------------------------------------------------------------------------------------ the anchor
def test_anchor_per_frame_is_the_public_mean_and_clip_differs():
    clip = sun_in_first_frame()
    assert M.anchor_luminance(clip, anchor="per-frame") == pytest.approx(250.75)
    assert M.anchor_luminance(clip, anchor="clip") == pytest.approx(1000.0)
    assert M.nits_scale(clip) == pytest.approx(1000.0 / 250.75)  # the default is the public per-frame mean
    assert M.nits_scale(clip, anchor="clip") == pytest.approx(1.0)
    assert M.nits_scale(clip, nits_per_unit=100.0, anchor="clip") == 100.0
    neg = clip.copy()
    neg[1, 5:30] = -50.0  # negative texels are clipped to 0 before the percentile (as the public reader does)
    assert M.anchor_luminance(neg) == pytest.approx(250.75)
    with pytest.raises(ValueError, match="per-frame, clip"):
        M.nits_scale(clip, anchor="mean")

    pred = clip * np.exp(0.05 * np.random.default_rng(0).standard_normal(clip.shape))
    got = {a: Evaluator(EvalSettings(metrics=("psnr_pu21",), anchor=a)).score(pred, clip) for a in M.ANCHORS}
    assert got["per-frame"]["nits_scale"] == pytest.approx(1000.0 / 250.75)
    assert got["clip"]["nits_scale"] == pytest.approx(1.0)
    assert abs(got["per-frame"]["metrics"]["psnr_pu21"] - got["clip"]["metrics"]["psnr_pu21"]) > 0.5
    with pytest.raises(ValueError, match="anchor must be one of"):
        EvalSettings(anchor="mean")


def test_run_records_every_evaluation_choice_in_metrics_json(tmp_path):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    clip = sun_in_first_frame().astype(np.float32)
    for d in (gt_root, pred_root):
        (d / "h" / "c").mkdir(parents=True)
    for i, f in enumerate(clip):
        write_exr(gt_root / "h" / "c" / f"frame_{i:04d}.exr", f)
        write_exr(pred_root / "h" / "c" / f"frame_{i:04d}.exr", f * np.float32(1.1))
    base = ["--reference", str(gt_root), "--predictions", str(pred_root), "--metrics", "psnr_t,psnr_pu21",
            "--no-plots"]
    assert run_main(base + ["--out", str(tmp_path / "a")]) == 0
    assert run_main(base + ["--out", str(tmp_path / "b"), "--anchor", "clip", "--iqa-tonemap", "per-channel",
                            "--piqe-anchor", "reference", "--vdp-photometry", "display", "--vdp-mode",
                            "framewise"]) == 0
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert {k: a["settings"][k] for k in ("anchor", "iqa_tonemap", "piqe_anchor", "vdp_photometry", "vdp_mode",
                                          "mu")} == {"anchor": "per-frame", "iqa_tonemap": "public",
                                                     "piqe_anchor": "prediction", "vdp_photometry": "absolute",
                                                     "vdp_mode": "video", "mu": 5000.0}
    assert {k: b["settings"][k] for k in ("anchor", "iqa_tonemap", "piqe_anchor", "vdp_photometry",
                                          "vdp_mode")} == {"anchor": "clip", "iqa_tonemap": "per-channel",
                                                           "piqe_anchor": "reference", "vdp_photometry": "display",
                                                           "vdp_mode": "framewise"}
    assert "mean over frames" in a["settings"]["luminance_mapping"]
    assert a["clips"][0]["nits_scale"] == pytest.approx(1000.0 / 250.75)
    assert b["clips"][0]["nits_scale"] == pytest.approx(1.0)
    assert read_image(gt_root / "h/c/frame_0000.exr").max() == 1000.0


# ------------------------------------------------------------------------------------------ CLIP-IQA / MUSIQ input
def test_iqa_tonemap_is_the_public_rule_on_hand_values():
    # 0 < P99.9(Y) < 1: rescaled by 1 / P99.9 only (no Reinhard), clipped, sRGB
    dark = np.full((10, 100, 3), 0.25)
    dark[0, :10] = 0.5  # 1% of the pixels: P99.9 = 0.5
    out = M.iqa_tonemap(dark)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], srgb(1.0), atol=1e-6)
    np.testing.assert_allclose(out[5, 5], srgb(0.5), atol=1e-6)  # 0.25 / 0.5
    assert out[5, 5, 0] == pytest.approx(0.735357, abs=1e-6)
    # P99.9(Y) >= 1: luminance Reinhard, rgb * (Y / (1 + Y)) / (Y + 1e-6), clipped, sRGB
    bright = np.tile(np.array([2.0, 1.0, 0.5]), (10, 100, 1))
    bright[0, 0] = [8.0, 0.1, 0.1]  # a saturated pixel whose red leaves [0, 1] after the luminance scaling
    y = 0.2126 * 2 + 0.7152 * 1 + 0.0722 * 0.5  # 1.1765
    lin = np.array([2.0, 1.0, 0.5]) * (y / (1 + y)) / (y + 1e-6)
    assert lin[0] == pytest.approx(0.918906, abs=1e-6)
    out = M.iqa_tonemap(bright)
    np.testing.assert_allclose(out[5, 5], srgb(lin), atol=1e-6)
    y2 = 0.2126 * 8 + 0.7152 * 0.1 + 0.0722 * 0.1
    np.testing.assert_allclose(out[0, 0], srgb(np.array([8.0, 0.1, 0.1]) * (y2 / (1 + y2)) / y2), atol=1e-6)
    assert out[0, 0, 0] == pytest.approx(1.0)
    # P99.9(Y) = 0 (all but a few pixels black): not rescaled (the public code would divide by 0), finite, black stays
    black = np.zeros((10, 100, 3))
    black[0, 0] = 3.0
    out = M.iqa_tonemap(black)
    assert np.isfinite(out).all() and out[5, 5].max() == 0.0
    # the earlier reading, by name: x / (1 + x) per channel on the raw radiance
    np.testing.assert_allclose(M.iqa_tonemap(bright, "per-channel")[5, 5], srgb(np.array([2.0, 1.0, 0.5]) /
                                                                              np.array([3.0, 2.0, 1.5])), atol=1e-6)
    # scale invariance exactly where the rule gives it: every dark frame (P99.9 < 1), not the bright ones
    for s in (1e-4, 0.03, 1.9):  # 1.9 * 0.5 < 1 still
        np.testing.assert_allclose(M.iqa_tonemap(dark * s), M.iqa_tonemap(dark), atol=1e-6)
    assert np.abs(M.iqa_tonemap(bright * 4) - M.iqa_tonemap(bright)).max() > 0.05
    assert np.abs(M.iqa_tonemap(dark * 0.03, "per-channel") - M.iqa_tonemap(dark, "per-channel")).max() > 0.3
    with pytest.raises(ValueError, match="public, per-channel"):
        M.iqa_tonemap(dark, "aces")


def test_no_reference_scores_are_invariant_where_the_public_rule_makes_them(monkeypatch, tmp_path):
    """MUSIQ through a stand-in pyiqa (a 'quality' = mean brightness of what it is given): with the public tonemap
    a dark clip scores the same at any absolute scale; with per-channel Reinhard it does not."""
    ckpt = tmp_path / "musiq.pth"
    ckpt.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(
        create_metric=lambda name, as_loss=False, device=None, **kw: (lambda x: x.mean(dim=(1, 2, 3)) * 100.0)))
    rng = np.random.default_rng(2)
    dark = np.exp(rng.normal(-4.0, 1.0, (2, 32, 32, 3)))  # P99.9(Y) ~ 0.4 < 1 in both frames
    assert all(np.percentile(lum(f), 99.9) < 1 for f in dark)
    score = {}
    for mode in M.IQA_TONEMAPS:
        ev = Evaluator(EvalSettings(metrics=("musiq",), musiq_weights=str(ckpt), iqa_tonemap=mode))
        assert not ev.unavailable
        score[mode] = [ev.score(dark * s, dark)["metrics"]["musiq"] for s in (0.01, 1.0, 1.5)]
    assert max(score["public"]) - min(score["public"]) < 1e-4
    assert score["per-channel"][2] - score["per-channel"][0] > 10.0
    bright = dark * 100.0  # P99.9 >= 1: luminance Reinhard, scale-dependent by design
    ev = Evaluator(EvalSettings(metrics=("musiq",), musiq_weights=str(ckpt)))
    assert ev.score(bright * 10, bright)["metrics"]["musiq"] - ev.score(bright, bright)["metrics"]["musiq"] > 1.0


# ------------------------------------------------------------------------------------------------------ PU21-PIQE
# the published PU21 'banding_glare' parameters, typed out (test_evaluate.py checks hdr.color holds the same)
P = (0.353487901, 0.3734658629, 8.277049286e-05, 0.9062562627, 0.09150303166, 0.9099517204, 596.3148142)


def test_pu21_piqe_input_is_the_public_mapping():
    nits = np.array([0.0, 0.001, 0.005, 1.0, 100.0, 1000.0, 10000.0, 1e6])
    frame = np.repeat(nits[None, :, None], 3, axis=2)  # grey pixels: luminance = value
    yy = np.clip(nits, 0.005, 10000.0) ** P[3]
    v = np.maximum(P[6] * (((P[0] + P[1] * yy) / (1 + P[2] * yy)) ** P[4] - P[5]), 0.0)
    got = M.pu21_piqe_input(frame)
    assert got.shape == (1, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], np.clip(v / 600.0, 0, 1), rtol=1e-6, atol=1e-7)
    assert got[0, 0] == got[0, 1] == got[0, 2] >= 0.0  # below 0.005 cd/m^2: clamped, PU21 ~ 0, negatives to 0
    assert got[0, 6] == got[0, 7] == pytest.approx(595.39 / 600, abs=1e-4)  # above 10000: clamped
    # colour enters through Rec.709 luminance only
    rgb = np.array([[[300.0, 20.0, 5.0]]])
    assert M.pu21_piqe_input(rgb)[0, 0] == pytest.approx(M.pu21_piqe_input(np.full((1, 1, 3), lum(rgb)[0, 0]))[0, 0])
    # PIQE itself is pypiqe's; a uniform image is PIQE's 100
    from pypiqe import piqe

    img = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    assert M.piqe_score(img) == pytest.approx(float(piqe(img)[0]))
    assert M.piqe_score(np.zeros((32, 32), np.float32)) == M.PIQE_UNIFORM == 100.0


@pytest.fixture(scope="module")
def sunrise_crop(bundled_hdris) -> np.ndarray:
    """A real (CC0 PolyHaven) 128x512 crop, one frame, float64."""
    return read_image(bundled_hdris / "sunrise.exr").astype(np.float64)[192:320, 256:768][None]


def test_pu21_piqe_rises_with_noise(sunrise_crop):
    """Log-normal radiance noise of 10%, 40%, 80%: PU21-PIQE (lower is better) rises at every step. (Measured on the
    bundled forest, sunrise, night and city maps, 128x512 crops, 2 seeds: 20 -> 40 -> 80 % rises on every one; the
    clean sunrise crop scores 26, above 10 % noise: weak noise can LOWER it on a DWAB-compressed map, whose flat
    blocks PIQE counts as artefacts and noise hides.)"""
    ev = Evaluator(EvalSettings(metrics=("pu21_piqe",)))
    assert not ev.unavailable and ev.describe()["pu21_piqe_source"] == "pypiqe 1.2"
    rng = np.random.default_rng(0)
    res = [ev.score(sunrise_crop * np.exp(s * rng.standard_normal(sunrise_crop.shape)), sunrise_crop)
           for s in (0.1, 0.4, 0.8)]
    q = [r["metrics"]["pu21_piqe"] for r in res]
    assert q[0] + 10 < q[1] and q[1] + 5 < q[2], q
    assert all(0 <= x <= 100 for x in q)
    # the prediction's own anchor maps it to cd/m^2 (no reference), recorded beside the GT's
    assert res[0]["pu21_piqe_nits_scale"] != res[0]["nits_scale"]


def test_pu21_piqe_own_anchor_ignores_a_global_gain(sunrise_crop):
    pred = sunrise_crop * np.exp(0.3 * np.random.default_rng(1).standard_normal(sunrise_crop.shape))
    own = Evaluator(EvalSettings(metrics=("pu21_piqe",)))
    ref = Evaluator(EvalSettings(metrics=("pu21_piqe",), piqe_anchor="reference"))
    a = [own.score(pred * g, sunrise_crop)["metrics"]["pu21_piqe"] for g in (0.1, 1.0, 8.0)]
    b = [ref.score(pred * g, sunrise_crop)["metrics"]["pu21_piqe"] for g in (0.1, 1.0, 8.0)]
    assert max(a) - min(a) < 1e-3, a  # k comes from the frames scored: a gain cancels
    assert max(b) - min(b) > 1.0, b  # the GT's k: the gain changes the PU21 frame


def test_pu21_piqe_without_pypiqe_is_named_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pypiqe", None)
    ev = Evaluator(EvalSettings(metrics=("psnr_t", "pu21_piqe")))
    assert "pypiqe" in ev.unavailable["pu21_piqe"]
    gt = np.exp(np.random.default_rng(0).normal(0, 1, (1, 16, 16, 3)))
    assert set(ev.score(gt, gt)["metrics"]) == {"psnr_t"}


# ------------------------------------------------------------------------------------------------------ FovVideoVDP
def test_fvvdp_absolute_photometry_and_framewise_mode_are_the_public_calls():
    """``absolute`` + ``framewise`` reproduce what the public compute_fovvdp computes: FovVideoVDP with
    fvvdp_display_photo_absolute(peak) on k-scaled frames, each frame as an image (its THWC call falls back)."""
    from evaluate.vdp import load

    rng = np.random.default_rng(3)
    gt = np.exp(rng.normal(0, 1.5, (2, 32, 32, 3)))
    gt[:, 10:13, 10:13] = 200.0  # ~1% of the pixels: the anchor, at 1000 cd/m^2
    pred = gt * np.exp(0.2 * rng.standard_normal(gt.shape))
    pred[:, 10:13, 10:13] *= 0.2  # a highlight reconstructed 5x too dark: 1000 -> ~200 cd/m^2
    k = M.nits_scale(gt)
    fv = load("pyfvvdp")
    public = fv.fvvdp(display_name="standard_hdr_linear", display_photometry=fv.fvvdp_display_photo_absolute(1000.0),
                      quiet=True)
    with pytest.raises(RuntimeError):  # the public call itself: THWC is not a pyfvvdp dim order
        public.predict((pred * k).astype(np.float32), (gt * k).astype(np.float32), dim_order="THWC")
    want = np.mean([float(public.predict((p * k).astype(np.float32), (g * k).astype(np.float32),
                                         dim_order="HWC")[0]) for p, g in zip(pred, gt)])
    got = {}
    for phot, mode in (("absolute", "framewise"), ("display", "framewise"), ("absolute", "video")):
        ev = Evaluator(EvalSettings(metrics=("fvvdp",), vdp_photometry=phot, vdp_mode=mode))
        got[phot, mode] = ev.score(pred, gt)["metrics"]["fvvdp"]
        d = ev.describe()["vdp"]["fvvdp"]
        assert d["mode"] == mode and d["photometry"].startswith(phot)
    assert got["absolute", "framewise"] == pytest.approx(want, abs=1e-4)
    assert abs(got["display", "framewise"] - got["absolute", "framewise"]) > 0.01
    assert abs(got["absolute", "video"] - got["absolute", "framewise"]) > 0.01
    assert all(0 < v < 10 for v in got.values())


# ------------------------------------------------------------------------------------------------ one mu-law home
def test_mu_law_constant_has_one_home_and_the_benchmark_scores_psnr_t(render_bench):
    from hdr.color import MU_LAW_MU

    assert not hasattr(M, "MU") and EvalSettings().mu == MU_LAW_MU == 5000.0
    bench = render_bench
    rng = np.random.default_rng(4)
    ref = np.exp(rng.normal(0, 2, (24, 24, 3)))
    test = ref * np.exp(0.1 * rng.standard_normal(ref.shape))
    test[0, 0] = 30 * ref.max()  # a test frame brighter than the reference: where the old normalisation differed
    assert bench.mu_psnr(ref, test) == M.psnr_t_frame(test, ref)
    m = max(ref.max(), test.max())  # the benchmark's former normalisation (shared max, no clipping)
    old = M.psnr(np.log1p(5000 * ref / m) / math.log(5001), np.log1p(5000 * test / m) / math.log(5001))
    assert abs(old - bench.mu_psnr(ref, test)) > 1.0
