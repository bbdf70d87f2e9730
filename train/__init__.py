"""Trainers launched from a manifest: DiffHDR (``train/diffhdr``) and HDR-V-Diff
(``train/hdrvdiff``), on one shared engine (``train/engine.py``).

A model is a sub-package ``train.<name>`` registered in :data:`MODELS`. It provides:

* ``make_task(config: dict, manifest) -> TrainTask`` -- the task the engine trains (protocol in ``train.engine``);
  ``config`` is the resolved run config (``config["stage"]`` holds ``--stage``, ``config["data"]["cache_latents"]``
  is set by ``--cache-latents``), ``manifest`` is the opened manifest (``hdr.dataset.open_manifest``);
* ``train.<name>.infer`` with ``add_arguments(parser)`` and ``main(args) -> int`` for ``python -m train.infer
  --model <name> ...``.

``python -m train.run --manifest M --model diffhdr|hdrvdiff [--stage S] --config C.yaml --run RUN``.
"""
from __future__ import annotations

import importlib

# name -> (package, one-line description, stages or None)
MODELS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "diffhdr": ("train.diffhdr", "DiffHDR: Wan2.1-VACE + LoRA, flow matching in Log-Gamma space", None),
    "hdrvdiff": ("train.hdrvdiff", "HDR-V-Diff: HDR-LDM + TCAM + ZiCA, three training stages",
                 None),  # stages are validated by train.hdrvdiff.make_task
}


def register_model(name: str, package: str, description: str = "", stages: tuple[str, ...] | None = None) -> None:
    """Add a model (e.g. from a plug-in) without editing this file."""
    MODELS[name] = (package, description, stages)


def model_package(name: str):
    """Import the package of a registered model; a clear error when it is unknown or missing."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    pkg = MODELS[name][0]
    try:
        return importlib.import_module(pkg)
    except ModuleNotFoundError as e:
        if e.name and pkg.startswith(e.name):
            raise ModuleNotFoundError(f"model {name!r}: its package {pkg} is not installed/implemented") from None
        raise
