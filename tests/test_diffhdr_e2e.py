"""End to end on the real stages: render+augment fixture -> `python -m manifests build` -> `python -m train.run
--model diffhdr` with the shipped tiny config (real CLI, subprocess) -> resume -> `python -m train.infer` -> EXR."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "diffhdr_tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args, check=True):
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def manifest(tiny_dataset_src, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("e2e") / "data"
    shutil.copytree(tiny_dataset_src, root, ignore=shutil.ignore_patterns(".tmp"))
    # the default split (50 test clips) keeps one HDRI (2 clips) of the tiny set in train
    run("-m", "manifests", "build", "--root", str(root), "--quiet")
    m = root / "manifests" / "v0001.parquet"
    assert m.is_file()
    return m


def test_train_run_end_to_end_resume_and_infer(manifest, tmp_path, capsys):
    from manifests import open_manifest

    train_clips = open_manifest(str(manifest)).clips("train")
    assert len(train_clips) >= 2
    out = tmp_path / "run"
    t0 = time.time()
    p = run("-m", "train.run", "--manifest", str(manifest), "--model", "diffhdr", "--config", str(TINY),
            "--out", str(out), "--device", "cpu", "--no-progress", "--stop-after", "3")
    first = time.time() - t0
    assert "stopped (rerun to continue) at step 3" in p.stdout, p.stdout
    assert not (out / "lora.safetensors").exists()
    p = run("-m", "train.run", "--manifest", str(manifest), "--model", "diffhdr", "--config", str(TINY),
            "--out", str(out), "--device", "cpu", "--no-progress")
    total = time.time() - t0
    assert "finished at step 6" in p.stdout, p.stdout
    assert total < 120, f"tiny run took {total:.0f} s"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in rows)
    rec = json.loads((out / "manifest.json").read_text())
    assert rec["version"] == "v0001" and rec["root_hash"]
    env = json.loads((out / "env.json").read_text())
    assert env["task"] == "diffhdr" and env["device"] == "cpu" and env["task_info"]["lora"]["rank"] == 4
    assert (out / "lora.safetensors").is_file() and (out / "lora.json").is_file()
    print(f"first 3 steps incl. start-up {first:.1f} s, whole run {total:.1f} s")

    # (in-process from here on: each fresh interpreter costs ~15 s of imports on this machine)
    from train.infer import main as infer_main
    from train.run import main as run_main

    argv = ["--manifest", str(manifest), "--model", "diffhdr", "--config", str(TINY), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    # same command again: nothing left to do, the run is complete
    assert run_main(argv) == 0
    assert "finished at step 6" in capsys.readouterr().out
    # a different config in the same folder is a conflict, named in one line
    assert run_main(argv + ["--set", "model.lora.rank=8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "different config" in err and len(err.strip().splitlines()) == 1

    # inference on the LDR frames of a stored augmentation -> EXR frames
    root = manifest.parent.parent
    clip = train_clips[0]
    aug = clip.aug("single")[0]
    frames = root / aug.rel
    exr = tmp_path / "pred"
    assert infer_main(["--lora", str(out / "lora.safetensors"), "--video", str(frames), "--out", str(exr),
                       "--steps", "2", "--frames", "5", "--alpha-over", "0.5", "--alpha-under", "0.5",
                       "--device", "cpu"]) == 0
    from hdr.io import read_image

    outs = sorted(exr.glob("frame_*.exr"))
    assert len(outs) == 5
    img = read_image(outs[0])
    assert img.shape == (32, 32, 3) and np.isfinite(img).all() and img.min() >= 0
    meta = json.loads((exr / "infer.json").read_text())
    assert meta["cfa"]["alpha_over"] == 0.5 and meta["frames"] == 5
    # CFA really acts: the same seed without it gives other frames
    assert infer_main(["--lora", str(out / "lora.safetensors"), "--video", str(frames), "--out", str(tmp_path / "p0"),
                       "--steps", "2", "--frames", "5", "--device", "cpu"]) == 0
    plain = read_image(tmp_path / "p0" / "frame_0000.exr")
    assert np.abs(plain - img).max() > 0 and json.loads((tmp_path / "p0" / "infer.json").read_text())["cfa"] is None

    # --cache-latents through the CLI: target latents land in the cache folder, keyed by the VAE's hash
    cache = tmp_path / "cache"
    assert run_main(argv[:-5] + ["--out", str(tmp_path / "cached"), "--device", "cpu", "--no-progress",
                                 "--cache-latents", "--set", f"data.cache_dir={cache}", "--set", "train.steps=2"]) == 0
    assert len(list(cache.glob("vae-*/*.safetensors"))) >= 1
    assert yaml.safe_load((tmp_path / "cached" / "config.yaml").read_text())["data"]["cache_latents"] is True
    # existing frames are not overwritten silently
    assert infer_main(["--lora", str(out / "lora.safetensors"), "--video", str(frames), "--out", str(exr),
                       "--steps", "1", "--device", "cpu"]) == 2
    assert "already holds EXR frames" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    from train.infer import main as infer_main
    from train.run import main as run_main

    assert run_main(["--manifest", str(tmp_path / "nope.parquet"), "--model", "diffhdr", "--config", str(TINY),
                     "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "nope.parquet" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        run_main(["--help"])
    assert "--cache-latents" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        infer_main(["--help"])
    assert "--alpha-over" in capsys.readouterr().out
    assert infer_main(["--lora", str(tmp_path / "missing.safetensors"), "--video", str(tmp_path), "--out",
                       str(tmp_path / "o")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
