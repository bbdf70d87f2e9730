"""Every command-line entry point (also through ``hdrvid``, i.e. ``python -m hdr.commands``) answers --help (exit 0, a
usage line naming itself) without doing any work."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["render.run"], ["render.fetch"], ["hdr.commands", "fetch"], ["augment.run"], ["caption.run"], ["caption.tiny"],
    ["manifests"], ["manifests", "build"], ["manifests", "verify"], ["manifests", "diff"], ["manifests", "export"],
    ["manifests", "report"], ["manifests", "list"], ["manifests", "show"],
    ["train.run"], ["train.infer"], ["train.infer", "--model", "hdrvdiff"],
    ["evaluate.run"], ["evaluate.mapping"],
    ["hdr.commands"], ["hdr.commands", "render"], ["hdr.commands", "caption"], ["hdr.commands", "manifests", "export"],
    ["hdr.commands", "train"], ["hdr.commands", "infer"], ["hdr.commands", "evaluate"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help(cmd, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", *cmd, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.lower().startswith("usage:") and "--help" in r.stdout
    assert not any(tmp_path.iterdir())  # --help writes nothing
