"""DiffHDR inference over videos longer than the model's window: the window plan and cross-fade weights
(train/windows.py), the window loop of train/diffhdr/infer.py with a fake pipeline (blended output = per-window
outputs outside overlaps, the linear cross-fade inside), and the real tiny pipeline through `python -m train.infer`
on a video of several windows plus a remainder."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from hdr.color import log_gamma_inverse  # noqa: E402
from train.diffhdr.infer import InferError, convert_windows, select_range, window_seed, window_settings  # noqa: E402
from train.diffhdr.task import control_video, resolve_data_config  # noqa: E402
from train.windows import (WindowBlender, WindowPlanError, blend_all, blend_weights, pad_frames,  # noqa: E402
                           plan_windows)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "diffhdr_tiny.yaml"


# ------------------------------------------------------------------------------------------------ plan and weights

def check_plan(n, window, overlap):
    starts = plan_windows(n, window, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    cover = np.zeros(max(n, window), int)
    for s in starts:
        cover[s:s + window] += 1
    assert (cover[:n] >= 1).all(), (n, window, overlap, starts)                 # every frame covered
    if n <= window:
        assert starts == [0]                                                     # one (padded) window
    else:
        assert starts[-1] + window == n                                          # last window ends at the last frame
        assert all(s + window <= n for s in starts)                              # no window past the end
        gaps = np.diff(starts)
        assert (window - gaps >= overlap).all()                                  # overlap honoured
        assert (gaps[:-1] == window - overlap).all()                             # regular stride but the last
        assert len(starts) == 1 + int(np.ceil((n - window) / (window - overlap)))   # no window more than needed
    return starts


@pytest.mark.parametrize("window", [1, 5, 9, 33])
def test_window_plan_every_length(window):
    for overlap in sorted({0, 1, (window - 1) // 2, window - 1}):
        if overlap >= window:
            continue
        for n in range(1, 3 * window + 7):
            check_plan(n, window, overlap)


def test_window_plan_examples():
    assert plan_windows(20, 33, 8) == [0]                           # shorter: one window, padded
    assert plan_windows(33, 33, 8) == [0]                           # exactly one window
    assert plan_windows(58, 33, 8) == [0, 25]                       # two windows, no remainder
    assert plan_windows(83, 33, 8) == [0, 25, 50]                   # three, no remainder
    assert plan_windows(100, 33, 8) == [0, 25, 50, 67]              # remainder: last window aligned to the end
    assert plan_windows(34, 33, 8) == [0, 1]
    assert plan_windows(13, 5, 2) == [0, 3, 6, 8]
    for bad in [(0, 5, 2), (10, 5, 5), (10, 5, -1), (10, 0, 0)]:
        with pytest.raises(WindowPlanError):
            plan_windows(*bad)


def test_blend_weights_sum_to_one_and_cross_fade():
    for n, window, overlap in [(3, 5, 2), (5, 5, 2), (13, 5, 2), (9, 5, 2), (100, 33, 8), (34, 33, 8), (58, 33, 8),
                               (40, 9, 0), (41, 9, 4), (200, 33, 16)]:
        starts = plan_windows(n, window, overlap)
        w = blend_weights(starts, window, n)
        assert w.shape == (len(starts), window) and (w >= 0).all()
        total = np.zeros(max(n, window))
        for i, s in enumerate(starts):
            total[s:s + window] += w[i]
            assert (w[i][: n - s] > 0).all()            # every window contributes to every real frame it covers
        np.testing.assert_allclose(total[:n], 1.0, atol=1e-12)
        assert (total[n:] == 0).all()                   # padding frames get no weight
    # two windows of 33 overlapping by 8: weights 1 outside, (8..1)/9 and (1..8)/9 inside
    w = blend_weights([0, 25], 33, 58)
    assert (w[0, :25] == 1).all() and (w[1, 8:] == 1).all()
    np.testing.assert_allclose(w[0, 25:], np.arange(8, 0, -1) / 9)
    np.testing.assert_allclose(w[1, :8], np.arange(1, 9) / 9)
    # no overlap (overlap 0): hard cut, every weight 1
    assert (blend_weights(plan_windows(27, 9, 0), 9, 27) == 1).all()
    with pytest.raises(WindowPlanError):
        blend_weights([0, 20], 9, 29)                   # frames 9..19 uncovered


def test_blender_streams_each_frame_once():
    n, window, overlap = 30, 9, 3
    starts = plan_windows(n, window, overlap)                   # [0, 6, 12, 18, 21]
    rng = np.random.default_rng(0)
    outs = [rng.random((window, 2, 2, 3)).astype(np.float32) for _ in starts]
    b = WindowBlender(starts, window, n)
    seen, held, done = [], [], 0
    for i, o in enumerate(outs):
        got = b.add(i, o)
        nxt = starts[i + 1] if i + 1 < len(starts) else n
        assert [t for t, _ in got] == list(range(done, nxt))   # released as soon as no later window covers them
        done = nxt
        seen += [t for t, _ in got]
        held.append(len(b._acc))
    assert seen == list(range(n)) and b.finished
    assert max(held) <= window                      # only the pending overlap is held, not the video
    with pytest.raises(WindowPlanError):
        WindowBlender(starts, window, n).add(1, outs[1])      # out of order
    with pytest.raises(WindowPlanError):
        WindowBlender(starts, window, n).add(0, outs[0][:4])  # wrong length
    # blend of identical windows of the same signal is the signal
    sig = rng.random((n, 3)).astype(np.float32)
    same = [pad_frames(sig[s:s + window], window) for s in starts]
    np.testing.assert_allclose(blend_all(starts, window, n, same), sig, rtol=1e-6)


def test_pad_and_range_and_settings():
    x = np.arange(3)[:, None] * np.ones((3, 2))
    p = pad_frames(x, 5)
    assert p.shape == (5, 2) and (p[3:] == x[2]).all() and (p[:3] == x).all()
    assert pad_frames(x, 2) is x
    assert select_range(40, 0, None, "v") == (0, 40)
    assert select_range(40, 10, None, "v") == (10, 30)
    assert select_range(40, 10, 7, "v") == (10, 7)              # any count, not only 4k+1
    for start, frames in [(40, None), (-1, None), (35, 6), (0, 0)]:
        with pytest.raises(InferError, match="v: --start"):
            select_range(40, start, frames, "v")
    assert window_settings(None, None, 33) == (33, 8)
    assert window_settings(None, None, 5) == (5, 2)             # default overlap at most half the window
    assert window_settings(9, 0, 33) == (9, 0)
    for w, o in [(32, None), (8, 2), (9, 9), (9, -1)]:
        with pytest.raises(InferError):
            window_settings(w, o, 33)


# ------------------------------------------------------------------------------------ the window loop, fake pipeline

class FakePipe:
    """Called like WanVACEPipeline; returns an identity-like function of the control video that differs per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, video, mask, num_frames, generator, output_type, **kw):
        assert output_type == "pt" and video.shape[:2] == (1, num_frames) and mask.shape[:2] == (1, num_frames)
        k = len(self.calls)
        out = (0.5 * video[0] + 0.1 * (k + 1)).clamp(0, 1)              # (T, 3, H, W) "Log-Gamma" output
        self.calls.append({"video": video[0].clone(), "mask": mask[0, :, 0].clone(), "seed": generator.initial_seed(),
                           "out": out.permute(0, 2, 3, 1).numpy().astype(np.float32), "kw": kw})
        return SimpleNamespace(frames=[out])


def random_video(n, hw=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, hw, hw, 3))
    drift = rng.integers(-20, 21, (n, 1, 1, 3)).cumsum(0)
    return np.clip(base + drift, 0, 255).astype(np.uint8)


def run_fake(frames8, window, overlap, blend_space="log-gamma", offset=0):
    from hdr.degrade.masks import exposure_masks

    d = resolve_data_config({"recipe": "paper"})
    over, under = (np.asarray(m, np.float32) for m in exposure_masks(frames8, mode="paper"))
    starts = plan_windows(len(frames8), window, overlap)
    pipe, got = FakePipe(), {}

    def emit(t, frame):
        assert t not in got                         # exactly once
        got[t] = frame

    rec = convert_windows(pipe, frames8, over, under, d, window=window, starts=starts, seed=7, call={"steps": 1},
                          emit=emit, blend_space=blend_space, progress=False, offset=offset)
    return starts, pipe, got, rec, d, (over, under)


@pytest.mark.parametrize("blend_space", ["log-gamma", "linear"])
def test_fake_pipeline_long_video_blends_windows(blend_space):
    n, window, overlap = 13, 5, 2                   # windows [0, 3, 6, 8]: two overlaps of 2, one of 3, remainder
    frames8 = random_video(n)
    starts, pipe, got, rec, d, (over, under) = run_fake(frames8, window, overlap, blend_space)
    assert starts == [0, 3, 6, 8] and sorted(got) == list(range(n)) and len(pipe.calls) == 4
    g, m = float(d["log_gamma_g"]), float(d["log_gamma_m"])
    for i, s in enumerate(starts):                  # each window saw its own frames as the VACE context and mask
        item = {"ldr": torch.from_numpy(frames8[s:s + window]).permute(0, 3, 1, 2).float() / 255.0,
                "over": torch.from_numpy(over[s:s + window])[:, None],
                "under": torch.from_numpy(under[s:s + window])[:, None]}
        ctrl, mask = control_video(item, d, gray_over=False, text_to_hdr=False)
        torch.testing.assert_close(pipe.calls[i]["video"], ctrl, rtol=0, atol=0)
        torch.testing.assert_close(pipe.calls[i]["mask"], mask, rtol=0, atol=0)
        assert pipe.calls[i]["seed"] == window_seed(7, s) == rec[i]["seed"] and pipe.calls[i]["kw"] == {"steps": 1}
    assert len({c["seed"] for c in pipe.calls}) == 4
    o = [c["out"] if blend_space == "log-gamma" else log_gamma_inverse(c["out"], g=g, m=m) for c in pipe.calls]
    to_hdr = (lambda y: log_gamma_inverse(y, g=g, m=m)) if blend_space == "log-gamma" else (lambda x: x)

    def fade(a, ia, b, ib, t):                      # windows a, b overlapping on [starts[b], starts[a] + window)
        lo, hi = starts[b], starts[a] + window
        L, j = hi - lo, t - lo
        return ((L - j) / (L + 1)) * o[ia][t - starts[a]] + ((j + 1) / (L + 1)) * o[ib][t - starts[b]]

    expect = {0: o[0][0], 1: o[0][1], 2: o[0][2], 5: o[1][2], 11: o[3][3], 12: o[3][4]}
    for t, e in expect.items():                     # outside overlaps: exactly the window's output
        np.testing.assert_array_equal(got[t], np.asarray(to_hdr(e), np.float32))
    for t, (a, b) in {3: (0, 1), 4: (0, 1), 6: (1, 2), 7: (1, 2), 8: (2, 3), 9: (2, 3), 10: (2, 3)}.items():
        np.testing.assert_allclose(got[t], to_hdr(fade(a, a, b, b, t)), rtol=1e-5, atol=1e-6)
        # and the fade really mixes two different outputs
        assert np.abs(got[t] - to_hdr(o[a][t - starts[a]])).max() > 1e-3
        assert np.abs(got[t] - to_hdr(o[b][t - starts[b]])).max() > 1e-3


def test_fake_pipeline_short_video_is_padded_and_trimmed():
    frames8 = random_video(3)
    starts, pipe, got, _, d, _ = run_fake(frames8, 5, 2)
    assert starts == [0] and sorted(got) == [0, 1, 2] and len(pipe.calls) == 1
    v = pipe.calls[0]["video"]
    assert v.shape[0] == 5 and torch.equal(v[3], v[2]) and torch.equal(v[4], v[2])   # last frame repeated
    g, m = float(d["log_gamma_g"]), float(d["log_gamma_m"])
    for t in range(3):
        np.testing.assert_array_equal(got[t], log_gamma_inverse(pipe.calls[0]["out"][t], g=g, m=m))


def test_window_seeds_follow_the_input_frame():
    """--start shifts the plan but not the seeds: a window has the same seed wherever the converted range begins."""
    frames8 = random_video(9)
    _, p0, *_ = run_fake(frames8, 5, 2)                      # windows at input frames 0, 3, 4
    _, p1, *_ = run_fake(frames8[3:8], 5, 2, offset=3)        # one window at input frame 3
    assert p1.calls[0]["seed"] == p0.calls[1]["seed"] != p0.calls[0]["seed"]


# ------------------------------------------------------------------------------------ the real tiny pipeline, CLI

class Synth(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        hdr = torch.rand(5, 3, 32, 32, generator=g) ** 4 * 20
        ldr = (hdr * 2).clamp(0, 1) ** (1 / 2.2)
        y = ldr.mean(1, keepdim=True)
        return {"hdr": hdr, "ldr": ldr, "over": (y > 0.9).float(), "under": (y < 0.1).float(),
                "caption": "[overexposed: sky]; [underexposed: floor]", "overexposed": "sky",
                "underexposed": "floor", "key": f"h{i}/c", "start": 0, "exposures": torch.ones(5),
                "params": {"exposure_stops": 1.0}}


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    from train.diffhdr.task import DiffHDRTask
    from train.engine import train

    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"].update(steps=1, checkpoint_every=1, checkpoints_keep=1)
    run = tmp_path_factory.mktemp("lora") / "run"
    train(DiffHDRTask(cfg, dataset=Synth()), cfg, run, device="cpu", progress=False)
    assert (run / "lora.safetensors").is_file() and (run / "config.yaml").is_file()
    return run / "lora.safetensors"


def write_pngs(folder: Path, frames8: np.ndarray) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for i, f in enumerate(frames8):
        assert cv2.imwrite(str(folder / f"frame_{i:04d}.png"), f[..., ::-1])
    return folder


def test_real_tiny_pipeline_long_video_through_cli(tiny_lora, tmp_path, capsys):
    from hdr.io import read_image
    from train.infer import main as infer_main

    n = 13                                           # window 5 (the tiny run's), overlap 2: 4 windows + remainder
    rng = np.random.default_rng(3)
    frames8 = np.clip(random_video(n, hw=32, seed=1).astype(int) + rng.integers(-60, 61, (n, 32, 32, 1)), 0, 255)
    frames8[:, :6, :6] = 255                         # an over-exposed corner and an under-exposed one
    frames8[:, -6:, -6:] = 0
    video = write_pngs(tmp_path / "ldr", frames8.astype(np.uint8))
    out = tmp_path / "pred"
    args = ["--lora", str(tiny_lora), "--video", str(video), "--steps", "1", "--overlap", "2", "--device", "cpu",
            "--alpha-over", "0.5", "--alpha-under", "0.5", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-m", "train.infer", *args, "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"wrote {n} EXR frames" in p.stdout and "4 window(s) of 5, overlap 2" in p.stdout
    files = sorted(out.glob("frame_*.exr"))
    assert [f.name for f in files] == [f"frame_{i:04d}.exr" for i in range(n)]      # exactly one per input frame
    assert not list(out.glob(".*tmp*"))
    imgs = [read_image(f) for f in files]
    assert all(i.shape == (32, 32, 3) and np.isfinite(i).all() and i.min() >= 0 for i in imgs)
    meta = json.loads((out / "infer.json").read_text())
    plan = meta["windows"]
    assert plan["starts"] == [0, 3, 6, 8] and plan["overlaps"] == [2, 2, 3] and plan["window"] == 5
    assert plan["overlap"] == 2 and plan["padded"] == 0 and "log-gamma" in plan["blend"]
    assert plan["seeds"] == [window_seed(0, s) for s in plan["starts"]]
    assert meta["frames"] == n and meta["frames_written"] == [f.name for f in files]

    # window 0 alone (--frames 5) gives exactly the long conversion's frames 0-2 (covered by window 0 only): same
    # seed, same context, same (causal) masks
    one = tmp_path / "one"
    assert infer_main(args + ["--frames", "5", "--out", str(one)]) == 0
    for t in range(3):
        np.testing.assert_array_equal(read_image(one / f"frame_{t:04d}.exr"), imgs[t])
    # frames 3-4 are a blend, not window 0's output alone
    assert np.abs(read_image(one / "frame_0003.exr") - imgs[3]).max() > 0

    # a video shorter than a window: padded with its last frame, only its own frames written
    short = tmp_path / "short"
    assert infer_main(args + ["--frames", "3", "--out", str(short)]) == 0
    assert sorted(f.name for f in short.glob("frame_*.exr")) == ["frame_0000.exr", "frame_0001.exr",
                                                                 "frame_0002.exr"]
    assert json.loads((short / "infer.json").read_text())["windows"]["padded"] == 2

    # the same command again: the work is done, nothing is rewritten
    capsys.readouterr()
    before = [f.stat().st_mtime_ns for f in files]
    assert infer_main(args + ["--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    same = [a if a != str(video) else str(video) + os.sep for a in args]      # another spelling of the same input
    assert same != args and infer_main(same + ["--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == before

    # interrupted after 6 frames (frame 6 is a blend of windows 1 and 2): the same command resumes at frame 6, reruns
    # only windows 1-3 (the first one that covers frame 6 is window 1) and gives bit-identical frames
    import hdr.io

    cut = tmp_path / "cut"
    real_write, calls = hdr.io.write_exr, []

    def dying_write(path, img, **kw):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(path)
        return real_write(path, img, **kw)

    hdr.io.write_exr = dying_write
    try:
        with pytest.raises(KeyboardInterrupt):
            infer_main(args + ["--out", str(cut)])
    finally:
        hdr.io.write_exr = real_write
    assert sorted(f.name for f in cut.glob("frame_*.exr")) == [f"frame_{i:04d}.exr" for i in range(6)]
    assert json.loads((cut / "infer.json").read_text())["status"] == "running"
    assert infer_main(args + ["--out", str(cut)]) == 0
    assert "resumed at frame 6" in capsys.readouterr().out
    meta = json.loads((cut / "infer.json").read_text())
    assert meta["status"] == "complete" and meta["resumed_from"] == 6 and meta["windows_run"] == [3, 6, 8]
    for t in range(n):
        np.testing.assert_array_equal(read_image(cut / f"frame_{t:04d}.exr"), imgs[t])

    # existing outputs of other settings: a conflict without --overwrite; with it, the folder holds only the new
    # conversion (frames of the longer earlier run are removed)
    assert infer_main(args + ["--out", str(out), "--seed", "1"]) == 2
    assert "already holds EXR frames" in capsys.readouterr().err
    assert infer_main(args + ["--frames", "5", "--out", str(out), "--overwrite"]) == 0
    assert len(list(out.glob("frame_*.exr"))) == 5
    assert json.loads((out / "infer.json").read_text())["stale_removed"] == [f"frame_{i:04d}.exr" for i in range(5, n)]
    # the same command on changed input frames is a conflict too (the input is identified by its hash)
    assert infer_main(args + ["--frames", "5", "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    write_pngs(tmp_path / "ldr2", np.roll(frames8, 1, axis=0).astype(np.uint8))
    os.replace(tmp_path / "ldr2" / "frame_0002.png", video / "frame_0002.png")
    assert infer_main(args + ["--frames", "5", "--out", str(out)]) == 2
    assert "already holds EXR frames" in capsys.readouterr().err
    # bad ranges and windows: one line naming the problem
    for extra, msg in [(["--start", "13"], "outside the video"), (["--window", "6"], "4k+1"),
                       (["--overlap", "5"], "--overlap 5")]:
        assert infer_main(args + extra + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
