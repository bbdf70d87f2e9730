"""augment: the degradation statistics, masks, alternating exposures, presets, numpy/torch agreement."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hdr.degrade.alternating import EXPOSURE_SETS, alternating_evs, alternating_ldr
from train.hdrvdiff.data import network_input
from hdr.degrade.presets import (PRESETS, Params, ar1_field, camera_noise, degrade, degrade_torch, exposure_shift,
                             linear_to_ldr8, linear_to_srgb8, sample_params, visible_noise_8bit)
from hdr.degrade.masks import ema, exposure_masks_paper
from hdr.color import log_gamma, log_gamma_inverse, mu_law, mu_law_inverse, reinhard_per_channel, srgb_eotf, srgb_oetf


def _params(**kw):
    base = dict(preset="test", seed=7, exposure_stops=0.0, noise=True, sigma_s=0.05, sigma_c=0.01, rho=0.5,
                noise_scale=1.0, quantize="round")
    return Params(**{**base, **kw})


def test_noise_variance_is_linear_in_L_with_slope_sigma_s2_and_intercept_sigma_c2():
    levels = np.array([0.01, 0.05, 0.2, 0.5, 1.0])
    p = _params()
    variances = []
    for i, L in enumerate(levels):
        hdr = np.full((8, 64, 64, 3), L, np.float32)
        eps = ar1_field(hdr.shape, p.rho, 100 + i)
        n = camera_noise(hdr, p.sigma_s, p.sigma_c, eps)
        variances.append(float(n.var()))
    slope, intercept = np.polyfit(levels, variances, 1)
    assert slope == pytest.approx(p.sigma_s**2, rel=0.03)
    assert intercept == pytest.approx(p.sigma_c**2, rel=0.1)


def test_noise_scale_normalises_like_the_public_code():
    L = np.full((2, 32, 32, 3), 1000.0, np.float32)
    eps = ar1_field(L.shape, 0.5, 1)
    n = camera_noise(L, 1e-2, 0.0, eps, scale=65536.0)
    # sqrt(L/65536 * s^2) * eps * 65536
    np.testing.assert_allclose(n, np.sqrt(1000.0 / 65536.0) * 1e-2 * eps * 65536.0, rtol=1e-5)


def test_ar1_lag_correlations():
    rho = 0.5
    eps = ar1_field((12, 96, 96, 3), rho, 3).astype(np.float64)
    def corr(lag):
        a, b = eps[lag:].ravel(), eps[:-lag].ravel()
        return np.corrcoef(a, b)[0, 1]
    assert eps.std() == pytest.approx(1.0, abs=0.01)
    assert corr(1) == pytest.approx(rho, abs=0.01)
    assert corr(2) == pytest.approx(rho**2, abs=0.01)
    white = ar1_field((6, 64, 64, 3), 0.0, 4)
    assert np.corrcoef(white[1:].ravel(), white[:-1].ravel())[0, 1] == pytest.approx(0, abs=0.01)  # rho = 0


def test_exposure_shift_scales_by_two_to_delta():
    hdr = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32) * 100
    for d in (-2.0, -0.7, 0.0, 1.3, 2.0):
        np.testing.assert_allclose(exposure_shift(hdr, d), hdr * 2**d, rtol=1e-6)
    u8, lin = degrade(hdr, _params(noise=False, exposure_stops=1.5), return_linear=True)
    np.testing.assert_allclose(lin, hdr * 2**1.5, rtol=1e-6)


def _reference8(encoded, mode):
    """The 8-bit quantiser written out in float64: round (paper) or truncate (public code)."""
    x = np.clip(np.asarray(encoded, np.float64), 0, 1) * 255.0
    return (np.floor(x + 0.5) if mode == "round" else np.floor(x)).astype(np.uint8)


def test_quantisation_levels_and_modes():
    from hdr.color import gamma_oetf

    x = np.linspace(-0.1, 1.2, 100000, dtype=np.float32)
    for mode in ("round", "truncate"):
        for transfer in ("srgb", "gamma2.2"):
            q = linear_to_ldr8(x, mode, transfer)
            assert q.dtype == np.uint8 and len(np.unique(q)) == 256 and q.min() == 0 and q.max() == 255
    codes = np.array([0.4 / 255, 0.6 / 255, 254.6 / 255]) ** 2.2  # gamma-encoded 0.4, 0.6, 254.6 code units
    assert linear_to_ldr8(codes.astype(np.float32), "round", "gamma2.2").tolist() == [0, 1, 255]
    assert linear_to_ldr8(codes.astype(np.float32), "truncate", "gamma2.2").tolist() == [0, 0, 254]
    hdr = np.random.default_rng(1).random((3, 16, 16, 3)).astype(np.float32) * 4
    u8, lin = degrade(hdr, _params(), return_linear=True)
    assert u8.dtype == np.uint8 and u8.shape == hdr.shape
    np.testing.assert_array_equal(u8, linear_to_srgb8(lin))
    for mode in ("round", "truncate"):  # the threshold form is the encoding + quantiser, exactly, away from edges
        x = np.linspace(0, 1.5, 200001, dtype=np.float64)
        for transfer, enc in (("srgb", srgb_oetf), ("gamma2.2", gamma_oetf)):
            fast = linear_to_ldr8(x.astype(np.float32), mode, transfer)
            slow = _reference8(enc(x.astype(np.float32).astype(np.float64)), mode)
            assert (fast != slow).sum() <= 5, (mode, transfer)
            assert np.abs(fast.astype(int) - slow).max() <= 1


def test_masks_match_thresholds_and_the_ema_recursion():
    y = np.array([0.0, 0.04, 0.5, 0.96, 1.0])  # linear luminance of grey pixels
    srgb = srgb_oetf(y)
    frames = np.stack([np.repeat(np.tile(srgb, (2, 1))[..., None], 3, -1)] * 1)  # (1, 2, 5, 3)
    frames = np.concatenate([frames, frames[:, :, ::-1]], 0).astype(np.float32)  # frame 2 mirrored
    over, under = exposure_masks_paper(frames)
    np.testing.assert_array_equal(over[0, 0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(under[0, 0], [1, 1, 0, 0, 0])
    # frame 1: M_1 mirrored; EMA = 0.7 M_1 + 0.3 M_0
    np.testing.assert_allclose(over[1, 0], 0.7 * np.array([1, 1, 0, 0, 0]) + 0.3 * np.array([0, 0, 0, 1, 1]))
    m = np.random.default_rng(2).random((5, 3, 3))
    e = ema(m, 0.7)
    ref = m[0]
    for t in range(1, 5):
        ref = 0.7 * m[t] + 0.3 * ref
    np.testing.assert_allclose(e[-1], ref)


def test_presets_differ_exactly_where_the_design_says():
    paper, code = PRESETS["paper"], PRESETS["diffhdr-code"]
    differing = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(code, f.name)}
    assert differing == {"name", "exposure", "noise_probability", "noise_scale", "quantize", "mask_mode", "notes",
                         "per_channel_sigma", "noise_strength", "var_floor", "ar1_init"}
    assert (code.noise_strength, code.var_floor, code.ar1_init) == (0.01, 1e-12, "zero")
    assert paper.exposure == "uniform" and paper.exposure_range == (-2.0, 2.0)
    assert code.exposure == "choice" and code.exposure_choices == (-1.0, 0.0, 1.0, 2.0)
    assert paper.rho == code.rho == 0.5
    assert (paper.quantize, code.quantize) == ("round", "truncate")
    assert code.noise_scale == 65536.0 and paper.noise_probability == 1.0
    draws = [sample_params(code, s) for s in range(400)]
    assert {d.exposure_stops for d in draws} == {-1.0, 0.0, 1.0, 2.0}
    assert all(len(d.sigma_s) == 3 and len(d.sigma_c) == 3 for d in draws)  # per-channel sigmas
    assert len(set(draws[0].sigma_s if draws[0].noise else next(d for d in draws if d.noise).sigma_s)) == 3
    assert 0.02 < np.mean([d.noise for d in draws]) < 0.08   # scripts/train.sh --add_noise_prob 0.05
    stops = [sample_params(paper, s).exposure_stops for s in range(400)]
    assert min(stops) >= -2 and max(stops) <= 2 and len(set(stops)) == 400
    # the visible noise each preset produces, in 8-bit steps at L = 1 (measured here)
    assert visible_noise_8bit(paper, 1.0) == pytest.approx(0.095, abs=0.002)
    assert visible_noise_8bit(code, 1.0) == pytest.approx(1.13, abs=0.01)
    assert visible_noise_8bit(code, 0.01) == pytest.approx(16.2, abs=0.1)


def test_same_seed_same_bytes_and_numpy_equals_torch():
    hdr = (np.random.default_rng(3).random((5, 24, 32, 3)) * 3).astype(np.float32)
    p = sample_params(PRESETS["paper"].with_overrides(sigma_s_range=(0.01, 0.02)), 1234)
    a, _ = degrade(hdr, p)
    b, _ = degrade(hdr, sample_params(PRESETS["paper"].with_overrides(sigma_s_range=(0.01, 0.02)), 1234))
    np.testing.assert_array_equal(a, b)
    t, _ = degrade_torch(torch.from_numpy(hdr), p)  # the GPU path's torch ops, run on the CPU
    np.testing.assert_array_equal(t.numpy(), a)  # bit-identical: same draws, same code boundaries
    cpu, _ = degrade(torch.from_numpy(hdr), p)  # a CPU tensor takes the numpy path and comes back as a tensor
    assert isinstance(cpu, torch.Tensor) and np.array_equal(cpu.numpy(), a)
    assert p.to_json()["seed"] == 1234


def test_alternating_exposures_and_network_input():
    assert alternating_evs(5, 2) == [0.0, 3.0, 0.0, 3.0, 0.0]
    assert alternating_evs(4, 3) == [-2.0, 0.0, 2.0, -2.0]
    assert EXPOSURE_SETS == {2: (0.0, 3.0), 3: (-2.0, 0.0, 2.0)}
    hdr = np.full((3, 4, 4, 3), 0.1, np.float32)
    ldr, e = alternating_ldr(hdr, alternating_evs(3, 3), _params(noise=False))
    assert e == [0.25, 1.0, 4.0]
    expect = [round(255 * min(0.1 * x, 1) ** (1 / 2.2)) for x in e]
    assert ldr[:, 0, 0, 0].tolist() == expect
    x = network_input(ldr[2], e[2])
    assert x.shape == (4, 4, 6)
    i = ldr[2].astype(np.float32) / 255
    np.testing.assert_allclose(x[..., 3:], i**2.2 / 4.0, rtol=1e-6)  # eq. 1
    xt = network_input(torch.from_numpy(ldr[2]).permute(2, 0, 1), e[2], channel_axis=0)
    np.testing.assert_allclose(xt.permute(1, 2, 0).numpy(), x, rtol=1e-6)


def test_colour_mappings_round_trip():
    x = np.logspace(-5, np.log10(65536), 500)
    np.testing.assert_allclose(log_gamma_inverse(log_gamma(x)), x, rtol=1e-12)
    assert log_gamma(np.array([0.0, 65536.0, 1e6])).tolist() == [0.0, 1.0, 1.0]  # clamp at M
    np.testing.assert_allclose(mu_law_inverse(mu_law(x / x.max())), x / x.max(), rtol=1e-12)
    assert mu_law(np.array(1.0)) == pytest.approx(1.0)
    np.testing.assert_allclose(srgb_eotf(srgb_oetf(np.linspace(0, 1, 11))), np.linspace(0, 1, 11), atol=1e-12)
    assert reinhard_per_channel(np.array([0.0, 1.0, 3.0])).tolist() == [0.0, 0.5, 0.75]
    t = torch.tensor(x)
    np.testing.assert_allclose(log_gamma(t).numpy(), log_gamma(x), rtol=1e-12)


def test_bucket_table_never_skips_a_code_boundary():
    from hdr.degrade.presets import _code_thresholds, _tables

    for mode in ("round", "truncate"):
        for transfer in ("srgb", "gamma2.2"):
            table, _ = _tables(transfer, mode)
            # buckets of non-negative floats up to 1.0 are indices 0 .. 0x3F80; codes step by at most one per bucket
            steps = np.diff(table[: 0x3F81].astype(int))
            assert steps.min() >= 0 and steps.max() <= 1, mode
            t = _code_thresholds(transfer, mode)
            x = np.concatenate([t, np.nextafter(t, 0, dtype=np.float32)])
            np.testing.assert_array_equal(linear_to_ldr8(x, mode, transfer),
                                          np.searchsorted(t, x, side="right").astype(np.uint8))


def _code_params(seed=5, **kw):
    code = PRESETS["diffhdr-code"]
    forced = code.with_overrides(noise_probability=1.0, sigma_s_range=(8.5e-4, 8.5e-4), sigma_c_range=(1.5e-5, 1.5e-5))
    return dataclasses.replace(sample_params(forced, seed), **kw)


def test_code_preset_noise_is_the_public_codes_formula():
    p = _code_params(sigma_s=[1e-3, 5e-4, 2e-4], sigma_c=[1e-5, 0.0, 2e-5], exposure_stops=0.0)
    lin = np.full((4, 16, 16, 3), 3.0, np.float32)
    lin[:, :, :8] = 0.0  # var floor 1e-12 matters where sigma_c = 0 and L = 0
    eps = ar1_field(lin.shape, p.rho, p.seed, p.ar1_init)
    ours = camera_noise(lin, p.sigma_s, p.sigma_c, eps, p.noise_scale, p.noise_strength, p.var_floor)
    s2, c2 = np.square(p.sigma_s), np.square(p.sigma_c)
    ref = eps * np.sqrt(np.maximum(lin.astype(np.float64) / 65536.0 * s2 + c2, 1e-12)) * 65536.0 * 0.01
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    u8, noisy = degrade(lin, p, return_linear=True)
    np.testing.assert_allclose(noisy, lin + ref, rtol=1e-5, atol=1e-7)


def test_zero_initialised_ar1_state_like_the_public_code():
    eps = ar1_field((6, 128, 128, 3), 0.5, 9, init="zero").astype(np.float64)
    assert eps[0].var() == pytest.approx(0.75, rel=0.02)  # eps_0 = sqrt(1 - rho^2) u_0
    assert eps[1].var() == pytest.approx(0.25 * 0.75 + 0.75, rel=0.02)
    assert eps[5].var() == pytest.approx(1.0, rel=0.02)
    stationary = ar1_field((6, 128, 128, 3), 0.5, 9).astype(np.float64)
    np.testing.assert_allclose(eps[0], stationary[0] * np.sqrt(0.75), rtol=1e-6)  # same draws, other start


def test_normal_table_is_a_unit_normal():
    from hdr.degrade.presets import normal_table

    t = normal_table().astype(np.float64)
    assert t.mean() == 0.0 and t.var() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(t) > 0) and 4.3 < t.max() < 4.4
    x = ar1_field((1, 512, 512, 3), 0.0, 11).ravel().astype(np.float64)
    for q, z in ((0.5, 0.0), (0.8413, 1.0), (0.9772, 2.0), (0.0228, -2.0)):
        assert np.quantile(x, q) == pytest.approx(z, abs=0.01)
    assert (x ** 4).mean() == pytest.approx(3.0, abs=0.03)  # Gaussian kurtosis


def test_visible_noise_of_the_code_preset_in_8bit_steps():
    """The public code's noise is over one 8-bit step at L = 1; measured on the quantised output."""
    p = _code_params(quantize="round")
    hdr = np.full((9, 64, 64, 3), 1.0 / 2 ** p.exposure_stops * 0.5, np.float32)  # L = 0.5 after exposure
    u8, _ = degrade(hdr, p)
    # per-channel sigmas are forced to the maximum, so every channel has the preset's largest noise
    predicted = visible_noise_8bit(PRESETS["diffhdr-code"], 0.5)
    measured = u8[1:].astype(np.float64).std()  # frame 0 has variance 1 - rho^2 (zero-initialised state)
    assert measured == pytest.approx(np.sqrt(predicted**2 + 1 / 12), rel=0.1)
    assert predicted > 1.0


def test_code_masks_soft_formula_and_smoothing():
    from hdr.degrade.masks import exposure_masks, exposure_masks_code, soft_masks_code

    v = 242  # sRGB 0.949: inside the soft band of the over threshold
    frame = np.full((1, 20, 24, 3), v, np.uint8)
    over, under = soft_masks_code(frame[0].astype(np.float32) / 255)
    y = srgb_eotf(v / 255.0)
    e0, e1 = srgb_eotf(0.93), srgb_eotf(0.97)
    t = (y - e0) / (e1 - e0)
    np.testing.assert_allclose(over, 0.7 * t * t * (3 - 2 * t), rtol=1e-5)  # no channel at >= 0.98
    assert np.all(under == 0)
    # a frame white on top, black at the bottom: binarised masks cover each half (the blur widens them a bit)
    f = np.zeros((3, 40, 40, 3), np.uint8)
    f[:, :20] = 255
    o, u = exposure_masks(f, "diffhdr-code")
    assert set(np.unique(o)) | set(np.unique(u)) <= {0.0, 1.0}
    assert o[:, :18].min() == 1 and o[:, 24:].max() == 0 and u[:, 22:].min() == 1 and u[:, :16].max() == 0
    ot, ut = exposure_masks_code(torch.from_numpy(f))
    np.testing.assert_array_equal(ot.numpy(), o)
    np.testing.assert_array_equal(ut.numpy(), u)
    # EMA runs on the soft masks: a pixel region that turns white at frame 1 is 0.7 of the way there
    g = np.zeros((2, 40, 40, 3), np.uint8)
    g[1] = 255
    so, _ = exposure_masks_code(g, binarize=None)
    assert so[1, 20, 20] == pytest.approx(0.7, abs=1e-6) and so[0].max() == 0


def test_row_blocks_do_not_change_the_bytes(monkeypatch):
    import hdr.degrade.presets as deg

    hdr = (np.random.default_rng(4).random((3, 37, 21, 3)) * 2).astype(np.float32)
    p = sample_params(PRESETS["diffhdr-code"].with_overrides(noise_probability=1.0), 77)
    whole, lin = degrade(hdr, p, return_linear=True)
    monkeypatch.setattr(deg, "CHUNK_VALUES", 5 * 21 * 3)  # 5-row blocks, the last one short
    blocks, lin_b = degrade(hdr, p, return_linear=True)
    np.testing.assert_array_equal(blocks, whole)
    np.testing.assert_array_equal(lin_b, lin)
    np.testing.assert_array_equal(degrade_torch(torch.from_numpy(hdr), p)[0].numpy(), whole)


def test_masks_on_tensors_equal_numpy_both_paths():
    from hdr.degrade.masks import exposure_masks

    ldr = (np.random.default_rng(6).random((4, 24, 40, 3)) ** 0.3 * 255).astype(np.uint8)
    ldr[:, :8] = 255
    ldr[:, 16:] //= 40
    for transfer in ("srgb", "gamma2.2"):
        ref = exposure_masks_paper(ldr, transfer=transfer)
        ops = exposure_masks_paper(torch.from_numpy(ldr), transfer=transfer)  # the GPU path's torch ops
        for r, o in zip(ref, ops):
            assert r.max() == 1 and r.min() == 0
            np.testing.assert_array_equal(o.numpy(), r)
    for mode in ("paper", "diffhdr-code"):
        ref = exposure_masks(ldr, mode)
        cpu = exposure_masks(torch.from_numpy(ldr), mode)  # a CPU tensor takes the numpy path
        for r, c in zip(ref, cpu):
            assert isinstance(c, torch.Tensor)
            np.testing.assert_array_equal(c.numpy(), r)
