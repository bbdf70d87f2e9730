"""evaluate.mapping (DiffHDR Table 4): the four colour mappings, the round trip, and the CLI with tiny random VAEs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluate import mapping as MP
from evaluate.metrics import PSNR_CAP_DB
from hdr.color import LOG_GAMMA_M


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_mappings_and_their_exact_inverses():
    x = np.geomspace(1.0 / LOG_GAMMA_M, LOG_GAMMA_M, 400)
    for m in MP.MAPPINGS:
        y = MP.forward(m, x)
        if m != "linear":
            assert y.min() >= 0.0 and y.max() <= 1.0 + 1e-12 and np.all(np.diff(y) > 0), m
        np.testing.assert_allclose(MP.inverse(m, y), x, rtol=1e-9, err_msg=m)
    # Log without gamma is DiffHDR's T'(x) = log(1 + x) / log(1 + M); Log-Gamma is eq. 3 with g = 2.2
    assert MP.forward("log_nogamma", np.array(1.0)) == pytest.approx(math.log(2) / math.log(1 + LOG_GAMMA_M))
    g = 2.2
    assert MP.forward("log_gamma", np.array(1.0)) == pytest.approx(
        (math.log(1 + g) / math.log(1 + g * LOG_GAMMA_M)) ** (1 / g))
    # pure log spans [1/M, M] symmetrically in stops: 1.0 sits in the middle
    assert MP.forward("log", np.array(1.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown mapping"):
        MP.forward("pq", x)


def test_roundtrip_table_exposes_why_linear_fails():
    rng = np.random.default_rng(0)
    clip = np.exp(rng.normal(0.0, 2.5, (2, 24, 24, 3)))  # many texels above 1.0
    assert (clip > 1).mean() > 0.3
    identity = lambda y: y  # noqa: E731
    clamp = lambda y: np.clip(y, 0.0, 1.0)  # noqa: E731  (the Wan decoder clamps its output to [-1, 1])
    t_id = MP.mapping_table([("c", clip)], identity, progress=False)["mean"]
    for m in MP.MAPPINGS:
        assert t_id[m]["psnr"] == PSNR_CAP_DB and t_id[m]["psnr_t"] == PSNR_CAP_DB, m
    assert MP.inverse("log", MP.forward("log", np.array(0.0))) == pytest.approx(1.0 / LOG_GAMMA_M, rel=1e-12)  # floor
    t_cl = MP.mapping_table([("c", clip)], clamp, progress=False)["mean"]
    # clamping to the VAE range destroys linear highlights; sRGB (clipped at 1.0) cannot see it, PSNR_T does
    assert t_cl["linear"]["psnr"] == PSNR_CAP_DB and t_cl["linear"]["psnr_t"] < 30
    assert t_cl["log_gamma"]["psnr_t"] == PSNR_CAP_DB
    # an 8-bit channel (what an LDR VAE can carry): the log mappings keep the radiance, Log-Gamma best in sRGB
    q8 = lambda y: np.round(np.clip(y, 0, 1) * 255) / 255  # noqa: E731
    t_q = MP.mapping_table([("c", clip)], q8, progress=False)["mean"]
    assert t_q["log_gamma"]["psnr_t"] > t_q["linear"]["psnr_t"] + 5
    assert t_q["log_gamma"]["psnr"] > t_q["log_nogamma"]["psnr"] and t_q["log_gamma"]["psnr"] > t_q["log"]["psnr"]


def _tiny_vaes(tmp_path):
    import torch
    from diffusers import AutoencoderKL, AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(tmp_path / "wan")
    AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(tmp_path / "kl")
    return tmp_path / "wan", tmp_path / "kl"


def test_vae_loading_and_frame_fitting(tmp_path):
    wan, kl = _tiny_vaes(tmp_path)
    cw, ck = MP.load_vae(wan), MP.load_vae(kl)
    assert (cw.kind, cw.spatial, cw.temporal) == ("wan", 8, 4) and (ck.kind, ck.spatial) == ("kl", 2)
    clip = np.random.default_rng(1).uniform(0, 1, (7, 20, 33, 3))
    fit = cw.fit(clip)
    assert fit.shape == (5, 16, 32, 3)  # 1 + 4k frames, multiples of 8 pixels
    assert cw(fit).shape == fit.shape and ck(ck.fit(clip)).shape == (7, 20, 32, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="not AutoencoderKLWan or AutoencoderKL"):
        MP.load_vae(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MP.load_vae(tmp_path)


def test_mapping_cli_on_a_manifest_with_a_tiny_wan_vae(tiny_dataset, tmp_path, capsys):
    from manifests.__main__ import main as manifests_main

    wan, _ = _tiny_vaes(tmp_path)
    assert manifests_main(["build", "--root", str(tiny_dataset), "--test", "2", "--quiet"]) == 0
    mfile = sorted((tiny_dataset / "manifests").glob("v*.parquet"))[-1]
    out = tmp_path / "out"
    args = ["--manifest", str(mfile), "--vae", str(wan), "--frames", "5", "--max-clips", "1", "--out", str(out)]
    assert MP.main(args) == 0
    printed = capsys.readouterr().out
    assert "| Log-Gamma (ours) |" in printed and "| Linear |" in printed
    res = json.loads((out / "mapping.json").read_text())
    assert res["vae"]["class"] == "AutoencoderKLWan" and res["clips"][0]["shape"] == [5, 32, 32, 3]
    assert set(res["mean"]) == set(MP.MAPPINGS)
    for scores in res["mean"].values():
        assert all(math.isfinite(v) for v in scores.values()) and 0 <= scores["ssim"] <= 1
    assert json.loads((out / "manifest.json").read_text())["version"] == res["source"]["version"]
    assert MP.main(args) == 2 and "already exists" in capsys.readouterr().err
