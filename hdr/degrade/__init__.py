"""The LDR camera model: how an HDR clip becomes 8-bit LDR video, as functions on numpy arrays or torch tensors.

- :mod:`hdr.degrade.presets`      presets (``paper``, ``diffhdr-code``), per-clip parameter draws, AR(1) noise, the one
  exact 8-bit quantiser (DiffHDR §3.1.2).
- :mod:`hdr.degrade.masks`        over/under-exposure masks (DiffHDR eq. 2, both the paper's and the public code's).
- :mod:`hdr.degrade.alternating`  HDR-V-Diff's alternating-exposure sequences (EV cycles, gamma 2.2).

It lives in ``hdr`` because four stages use it: augment writes its frames to disk, the training loader makes them on
the fly, caption draws its masks and the DiffHDR task its mask EMA. :func:`hdr.dataset.ldr.make_ldr` is the one
function that applies it to a clip.
"""
