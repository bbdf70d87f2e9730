"""DiffHDR trainer: Wan2.1-VACE + rank-32 LoRA, rectified flow matching in Log-Gamma space.

``make_task(config, manifest)`` is the entry point of ``python -m train.run --model diffhdr``; ``train.diffhdr.infer``
that of ``python -m train.infer --model diffhdr``. Modules: ``model`` (backbone + LoRA), ``conditioning`` (VACE inputs,
flow matching), ``task`` (the engine's TrainTask, data recipes, latent cache), ``cfa`` (context-focused
cross-attention, DiffHDR eq. 7-8), ``infer``.
"""
from train.diffhdr.task import RECIPES, DiffHDRTask, make_task

__all__ = ["make_task", "DiffHDRTask", "RECIPES"]
