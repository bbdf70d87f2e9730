"""Shared fixtures: the real HDRIs inside the bpy wheel, and small synthetic maps."""
from __future__ import annotations

import importlib.util
import shutil
import sys
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


@pytest.fixture(scope="session")
def render_bench():
    """``benchmarks/render.py`` imported as a module (it is a script named like the package it measures, and it puts
    the repository first on sys.path: the path is restored)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "render.py"
    spec = importlib.util.spec_from_file_location("bench_render_for_tests", path)
    mod = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved
    return mod


def sun_map(w: int = 64, value: float = 1e5) -> np.ndarray:
    """A 2:1 map, dim sky with a 3x3 'sun' above half-float range at the centre (+X, elevation ~ 20 deg)."""
    img = np.full((w // 2, w, 3), 0.5, np.float32)
    r, c = w // 2 // 2 - w // 18, w // 2
    img[r - 1 : r + 2, c - 1 : c + 2] = value
    return img


TINY = dict(width=32, height=32, frames=9, hdris=("sunrise", "forest", "night"), programs=("highlight_zoom_in",
                                                                                          "rotation_000"))


@pytest.fixture(scope="session")
def tiny_dataset_src(bundled_hdris, tmp_path_factory) -> Path:
    """A tiny dataset made by the real stages, built once per test session; treat it as READ-ONLY (use
    ``tiny_dataset`` for a private copy). 3 HDRIs x 2 clips x 9 frames of 32x32 (direct engine), each clip with one
    ``paper`` augmentation (``ldr/paper_00``) and one 3-exposure alternating sequence (``ldr/alt3_00``)."""
    from augment.clip import AugTask, augment_clip
    from render.job import HdriTask, RenderSettings, render_hdri

    root = tmp_path_factory.mktemp("tiny") / "data"
    s = RenderSettings(width=TINY["width"], height=TINY["height"], frames=TINY["frames"], samples=4,
                       engine="direct", programs=TINY["programs"])
    for name in TINY["hdris"]:
        res = render_hdri(HdriTask(str(bundled_hdris), f"{name}.exr", name, str(root), s))
        assert res.count("rendered") == len(TINY["programs"]), res
        for clip in TINY["programs"]:
            augment_clip(AugTask(str(root), name, clip, "paper", 1, 0))
            augment_clip(AugTask(str(root), name, clip, "paper", 1, 0, alternating=3))
    from caption.clip import caption_dataset

    caption_dataset(str(root))  # stats backend (no model): every clip gets a caption.json
    return root


@pytest.fixture
def tiny_dataset(tiny_dataset_src, tmp_path) -> Path:
    """A private, writable copy of :func:`tiny_dataset_src`."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset_src, dst, ignore=shutil.ignore_patterns(".tmp"))
    return dst


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no CUDA device, whatever this machine has (device-resolution tests run the same everywhere)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)



@pytest.fixture(scope="module")
def s3_env():
    """A fresh moto S3 server on 127.0.0.1 for the module (empty buckets), and the environment that points boto/s3fs
    at it (the standard AWS variables a user sets for any S3-compatible store: MinIO, Ceph); restored afterwards."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import urllib.request

    # moto keeps its buckets in process-wide state: empty them, so every module starts from an empty store
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems by their arguments: not the old endpoint
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
