"""Shared fixtures: the real HDRIs inside the bpy wheel, and small synthetic maps."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from render.hdri import default_hdri_dir


@pytest.fixture(scope="session")
def bundled_hdris() -> Path:
    """Blender's 8 CC0 PolyHaven studio-light worlds (1024x512 float32). bpy is a test dependency: no skip."""
    d = default_hdri_dir()
    assert d is not None, "bpy is not installed: pip install -e '.[render,test]'"
    return d


@pytest.fixture
def hdri_dir(tmp_path, bundled_hdris):
    """A fresh folder with copies of a few bundled maps (tests may add bad files to it)."""
    def make(*names):
        d = tmp_path / "hdris"
        d.mkdir(exist_ok=True)
        for n in names:
            shutil.copy(bundled_hdris / f"{n}.exr", d / f"{n}.exr")
        return d
    return make


def sun_map(w: int = 64, value: float = 1e5) -> np.ndarray:
    """A 2:1 map, dim sky with a 3x3 'sun' above half-float range at the centre (+X, elevation ~ 20 deg)."""
    img = np.full((w // 2, w, 3), 0.5, np.float32)
    r, c = w // 2 // 2 - w // 18, w // 2
    img[r - 1 : r + 2, c - 1 : c + 2] = value
    return img
