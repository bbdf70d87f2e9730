"""Render stage: equirectangular HDRIs -> short HDR camera sequences (DiffHDR §3.1.1).

Library: :mod:`render.programs` (camera programs), :mod:`render.analysis` (aim directions, statistics),
:mod:`render.camera` (the camera model), :mod:`render.engines` (renderers behind one interface),
:mod:`render.job` (one HDRI -> its clips). CLI: ``python -m render.run``.
"""
