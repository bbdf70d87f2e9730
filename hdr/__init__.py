"""Shared HDR math and file IO for every stage (one home, no second copy of a formula).

- :mod:`hdr.io`       OpenEXR / Radiance read+write, header sniffing, the bad-texel policy; 8-bit PNG/JPEG.
- :mod:`hdr.color`    sRGB transfer, Rec.709 luminance, Log-Gamma (+ inverse), mu-law, Reinhard, PU21.
- :mod:`hdr.storage`  local paths, shared filesystems and object stores behind one fsspec layer.
- :mod:`hdr.seeding`  per-clip seeds derived from the dataset seed.
- :mod:`hdr.cluster`  the Ray fan-out of every stage (backpressure, retries, recorded failures).
"""

__version__ = "0.1.0"
