"""FovVideoVDP (``pyfvvdp``) and ColorVideoVDP (``pycvvdp``, PyPI package ``cvvdp``), offline, in one process.

Both packages append their own folder to ``sys.path`` and then ``from interp import ...`` / ``from third_party
import ...`` as TOP-LEVEL modules. Imported into one process in the usual way, the second package finds the first
one's ``interp`` in ``sys.modules`` and fails (measured: ``ImportError: cannot import name 'interp1dim2' from
'interp' (.../pyfvvdp/interp.py)``), or silently uses the other package's helpers. :func:`load` imports each package
in isolation: it removes any top-level ``interp`` / ``third_party`` modules before the import, and afterwards removes
them again together with the folder the package appended to ``sys.path``. The packages bind those helpers at import
time (``from interp import interp1``), so they keep working afterwards, and nothing else in the process can pick up
a stray ``interp`` module. Tested: both metrics in one process give JOD 10 for identical clips.

Inputs are absolute linear RGB in cd/m^2 (see :func:`evaluate.metrics.nits_scale`); the display model
(default ``standard_hdr_linear``: 30-inch 4K HDR monitor, 1500 cd/m^2 peak, linear BT.709 input, 10 lux) is named
in every result. No network access: both packages read their data files from the installed package.

Photometry (``photometry``): ``"display"`` maps the cd/m^2 input through the display model's own photometry (for
``standard_hdr_linear``: clamped at its 1500 cd/m^2 peak, plus the black level and 10 lux of reflected ambient
light). ``"absolute"`` is what the public DiffHDR evaluation (``eval/cal_metrics.py``) does for FovVideoVDP:
``pyfvvdp.fvvdp_display_photo_absolute(peak_nits)``, i.e. the input clamped to [0.005, ``peak_nits``] with no
ambient light (the display model still gives the geometry). pycvvdp has no absolute photometry class (and the public
code does not compute ColorVideoVDP): ColorVideoVDP always uses the display model's photometry, and
:meth:`VideoVDP.describe` says which one each metric used.

Mode (``mode``): ``"video"`` scores a clip with the temporal model at ``fps``. ``"framewise"`` scores every frame as an
image and averages the JODs: this is what the public code's ``compute_fovvdp`` ends up doing (its
``predict(..., dim_order="THWC")`` without a frame rate raises inside pyfvvdp, and its ``except`` falls back to
per-frame scores), although it intends the video model and the paper reports a video metric.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading

import numpy as np

DEFAULT_DISPLAY = "standard_hdr_linear"
DEFAULT_FPS = 24.0
JOD_MAX = 10.0
PACKAGES = {"fvvdp": "pyfvvdp", "cvvdp": "pycvvdp"}
PHOTOMETRIES = ("absolute", "display")  # absolute: the public DiffHDR evaluation (FovVideoVDP)
MODES = ("video", "framewise")  # framewise: what the public evaluation code effectively computes
_SHARED_TOP_LEVEL = ("interp", "third_party")
_lock = threading.Lock()


def _drop_shared_modules() -> None:
    """Forget the top-level ``interp`` / ``third_party`` modules and the package folders that expose them (a
    plain ``import pyfvvdp`` elsewhere in the process leaves both behind)."""
    for name in [m for m in sys.modules if m in _SHARED_TOP_LEVEL or m.startswith("third_party.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if os.path.basename(os.path.normpath(p)) not in PACKAGES.values()]


def load(package: str):
    """Import ``pyfvvdp`` or ``pycvvdp`` so that both can live in one process (see the module docstring)."""
    if package not in PACKAGES.values():
        raise ValueError(f"unknown VDP package {package!r}")
    with _lock:
        mod = sys.modules.get(package)
        if mod is not None and hasattr(mod, "fvvdp" if package == "pyfvvdp" else "cvvdp"):
            _drop_shared_modules()
            return mod
        _drop_shared_modules()
        before = list(sys.path)
        try:
            mod = importlib.import_module(package)
        finally:
            sys.path[:] = [p for p in sys.path if p in before]
            _drop_shared_modules()
        return mod


class VideoVDP:
    """One metric object, reused for every clip: ``VideoVDP("fvvdp").score(pred_nits, gt_nits)`` -> JOD."""

    def __init__(self, kind: str, display: str = DEFAULT_DISPLAY, device: str = "cpu", photometry: str = "display",
                 peak_nits: float | None = None, mode: str = "video"):
        import torch

        if kind not in PACKAGES:
            raise ValueError(f"kind must be one of {sorted(PACKAGES)}, not {kind!r}")
        if photometry not in PHOTOMETRIES:
            raise ValueError(f"photometry must be one of {', '.join(PHOTOMETRIES)}, not {photometry!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.kind, self.display, self.mode = kind, display, mode
        self.device = torch.device(device)
        mod = load(PACKAGES[kind])
        factory = mod.fvvdp if kind == "fvvdp" else mod.cvvdp
        kw = {}
        self.photometry = "display"
        if photometry == "absolute" and kind == "fvvdp":
            if not peak_nits or peak_nits <= 0:
                raise ValueError("absolute VDP photometry needs a positive peak_nits")
            kw["display_photometry"] = mod.fvvdp_display_photo_absolute(float(peak_nits))
            self.photometry = f"absolute, clamped to [0.005, {float(peak_nits):g}] cd/m^2"
        try:
            self.metric = factory(display_name=display, quiet=True, device=self.device, **kw)
        except Exception as e:  # unknown display names raise plain exceptions deep inside the packages
            raise ValueError(f"{kind}: cannot use display model {display!r}: {e}") from None
        self.version = getattr(mod, "__version__", None) or _dist_version(kind)

    def score(self, pred_nits, gt_nits, fps: float = DEFAULT_FPS) -> float:
        """JOD (10 = no visible difference) of a clip ``(T, H, W, 3)`` (or one frame ``(H, W, 3)``) of absolute
        linear RGB in cd/m^2. A single frame is scored as an image (no temporal channel)."""
        import torch

        p = np.ascontiguousarray(pred_nits, dtype=np.float32)
        g = np.ascontiguousarray(gt_nits, dtype=np.float32)
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
        if p.ndim == 4 and p.shape[0] == 1:
            p, g = p[0], g[0]
        if p.ndim == 4 and self.mode == "framewise":
            return float(np.mean([self.score(a, b) for a, b in zip(p, g)]))
        order = "FHWC" if p.ndim == 4 else "HWC"
        with torch.no_grad():
            q, _ = self.metric.predict(p, g, dim_order=order, frames_per_second=fps if order == "FHWC" else 0)
        return float(q)

    def describe(self) -> dict:
        return {"package": PACKAGES[self.kind], "version": self.version, "display": self.display,
                "photometry": self.photometry, "mode": self.mode}


def _dist_version(kind: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyfvvdp" if kind == "fvvdp" else "cvvdp")
    except PackageNotFoundError:
        return None
