"""HDR image file IO: the one place that reads and writes OpenEXR and Radiance .hdr files, and the one place that
decides what happens to texels that are not valid radiance (:func:`sanitize`).

Arrays are float32 (H, W, 3), RGB, row 0 at the TOP of the image (as OpenEXR and OpenCV store them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HALF_MAX = 65504.0
SANITIZE_POLICY = "nan->0, -inf->0, negative->0, +inf->max finite"

_FORMAT_NAMES = {
    "png": "an 8-bit PNG image",
    "jpeg": "a JPEG image",
    "tiff": "a TIFF image",
    "webp": "a WebP image",
    "unknown": "not a recognised image format",
}


class HdrImageError(ValueError):
    """A bad input image; ``str(e)`` starts with the file's name, then the problem in plain words."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


def sniff_format(head: bytes) -> str:
    """The format of a file from its first bytes: exr, hdr, png, jpeg, tiff, webp or unknown."""
    if head[:4] == b"\x76\x2f\x31\x01":
        return "exr"
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "hdr"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "unknown"


def _not_hdr(path, fmt: str) -> HdrImageError:
    return HdrImageError(path, f"not an HDR map ({_FORMAT_NAMES[fmt]}); expected OpenEXR (.exr) or Radiance (.hdr)")


@dataclass(frozen=True)
class ImageHeader:
    path: str
    format: str  # "exr" | "hdr"
    width: int
    height: int
    channels: tuple[str, ...]
    pixel_type: str  # "float32" | "half" | "uint32" (EXR colour channels) | "rgbe" (.hdr)
    compression: str | None

    def nbytes_float32_rgb(self) -> int:
        return self.width * self.height * 3 * 4


_COMPRESSIONS = ("none", "rle", "zips", "zip", "piz", "pxr24", "b44", "b44a", "dwaa", "dwab", "zstd")


def _compression_enum_name(name: str) -> str:
    return "NO_COMPRESSION" if name == "none" else f"{name.upper()}_COMPRESSION"


_COMPRESSION_NAMES = {_compression_enum_name(c): c for c in _COMPRESSIONS}


def _exr_channel_types(head: bytes) -> dict[str, str]:
    """Pixel type of each channel from the raw ``channels`` (chlist) attribute of the first EXR header.

    The OpenEXR bindings give channel names without their pixel type when reading a header only."""
    key = b"channels\0chlist\0"
    i = head.find(key)
    if i < 0:
        return {}
    i += len(key)
    size = int.from_bytes(head[i : i + 4], "little")
    data, out, j = head[i + 4 : i + 4 + size], {}, 0
    while j < len(data) and data[j] != 0:
        end = data.index(b"\0", j)
        ptype = int.from_bytes(data[end + 1 : end + 5], "little")
        out[data[j:end].decode("utf-8", "replace")] = {0: "uint32", 1: "half", 2: "float32"}.get(ptype, "?")
        j = end + 1 + 16
    return out


def _exr_header(src, name: str) -> ImageHeader:
    import OpenEXR

    start = src.tell()
    raw = src.read(1 << 16)
    src.seek(start)
    try:
        with OpenEXR.File(src, header_only=True) as f:
            hdr = f.header()  # valid only while the file is open
            names = tuple(c.name for c in hdr["channels"])
            (x0, y0), (x1, y1) = (tuple(int(v) for v in corner) for corner in hdr["dataWindow"])
            compression = _COMPRESSION_NAMES.get(str(getattr(hdr.get("compression"), "name", "")), "?")
    except Exception as e:  # noqa: BLE001  (the bindings raise RuntimeError/ValueError for damaged files)
        why = str(e).replace(" '<python_buffer>'", "")
        raise HdrImageError(name, f"corrupt or truncated OpenEXR file ({why})") from None
    types = _exr_channel_types(raw)
    colour = [n for n in names if n.split(".")[-1] in ("R", "G", "B", "Y")] or list(names)
    return ImageHeader(path=name, format="exr", width=x1 - x0 + 1, height=y1 - y0 + 1, channels=names,
                       pixel_type=types.get(colour[0], "?") if colour else "?", compression=compression)


def _hdr_header(f, name: str) -> ImageHeader:
    for _ in range(256):  # header lines, then a blank line, then the resolution line
        line = f.readline(4096)
        if not line:
            raise HdrImageError(name, "truncated Radiance header")
        if line.strip() == b"":
            break
    else:
        raise HdrImageError(name, "Radiance header has no end")
    res = f.readline(256).split()
    if len(res) != 4:
        raise HdrImageError(name, "Radiance file has no resolution line")
    if res[0] != b"-Y" or res[2] != b"+X":
        raise HdrImageError(name, f"unsupported Radiance orientation {b' '.join(res).decode(errors='replace')!r}"
                            " (only '-Y H +X W')")
    return ImageHeader(path=name, format="hdr", width=int(res[3]), height=int(res[1]), channels=("R", "G", "B"),
                       pixel_type="rgbe", compression=None)


def read_header(source, name: str | None = None) -> ImageHeader:
    """Size, channels, pixel type and compression of an .exr/.hdr file, without decoding pixels.

    ``source`` is a local path or a readable binary file object (e.g. from ``fsspec.open``), so the size of a map
    on object storage is known without downloading it.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        try:
            with open(source, "rb") as f:
                return read_header(f, name)
        except FileNotFoundError:
            raise HdrImageError(name, "file not found") from None
    name = name or str(getattr(source, "name", "<stream>"))
    start = source.tell()
    head = source.read(16)
    if not head:
        raise HdrImageError(name, "empty file")
    fmt = sniff_format(head)
    source.seek(start)
    if fmt == "exr":
        return _exr_header(source, name)
    if fmt == "hdr":
        return _hdr_header(source, name)
    raise _not_hdr(name, fmt)


def _pick_rgb(channels: dict, name: str) -> np.ndarray:
    """Colour pixels from OpenEXR's grouped channels: RGB/RGBA, separate R,G,B, gray Y, or the first RGB layer."""
    for key in ("RGB", "RGBA"):
        if key in channels:
            return channels[key].pixels[..., :3]
    if all(k in channels for k in "RGB"):
        return np.stack([channels[k].pixels for k in "RGB"], axis=-1)
    if "Y" in channels:
        y = channels["Y"].pixels
        return np.repeat(y[..., None], 3, axis=-1)
    for key in sorted(channels):  # layers such as "diffuse" grouped into (H, W, 3|4)
        px = channels[key].pixels
        if px.ndim == 3 and px.shape[-1] in (3, 4):
            return px[..., :3]
    raise HdrImageError(name, f"no colour channels (R, G, B or Y) among {sorted(channels)}")


def read_image(path) -> np.ndarray:
    """Decode an OpenEXR or Radiance .hdr file (content sniffed, never trusted from the extension) to float32
    (H, W, 3) RGB. Bad files raise :class:`HdrImageError` naming the file."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise HdrImageError(name, "file not found") from None
    if not head:
        raise HdrImageError(name, "empty file")
    fmt = sniff_format(head)
    if fmt == "exr":
        import OpenEXR

        try:
            with OpenEXR.File(name) as f:
                rgb = _pick_rgb(f.channels(), name)
        except HdrImageError:
            raise
        except Exception as e:  # noqa: BLE001
            raise HdrImageError(name, f"corrupt or truncated OpenEXR file ({e})") from None
        return np.ascontiguousarray(rgb, dtype=np.float32)
    if fmt == "hdr":
        import cv2

        _hdr_header(open(path, "rb"), name)  # orientation and size are checked before decoding
        img = cv2.imread(name, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if img is None:
            raise HdrImageError(name, "corrupt or truncated Radiance .hdr file")
        img = img.astype(np.float32, copy=False)
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size copy
        return img
    raise _not_hdr(name, fmt)


def sanitize(img: np.ndarray, chunk_rows: int = 256) -> dict:
    """Make every texel valid radiance, in place, and count what changed. THE policy of the toolkit:
    NaN -> 0, -inf -> 0, negative -> 0 (radiance is never negative; lossy DWAA/DWAB rings below 0 around bright
    edges), +inf -> the largest finite value of the image. Works in row chunks so 16k maps need no big masks."""
    counts = {"nan": 0, "posinf": 0, "neginf": 0, "negative": 0}
    finite_max = 0.0
    for r in range(0, img.shape[0], chunk_rows):
        c = img[r : r + chunk_rows]
        fin = np.isfinite(c)
        if fin.any():
            finite_max = max(finite_max, float(c[fin].max()))
        if not fin.all():
            counts["nan"] += int(np.isnan(c).sum())
            counts["posinf"] += int(np.isposinf(c).sum())
            counts["neginf"] += int(np.isneginf(c).sum())
    replace = max(finite_max, 0.0)
    for r in range(0, img.shape[0], chunk_rows):
        c = img[r : r + chunk_rows]
        if counts["nan"] or counts["posinf"] or counts["neginf"]:
            np.nan_to_num(c, copy=False, nan=0.0, posinf=replace, neginf=0.0)
        neg = c < 0
        n = int(neg.sum())
        if n:
            counts["negative"] += n
            c[neg] = 0.0
    return {**counts, "posinf_replaced_with": replace if counts["posinf"] else None, "policy": SANITIZE_POLICY}


def equirect_problem(width: int, height: int) -> str | None:
    """None for a 2:1 equirectangular map, else what is wrong."""
    if width == 2 * height and height > 0:
        return None
    return f"not a 2:1 equirectangular map ({width}x{height})"




def write_exr(path, img: np.ndarray, *, half: bool = False, compression: str = "zip") -> dict:
    """Write RGB radiance as a scanline OpenEXR (channels R, G, B) to a local path. float32 by default; ``half``
    clamps to 65504 first (counted) so no inf is ever written. Non-finite input raises ValueError."""
    import OpenEXR

    comp = compression.lower()
    if comp not in _COMPRESSIONS:
        raise ValueError(f"unknown EXR compression {compression!r}; choose from {', '.join(_COMPRESSIONS)}")
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("refusing to write NaN/inf radiance: sanitize() it first")
    clamped = 0
    if half:
        over = img > HALF_MAX
        clamped = int(over.sum())
        data = np.minimum(img, HALF_MAX).astype(np.float16)
    else:
        data = np.ascontiguousarray(img, dtype=np.float32)
    header = {"compression": getattr(OpenEXR, _compression_enum_name(comp)), "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"RGB": data}) as f:
        f.write(str(path))
    return {"pixel_type": "half" if half else "float32", "compression": comp, "clamped": clamped,
            "clamp_value": HALF_MAX if half else None}


def write_hdr(path, img: np.ndarray) -> None:
    """Write RGB radiance as a Radiance .hdr (RGBE) file (fixtures, tools)."""
    import cv2

    bgr = np.ascontiguousarray(np.asarray(img, dtype=np.float32)[..., ::-1])
    if not cv2.imwrite(str(Path(path)), bgr):
        raise OSError(f"{path}: could not write Radiance file")
