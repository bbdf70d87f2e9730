"""``python -m augment.run`` on a tiny dataset made by the render stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from hdr.degrade.presets import Params, degrade
from hdr.io import read_image
from render.job import HdriTask, RenderSettings, render_hdri
from tests.test_render_cli import REPO


@pytest.fixture
def dataset(bundled_hdris, tmp_path):
    root = tmp_path / "data"
    s = RenderSettings(width=32, height=16, frames=5, samples=4, engine="direct",
                       programs=("highlight_zoom_in", "rotation_000"))
    for name in ("sunrise", "forest"):
        assert render_hdri(HdriTask(str(bundled_hdris), f"{name}.exr", name, str(root), s)).count("rendered") == 2
    return root


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "augment.run", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_augment_writes_ldr_masks_and_reproducible_params(dataset):
    r = run("--dataset", dataset, "--per-clip", "2", "--no-ray", "--preset", "paper")
    assert r.returncode == 0, r.stderr
    assert "wrote 8 augmentations" in r.stderr
    d = dataset / "sunrise/highlight_zoom_in/ldr/paper_01"
    meta = json.loads((d / "aug.json").read_text())
    assert meta["preset"] == "paper" and meta["params"]["seed"] == meta["seed"]
    assert -2 <= meta["params"]["exposure_stops"] <= 2
    ldr = np.stack([cv2.imread(str(d / f), cv2.IMREAD_UNCHANGED)[..., ::-1] for f in meta["frames"]])
    assert ldr.dtype == np.uint8 and ldr.shape == (5, 16, 32, 3)
    over = cv2.imread(str(d / "over_0000.png"), cv2.IMREAD_UNCHANGED)
    assert over.shape == (16, 32) and over.dtype == np.uint8
    # bit-for-bit re-make from aug.json alone
    hdr = np.stack([read_image(dataset / "sunrise/highlight_zoom_in" / f"frame_{i:04d}.exr") for i in range(5)])
    again, _ = degrade(hdr, Params(**meta["params"]))
    np.testing.assert_array_equal(again, ldr)
    # the two augmentations of a clip differ; a rerun writes nothing
    other = json.loads((dataset / "sunrise/highlight_zoom_in/ldr/paper_00/aug.json").read_text())
    assert other["seed"] != meta["seed"]
    r = run("--dataset", dataset, "--per-clip", "2", "--no-ray", "--preset", "paper")
    assert r.returncode == 0 and "wrote 0 augmentations, 8 already done" in r.stderr
    records = sorted((dataset / "_runs").glob("augment-*.json"))
    assert len(records) == 2 and json.loads(records[-1].read_text())["counts"] == {"written": 0, "skipped": 8,
                                                                                    "failed": 0}


def test_alternating_exposures_through_ray(dataset):
    r = run("--dataset", dataset, "--alternating", "3", "--preset", "diffhdr-code", "--preview")
    assert r.returncode == 0, r.stderr
    import av

    with av.open(str(dataset / "forest/rotation_000/ldr/alt3_00/preview.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (16, 32, 3)
    meta = json.loads((dataset / "forest/rotation_000/ldr/alt3_00/aug.json").read_text())
    assert meta["alternating"]["ev"] == [-2.0, 0.0, 2.0, -2.0, 0.0]
    assert meta["params"]["quantize"] == "truncate"


def test_empty_dataset_is_a_clear_error(tmp_path):
    r = run("--dataset", tmp_path)
    assert r.returncode == 2 and "no rendered clips" in r.stderr


def test_preset_overrides_from_the_command_line(dataset):
    r = run("--dataset", dataset, "--no-ray", "--set", "sigma_s_range=[0.01, 0.01]", "--set", "rho=0.8",
            "--set", "noise_probability=1")
    assert r.returncode == 0, r.stderr
    meta = json.loads((dataset / "forest/rotation_000/ldr/paper_00/aug.json").read_text())
    assert meta["preset_settings"]["rho"] == 0.8 and meta["params"]["rho"] == 0.8
    assert meta["params"]["sigma_s"] == 0.01 and meta["preset_settings"]["sigma_s_range"] == [0.01, 0.01]
    # the same overrides again: nothing to do; other overrides: a conflict, not a silent overwrite
    r = run("--dataset", dataset, "--no-ray", "--set", "sigma_s_range=[0.01, 0.01]", "--set", "rho=0.8",
            "--set", "noise_probability=1")
    assert "wrote 0 augmentations, 4 already done" in r.stderr
    r = run("--dataset", dataset, "--no-ray", "--set", "rho=0.3")
    assert r.returncode == 1 and "preset overrides" in r.stderr
    r = run("--dataset", dataset, "--no-ray", "--set", "sigma=3")
    assert r.returncode == 2 and "FIELD one of" in r.stderr
