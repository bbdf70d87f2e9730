"""evaluate: metric definitions, VDP offline in one process, and python -m evaluate.run on both sources."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluate import metrics as M
from evaluate.perceptual import Lpips
from evaluate.run import EvalSettings, Evaluator
from evaluate.run import main as run_main
from hdr.io import read_image, write_exr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (proves 'offline')."""
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hdr_clip(seed=0, t=5, h=64, w=64) -> np.ndarray:
    """A moving HDR clip spanning ~16 stops, (T, H, W, 3) float64."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(0.0, 2.0, (h, w + t, 3)))
    base[h // 3: h // 3 + 4, w // 2: w // 2 + 4] = 5000.0  # a "sun"
    return np.stack([base[:, i:i + w] for i in range(t)])


def noisy(clip, sigma, seed=1):
    return clip * np.exp(sigma * np.random.default_rng(seed).standard_normal(clip.shape))


def mu(x):  # the mu-law written out, independent of hdr.color
    return math.log(1 + 5000 * x) / math.log(5001)


# ------------------------------------------------------------------------------------------------------ definitions
def test_psnr_t_matches_hand_computed_value():
    # ground truth max 4 -> normalised [0.5, 1.0]; prediction /4 -> [0.25, 2.0 -> clipped to 1.0]
    gt = np.array([[[2.0] * 3, [4.0] * 3]])
    pred = np.array([[[1.0] * 3, [8.0] * 3]])
    mse = (mu(0.5) - mu(0.25)) ** 2 / 2  # second pixel matches after clipping
    expected = 10 * math.log10(1 / mse)
    assert M.psnr_t_frame(pred, gt) == pytest.approx(expected, abs=1e-9)
    # by hand: mu(0.5) = ln 2501 / ln 5001 = 0.918644, mu(0.25) = ln 1251 / ln 5001 = 0.837309,
    # MSE = 0.081335^2 / 2 = 0.0033077 -> 24.805 dB
    assert expected == pytest.approx(24.805, abs=1e-3)
    # linear PSNR on the same normalised values: MSE = 0.25^2 / 2
    assert M.psnr_l_frame(pred, gt) == pytest.approx(10 * math.log10(2 / 0.0625), abs=1e-9)


def test_ssim_t_equals_skimage_on_tonemapped_frames():
    from skimage.metrics import structural_similarity

    gt, pred = hdr_clip(3, t=1)[0], noisy(hdr_clip(3, t=1), 0.2)[0]
    s = gt.max()
    tg = np.vectorize(mu)(gt / s)
    tp = np.vectorize(mu)(np.clip(pred / s, 0, 1))
    ref = structural_similarity(tp, tg, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert M.ssim_t_frame(pred, gt) == pytest.approx(ref, abs=1e-12)
    assert 0.3 < ref < 0.999


def test_pu21_is_the_published_banding_glare_encoding():
    from evaluate.vdp import load
    from hdr.color import PU21_PEAK, pu21_encode

    y = np.geomspace(1e-3, 2e4, 50)
    ref = load("pycvvdp").utils.PU(type="banding_glare")  # the parameters of gfxdisp/pu21 (published)
    np.testing.assert_allclose(pu21_encode(y), ref._encode_direct(y), rtol=1e-12)
    assert PU21_PEAK == pytest.approx(ref.peak, rel=1e-12)
    old = load("pyfvvdp").utils.PU(type="banding_glare")  # pyfvvdp 1.2.2 ships another fit: not ours
    assert abs(old.encode(np.array(1e4)) - pu21_encode(np.array(1e4))) > 10.0  # measured: 566.6 vs 595.4


def test_torch_tensors_channels_first_give_the_same_numbers():
    import torch

    from hdr.color import pu21_encode

    gt, pred = hdr_clip(2, t=3, h=24, w=24), noisy(hdr_clip(2, t=3, h=24, w=24), 0.1)
    ref = M.clip_metrics(pred, gt)
    tens = M.clip_metrics(torch.from_numpy(pred).permute(0, 3, 1, 2), torch.from_numpy(gt).permute(0, 3, 1, 2),
                          dim_order="TCHW")
    assert tens.keys() == ref.keys() and all(tens[k] == pytest.approx(ref[k], rel=1e-5) for k in ref)
    y = np.geomspace(1e-3, 1e5, 20)
    np.testing.assert_allclose(pu21_encode(torch.from_numpy(y)).numpy(), pu21_encode(y), rtol=1e-12)


def test_identical_inputs_give_the_cap_and_vdp_jod_maximum(no_network):
    gt = hdr_clip(4)  # a 5-frame 64x64 clip
    ev = Evaluator(EvalSettings())  # core metrics + fvvdp + cvvdp, display standard_hdr_linear, CPU
    res = ev.score(gt.copy(), gt)
    m = res["metrics"]
    assert m["psnr_t"] == m["psnr_l"] == m["psnr_pu21"] == M.PSNR_CAP_DB == 100.0
    assert m["ssim_t"] == pytest.approx(1.0, abs=1e-12)
    assert m["temporal_t"] == 0.0
    from evaluate.vdp import JOD_MAX
    assert JOD_MAX == 10.0
    assert m["fvvdp"] == pytest.approx(JOD_MAX, abs=1e-4) and m["cvvdp"] == pytest.approx(JOD_MAX, abs=1e-4)
    assert ev.describe()["vdp"]["fvvdp"]["display"] == "standard_hdr_linear"
    # the luminance mapping: the mean of the frames' P99.9 of GT luminance lands on 1000 cd/m^2
    from hdr.color import luminance
    assert np.mean([np.percentile(luminance(f), 99.9) for f in gt]) * res["nits_scale"] == pytest.approx(1000.0)


def test_noisier_prediction_scores_worse_on_every_metric(tmp_path, no_network):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    ev = Evaluator(EvalSettings(metrics=M.CORE_METRICS + ("fvvdp", "cvvdp", "lpips"),
                                lpips_weights=str(tmp_path / "alexnet.pth")))
    assert not ev.unavailable
    gt = hdr_clip(5)
    scores = [ev.score(noisy(gt, s, seed=7), gt)["metrics"] for s in (0.01, 0.05, 0.2)]
    for name in scores[0]:
        seq = [s[name] for s in scores]
        better = M.METRICS[name].higher_is_better
        assert all((a > b) if better else (a < b) for a, b in zip(seq, seq[1:])), (name, seq)


def test_temporal_metric_sees_flicker_that_per_frame_metrics_forgive():
    gt = np.repeat(hdr_clip(6, t=1), 6, axis=0)  # a static shot
    steady = gt * 1.03  # a constant 3% gain error
    flicker = gt * np.array([1.03, 1 / 1.03] * 3)[:, None, None, None]  # the same error size, alternating
    psnr = [np.mean([M.psnr_t_frame(p, g) for p, g in zip(x, gt)]) for x in (steady, flicker)]
    assert abs(psnr[0] - psnr[1]) < 0.5  # per-frame metrics score both alike
    assert M.temporal_t(steady, gt) == 0.0 and M.temporal_t(flicker, gt) > 1e-3
    moving = hdr_clip(6, t=6)
    assert M.temporal_t(moving * 1.03, moving) < 0.5 * M.temporal_t(
        moving * np.array([1.03, 1 / 1.03] * 3)[:, None, None, None], moving)
    assert math.isnan(M.temporal_t(gt[:1], gt[:1]))  # undefined for one frame


def test_vdp_packages_coexist_even_after_a_plain_import():
    code = ("import sys, numpy as np; import pyfvvdp\n"  # the plain import leaves pyfvvdp's `interp` behind
            "from evaluate.vdp import VideoVDP\n"
            "x = np.random.default_rng(0).uniform(1, 500, (3, 32, 32, 3))\n"
            "q = [VideoVDP(k).score(x, x) for k in ('cvvdp', 'fvvdp')]\n"
            "assert 'interp' not in sys.modules and not any(p.endswith(('pyfvvdp', 'pycvvdp')) for p in sys.path)\n"
            "print(q)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [float(v) for v in r.stdout.strip()[1:-1].split(",")] == pytest.approx([10.0, 10.0], abs=1e-4)


def test_learned_metrics_without_weights_say_so_and_never_download(no_network, capsys):
    ev = Evaluator(EvalSettings(metrics=("psnr_t", "lpips", "clipiqa", "musiq")))
    assert set(ev.unavailable) == {"lpips", "clipiqa", "musiq"}
    assert "--lpips-weights" in ev.unavailable["lpips"] and "nothing is downloaded" in ev.unavailable["lpips"]
    assert "pyiqa" in ev.unavailable["musiq"]
    gt = hdr_clip(8, t=2, h=32, w=32)
    assert set(ev.score(gt, gt)["metrics"]) == {"psnr_t"}
    with pytest.raises(Exception, match="no such file"):
        Lpips("/nonexistent/alexnet.pth")


def test_musiq_through_a_user_installed_pyiqa_from_a_local_checkpoint(no_network, tmp_path, monkeypatch):
    """pyiqa is not a dependency: without it MUSIQ says how to get it; with it (a stand-in module here, recording
    how it is called) the metric is built from the local file -- never a download -- and scores the tonemapped
    prediction."""
    import sys
    import types

    ckpt = tmp_path / "musiq_koniq_ckpt.pth"
    ckpt.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # not installed
    ev = Evaluator(EvalSettings(metrics=("musiq",), musiq_weights=str(ckpt)))
    assert "pip install pyiqa" in ev.unavailable["musiq"]
    calls = []

    def create_metric(name, as_loss=False, device=None, **kw):
        calls.append((name, as_loss, device, kw))
        return lambda x: x.mean(dim=(1, 2, 3)) * 100.0  # a "quality" that grows with brightness

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    ev = Evaluator(EvalSettings(metrics=("psnr_t", "musiq"), musiq_weights=str(ckpt)))
    assert not ev.unavailable and calls == [("musiq", False, "cpu", {"pretrained_model_path": str(ckpt)})]
    gt = hdr_clip(8, t=2, h=32, w=32)
    dark, bright = ev.score(gt * 0.25, gt)["metrics"]["musiq"], ev.score(gt * 4.0, gt)["metrics"]["musiq"]
    assert 0 < dark < bright < 100
    assert ev.describe()["musiq_source"] == str(ckpt)


# ---------------------------------------------------------------------------------------------------------- the CLI
def make_predictions(root: Path, pred: Path, keys, sigma=0.1):
    for i, key in enumerate(keys):
        for f in sorted((root / key).glob("frame_*.exr")):
            img = read_image(f)
            out = pred / key / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            write_exr(out, noisy(img, sigma, seed=i).astype(np.float32))


def clip_keys(root: Path):
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/clip.json"))


FAST = "psnr_t,ssim_t,psnr_l,psnr_pu21,temporal_t,fvvdp,cvvdp"


def test_run_reference_tree(tiny_dataset_src, tmp_path, no_network, capsys):
    keys = clip_keys(tiny_dataset_src)
    assert len(keys) == 6
    pred, out = tmp_path / "pred", tmp_path / "out"
    make_predictions(tiny_dataset_src, pred, keys[:4])
    bad = pred / keys[3] / "frame_0004.exr"
    bad.write_bytes(b"not an exr")

    args = ["--reference", str(tiny_dataset_src), "--predictions", str(pred), "--out", str(out), "--metrics", FAST]
    assert run_main(args) == 1  # one clip failed -> nonzero, the others are scored
    res = json.loads((out / "metrics.json").read_text())
    assert [c["key"] for c in res["clips"]] == keys[:3]
    assert res["missing"] == keys[4:]
    assert len(res["failures"]) == 1 and str(bad) in res["failures"][0]["error"]
    assert "\n" not in res["failures"][0]["error"]
    assert res["psnr_t"] == pytest.approx(np.mean([c["metrics"]["psnr_t"] for c in res["clips"]]))
    assert res["mean"]["ssim_t"] == pytest.approx(np.mean([c["metrics"]["ssim_t"] for c in res["clips"]]))
    for c in res["clips"]:
        assert c["n_frames"] == c["n_gt_frames"] == 9
        assert 10 < c["metrics"]["psnr_t"] < 60 and 0 < c["metrics"]["fvvdp"] < 10
        assert c["dynamic_range_stops"] > 1
    assert res["settings"]["vdp"]["cvvdp"]["display"] == "standard_hdr_linear"
    assert len(res["notes"]) == 1 and "3 clip(s) are shorter than 1 s at 24 fps" in res["notes"][0]  # 9 frames
    md = (out / "metrics.md").read_text()
    assert "| **mean** |" in md and keys[0] in md and "standard_hdr_linear" in md
    for png in ("per_clip.png", "vs_dynamic_range.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # nothing is silently overwritten
    assert run_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    # an interrupted run resumes from the per-clip records; --overwrite recomputes
    (out / "metrics.json").unlink()
    bad.unlink()
    make_predictions(tiny_dataset_src, pred, keys[3:4])
    before = {c["key"]: c["seconds"] for c in res["clips"]}
    assert run_main(args) == 0
    res2 = json.loads((out / "metrics.json").read_text())
    assert len(res2["clips"]) == 4 and not res2["failures"]
    assert {c["key"]: c["seconds"] for c in res2["clips"][:3]} == before  # reused, not recomputed
    assert run_main(args[:-1] + ["psnr_t", "--overwrite", "--no-plots"]) == 0
    assert json.loads((out / "metrics.json").read_text())["metrics"] == ["psnr_t"]


def test_run_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    args = ["--reference", str(tmp_path / "gt"), "--predictions", str(tmp_path / "pred"), "--out", str(tmp_path / "o")]
    assert run_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no clips" in err and len(err.splitlines()) == 1
    assert run_main(args[:2] + ["--predictions", str(tmp_path / "nope"), "--out", "x"]) == 2
    assert "no such predictions folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(["--help"])


def test_run_manifest_split(tiny_dataset, tmp_path, no_network):
    from manifests import open_manifest
    from manifests.__main__ import main as manifests_main

    assert manifests_main(["build", "--root", str(tiny_dataset), "--test", "2", "--quiet"]) == 0
    mfile = sorted((tiny_dataset / "manifests").glob("v*.parquet"))[-1]
    m = open_manifest(str(mfile))
    test_keys = sorted(r.key for r in m.clips("test"))
    assert len(test_keys) == 2
    pred, out = tmp_path / "pred", tmp_path / "out"
    make_predictions(tiny_dataset, pred, clip_keys(tiny_dataset))  # predictions for every clip; only test is scored
    assert run_main(["--manifest", str(mfile), "--split", "test", "--predictions", str(pred), "--out", str(out),
                     "--metrics", "psnr_t,ssim_t,fvvdp"]) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert sorted(c["key"] for c in res["clips"]) == test_keys
    assert res["source"]["version"] == m.version and res["source"]["root_hash"] == m.root_hash
    rec = json.loads((out / "manifest.json").read_text())
    assert rec["version"] == m.version and rec["root_hash"] == m.root_hash


def test_clipiqa_from_a_local_tiny_clip(tmp_path, no_network):
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path / "clip"
    d.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in list(string.ascii_lowercase) + ["."]:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(d)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1,
                                                  pad_token_id=1, **small),
                                 vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8))
    model.save_pretrained(d)

    ev = Evaluator(EvalSettings(metrics=("psnr_t", "clipiqa"), clipiqa_model=str(d)))
    assert not ev.unavailable
    gt = hdr_clip(9, t=2, h=40, w=40)
    got = ev.score(gt, gt)["metrics"]["clipiqa"]
    # the same score through CLIP's own forward pass: softmax over the two prompts at logit scale 100
    proc = CLIPProcessor.from_pretrained(d)
    imgs = [M.iqa_tonemap(f) for f in gt]  # the public rule (its numbers: tests/test_evaluate_public.py)
    inp = proc(text=["Good photo.", "Bad photo."], images=imgs, return_tensors="pt", padding=True, do_rescale=False)
    with torch.no_grad():
        logits = model.eval()(**inp).logits_per_image / model.logit_scale.exp() * 100.0
    assert got == pytest.approx(float(logits.softmax(-1)[:, 0].mean()), abs=1e-5)
    assert 0.0 < got < 1.0
