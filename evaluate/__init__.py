"""Evaluation of HDR video predictions.

* :mod:`evaluate.metrics` -- PSNR_T / SSIM_T (mu-law, mu = 5000), PSNR-L, PU21-PSNR, temporal stability, PU21-PIQE,
  on numpy arrays or torch tensors; the normalisation, the PSNR cap, the cd/m^2 anchor and the CLIP-IQA/MUSIQ
  tonemap are documented there.
* :mod:`evaluate.vdp` -- FovVideoVDP (pyfvvdp) and ColorVideoVDP (pycvvdp), offline, importable in one process.
* :mod:`evaluate.perceptual` -- LPIPS / CLIP-IQA / MUSIQ (through a user-installed pyiqa) from local weights only.
* :mod:`evaluate.run` -- ``python -m evaluate.run --manifest M --split test --predictions DIR --out OUT`` (or
  ``--reference GT_DIR``): metrics.json, metrics.md, PNG plots.
* :mod:`evaluate.mapping` -- ``python -m evaluate.mapping --manifest M --vae PATH``: DiffHDR Table 4.
"""
from evaluate.metrics import CORE_METRICS, METRICS, PSNR_CAP_DB, clip_metrics, nits_scale, temporal_t

__all__ = ["CORE_METRICS", "METRICS", "PSNR_CAP_DB", "clip_metrics", "nits_scale", "temporal_t"]
