"""Shared HDR math and file IO for every stage (one home, no second copy of a formula).

- :mod:`hdr.io`       OpenEXR / Radiance read+write, header sniffing, the bad-texel policy.
- :mod:`hdr.color`    sRGB transfer, Rec.709 luminance (more mappings join in later stages).
- :mod:`hdr.storage`  local paths, shared filesystems and object stores behind one fsspec layer.
- :mod:`hdr.seeding`  per-clip seeds derived from the dataset seed.
"""

__version__ = "0.1.0"
