"""examples/tiny_pipeline.sh (shown in the README) runs every stage's CLI in order and leaves what each promises:
render -> augment -> caption -> manifests -> train -> infer -> evaluate."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from hdr.io import read_image

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_walkthrough_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    w = tmp_path / "w"
    r = subprocess.run(["bash", str(REPO / "examples/tiny_pipeline.sh"), str(w)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    data = w / "data"
    assert len(list(data.glob("*/*/clip.json"))) == 16
    assert len(list(data.glob("*/*/ldr/paper_00/aug.json"))) == 16
    assert len(list(data.glob("*/*/caption.json"))) == 16
    version = json.loads((data / "manifests/v0001.json").read_text())
    assert version["counts"]["clips"] == 16
    assert (w / "run/lora.safetensors").exists()
    assert json.loads((w / "run/manifest.json").read_text())["root_hash"] == version["root_hash"]
    metrics = json.loads((w / "eval/metrics.json").read_text())
    assert metrics["n_clips"] == 2 and not metrics["missing"] and not metrics["failures"]
    assert np.isfinite(metrics["psnr_t"])
    for clip in metrics["clips"]:
        frames = sorted((w / "pred" / clip["rel"]).glob("frame_*.exr"))
        assert len(frames) == 9 and all(np.isfinite(read_image(f)).all() for f in frames)
