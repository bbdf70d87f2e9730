"""Augment stage: every rendered HDR clip -> N realistic LDR versions on disk (PNG frames, exposure masks, aug.json).

- :mod:`augment.clip`  the function one Ray task runs: write the missing augmentations of one clip.
- :mod:`augment.run`   the CLI, ``python -m augment.run --root ROOT``.

The degradation itself (exposure shift, AR(1) heteroscedastic noise, sRGB or gamma 2.2, clipping, 8-bit
quantisation, exposure masks, alternating exposures) is :mod:`hdr.degrade`, applied to a clip by
:func:`hdr.dataset.ldr.make_ldr`, so the training loader makes the same LDR on the fly.
"""
