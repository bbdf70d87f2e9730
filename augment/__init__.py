"""Augment stage: rendered HDR clips -> realistic LDR video (exposure shift, AR(1) heteroscedastic noise, sRGB,
clipping, 8-bit quantisation) and exposure masks: :mod:`augment.degrade` (presets, the one 8-bit quantiser),
:mod:`augment.masks`, :mod:`augment.alternating` (HDR-V-Diff's alternating exposures), :mod:`augment.clip` and the
CLI :mod:`augment.run`."""
