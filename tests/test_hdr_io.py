"""hdr.io: EXR/HDR read and write, header parsing from paths and streams, content sniffing, the bad-texel policy."""
from __future__ import annotations

import io

import cv2
import numpy as np
import OpenEXR
import pytest

from hdr.io import (EXR_COMPRESSIONS, HALF_MAX, HdrImageError, equirect_problem, read_header, read_image, sanitize,
                    sniff_format, write_exr, write_hdr)

RNG = np.random.default_rng(0)
LOSSY = {"pxr24", "dwaa", "dwab", "lj2k"}  # for float32 data


def _img(h: int = 16, w: int = 32, scale: float = 100.0) -> np.ndarray:
    return (RNG.random((h, w, 3)) * scale).astype(np.float32)


def _write_channels(path, channels: dict, **header) -> None:
    """An EXR with exactly these channels, written by the bindings directly (layouts write_exr never makes)."""
    with OpenEXR.File({"type": OpenEXR.scanlineimage, **header}, channels) as f:
        f.write(str(path))


@pytest.mark.parametrize("compression", EXR_COMPRESSIONS)
def test_exr_float32_round_trip_and_header(tmp_path, compression):
    a = _img()
    info = write_exr(tmp_path / "a.exr", a, compression=compression)
    assert info == {"pixel_type": "float32", "compression": compression, "clamped": 0, "clamp_value": None}
    b = read_image(tmp_path / "a.exr")
    assert b.dtype == np.float32 and b.shape == a.shape and b.flags.c_contiguous
    if compression in LOSSY:
        np.testing.assert_allclose(b, a, rtol=0.05, atol=2.5)
    else:
        np.testing.assert_array_equal(b, a)
    h = read_header(tmp_path / "a.exr")
    assert (h.path, h.format, h.width, h.height, h.pixel_type, h.compression) == (
        str(tmp_path / "a.exr"), "exr", 32, 16, "float32", compression)
    assert h.channels == ("B", "G", "R") and h.nbytes_float32_rgb() == 32 * 16 * 3 * 4


def test_half_round_trip_clamps_and_never_writes_inf(tmp_path):
    a = _img()
    a[0, 0] = 1e5
    a[0, 1, 0] = -1e5
    info = write_exr(tmp_path / "h.exr", a, half=True, compression="piz")
    assert info == {"pixel_type": "half", "compression": "piz", "clamped": 4, "clamp_value": HALF_MAX}
    b = read_image(tmp_path / "h.exr")
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert b[0, 0].tolist() == [HALF_MAX] * 3 and b[0, 1, 0] == -HALF_MAX
    np.testing.assert_allclose(b[1:], a[1:], rtol=2**-11)  # half: 11-bit significand
    assert read_header(tmp_path / "h.exr").pixel_type == "half"


def test_writers_refuse_bad_input(tmp_path):
    for bad in (np.nan, np.inf, -np.inf):
        a = _img()
        a[1, 1, 1] = bad
        with pytest.raises(ValueError, match="sanitize"):
            write_exr(tmp_path / "x.exr", a)
        with pytest.raises(ValueError, match="sanitize"):
            write_hdr(tmp_path / "x.hdr", a)
    with pytest.raises(ValueError, match="negative"):
        write_hdr(tmp_path / "x.hdr", -_img())
    with pytest.raises(ValueError, match="compression"):
        write_exr(tmp_path / "x.exr", _img(), compression="zip9")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_exr(tmp_path / "x.exr", np.zeros((4, 8), np.float32))
    assert not list(tmp_path.iterdir())


def test_header_from_file_objects(tmp_path):
    write_exr(tmp_path / "a.exr", _img(8, 16), half=True, compression="dwab")
    with open(tmp_path / "a.exr", "rb") as f:
        h = read_header(f, name="remote/a.exr")
        assert f.tell() <= 256 * 1024
    assert (h.path, h.width, h.height, h.pixel_type, h.compression) == ("remote/a.exr", 16, 8, "half", "dwab")
    with open(tmp_path / "a.exr", "rb") as f:
        assert read_header(f) == read_header(tmp_path / "a.exr")  # named after the file object
    assert read_header(io.BytesIO((tmp_path / "a.exr").read_bytes()), name="a.exr").width == 16


def test_radiance_hdr(tmp_path):
    a = _img(8, 16, scale=1000.0)
    write_hdr(tmp_path / "a.hdr", a)
    h = read_header(tmp_path / "a.hdr")
    assert (h.format, h.width, h.height, h.channels, h.pixel_type, h.compression) == (
        "hdr", 16, 8, ("R", "G", "B"), "rgbe", None)
    b = read_image(tmp_path / "a.hdr")
    assert b.dtype == np.float32 and b.shape == a.shape and b.flags.c_contiguous
    # RGBE: 8-bit mantissas sharing the exponent of the texel's largest channel (RGB order kept)
    assert (np.abs(b - a) <= a.max(-1, keepdims=True) / 128).all()
    with open(tmp_path / "a.hdr", "rb") as f:
        assert read_header(f, name="a.hdr").width == 16


def test_radiance_orientation_and_truncation(tmp_path):
    write_hdr(tmp_path / "a.hdr", _img(8, 16))
    data = (tmp_path / "a.hdr").read_bytes()
    (tmp_path / "flip.hdr").write_bytes(data.replace(b"-Y 8 +X 16", b"+Y 8 +X 16", 1))
    (tmp_path / "head.hdr").write_bytes(data[:20])
    (tmp_path / "cut.hdr").write_bytes(data[: len(data) // 2])
    for name, what in (("flip.hdr", "orientation"), ("head.hdr", "truncated"), ("cut.hdr", "truncated")):
        with pytest.raises(HdrImageError, match=what) as e:
            read_image(tmp_path / name)
        assert e.value.path == str(tmp_path / name)


def test_channel_layouts(tmp_path):
    y = RNG.random((4, 8)).astype(np.float32)
    _write_channels(tmp_path / "y.exr", {"Y": y, "A": y})
    np.testing.assert_array_equal(read_image(tmp_path / "y.exr"), np.repeat(y[..., None], 3, -1))

    rgba = RNG.random((4, 8, 4)).astype(np.float32)
    _write_channels(tmp_path / "rgba.exr", {"RGBA": rgba})
    assert read_header(tmp_path / "rgba.exr").channels == ("A", "B", "G", "R")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.exr"), rgba[..., :3])

    # colour in float32, alpha in half: the bindings cannot group these, planes are assembled instead
    _write_channels(tmp_path / "mixed.exr", {"R": y, "G": y * 2, "B": y * 3, "A": y.astype(np.float16)})
    np.testing.assert_array_equal(read_image(tmp_path / "mixed.exr"), np.stack([y, y * 2, y * 3], -1))

    # only layers: the first one with R, G, B, in R, G, B order
    layers = {f"{layer}.{c}": y * (i + k) for k, layer in ((1, "beauty"), (10, "diffuse")) for i, c in enumerate("RGB")}
    _write_channels(tmp_path / "layers.exr", {**layers, "depth.Z": y})
    np.testing.assert_array_equal(read_image(tmp_path / "layers.exr"), np.stack([y, y * 2, y * 3], -1))

    u = RNG.integers(0, 1000, (4, 8, 3)).astype(np.uint32)
    _write_channels(tmp_path / "u.exr", {"RGB": u})
    assert read_header(tmp_path / "u.exr").pixel_type == "uint32"
    np.testing.assert_array_equal(read_image(tmp_path / "u.exr"), u.astype(np.float32))

    _write_channels(tmp_path / "depth.exr", {"Z": y})
    for fn in (read_header, read_image):
        with pytest.raises(HdrImageError, match=r"depth\.exr: no colour channels"):
            fn(tmp_path / "depth.exr")


def test_tiled_and_multi_part_files(tmp_path):
    a = _img(64, 128)
    tiles = OpenEXR.TileDescription()
    tiles.xSize = tiles.ySize = 32
    _write_channels(tmp_path / "tiled.exr", {"RGB": a}, type=OpenEXR.tiledimage, tiles=tiles,
                    compression=OpenEXR.PIZ_COMPRESSION)
    assert read_header(tmp_path / "tiled.exr").compression == "piz"
    np.testing.assert_array_equal(read_image(tmp_path / "tiled.exr"), a)

    parts = [OpenEXR.Part({"type": OpenEXR.scanlineimage}, {"RGB": a}, name="beauty"),
             OpenEXR.Part({"type": OpenEXR.scanlineimage}, {"Z": a[..., 0].copy()}, name="depth")]
    with OpenEXR.File(parts) as f:
        f.write(str(tmp_path / "parts.exr"))
    assert read_header(tmp_path / "parts.exr").channels == ("B", "G", "R")
    np.testing.assert_array_equal(read_image(tmp_path / "parts.exr"), a)


def test_ldr_images_with_hdr_names_are_named_and_explained(tmp_path):
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((4, 8, 3), np.uint8))
    (tmp_path / "p.png").rename(tmp_path / "fake.exr")
    cv2.imwrite(str(tmp_path / "j.jpg"), np.zeros((4, 8, 3), np.uint8))
    (tmp_path / "j.jpg").rename(tmp_path / "photo.hdr")
    for fn in (read_image, read_header):
        with pytest.raises(HdrImageError) as e:
            fn(tmp_path / "fake.exr")
        assert str(e.value) == (f"{tmp_path / 'fake.exr'}: not an OpenEXR file (it is an 8-bit PNG image); "
                                "expected OpenEXR (.exr) or Radiance (.hdr)")
        with pytest.raises(HdrImageError, match=r"photo\.hdr: not a Radiance \.hdr file \(it is a JPEG image\)"):
            fn(tmp_path / "photo.hdr")


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    (tmp_path / "noise.exr").write_bytes(b"\x76\x2f\x31\x01" + RNG.bytes(2000))
    write_exr(tmp_path / "good.exr", _img(64, 128))
    data = (tmp_path / "good.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.exr").write_bytes(data[:100])
    scrambled = bytearray(data)
    scrambled[len(data) // 2 :] = RNG.bytes(len(data) - len(data) // 2)
    (tmp_path / "scrambled.exr").write_bytes(bytes(scrambled))
    (tmp_path / "empty.exr").write_bytes(b"")
    (tmp_path / "noise.bin").write_bytes(RNG.bytes(100))
    for name, what in (("noise.exr", "corrupt"), ("cut.exr", "corrupt or truncated"), ("head.exr", "truncated"),
                       ("scrambled.exr", "corrupt or truncated"), ("empty.exr", "empty file"),
                       ("noise.bin", "unrecognised content"), ("missing.exr", "not found")):
        with pytest.raises(HdrImageError) as e:
            read_image(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: ") and what in str(e.value), str(e.value)
        assert e.value.path == str(tmp_path / name)
    assert read_header(tmp_path / "cut.exr").width == 128  # the header alone is intact


def test_sniff_format():
    assert sniff_format(b"\x76\x2f\x31\x01\x02\x00\x00\x00") == "exr"
    assert sniff_format(b"#?RADIANCE\n") == "hdr" and sniff_format(b"#?RGBE\n") == "hdr"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"II*\x00") == "tiff" and sniff_format(b"MM\x00*") == "tiff"
    assert sniff_format(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"hello") == "unknown" and sniff_format(b"") == "unknown"


def _dirty() -> np.ndarray:
    a = (np.random.default_rng(1).random((8, 4, 3)) * 10).astype(np.float32)
    a[0, 0, 0] = 123.0  # the largest finite value
    a[1, 1, 0] = np.nan
    a[2, 2, 1] = np.inf
    a[7, 3, 1] = np.inf
    a[3, 3, 2] = -np.inf
    a[4, 0, 0] = -0.5
    a[5, 1, :] = -1e-3
    return a


@pytest.mark.parametrize("chunk_rows", [1, 3, 256])
def test_sanitize_policy(chunk_rows):
    a = _dirty()
    counts = sanitize(a, chunk_rows=chunk_rows)
    assert counts == {"nan": 1, "posinf": 2, "neginf": 1, "negative": 4, "posinf_replaced_with": 123.0,
                      "policy": "nan->0, -inf->0, negative->0, +inf->max finite"}
    assert a.dtype == np.float32 and np.isfinite(a).all() and a.min() >= 0
    assert a[1, 1, 0] == 0 and a[2, 2, 1] == a[7, 3, 1] == 123.0 and a[3, 3, 2] == 0 and a[4, 0, 0] == 0
    expected = _dirty()
    sanitize(expected, chunk_rows=8)
    np.testing.assert_array_equal(a, expected)  # chunking does not change the result


def test_sanitize_edge_cases():
    a = _img()
    clean = a.copy()
    c = sanitize(a)
    assert (c["nan"], c["posinf"], c["neginf"], c["negative"], c["posinf_replaced_with"]) == (0, 0, 0, 0, 0.0)
    np.testing.assert_array_equal(a, clean)
    only_bad = np.array([[[np.inf, np.nan, -np.inf]]], np.float32)
    assert sanitize(only_bad)["posinf_replaced_with"] == 0.0 and not only_bad.any()
    with pytest.raises(TypeError):
        sanitize(np.zeros((2, 2, 3)))


def test_sanitize_negative_policies():
    from hdr.io import sanitize_policy

    signed = np.full((8, 16, 3), 1.0, np.float32)
    signed[2, 3] = -0.25
    signed[5, 0, 1] = np.nan
    kept = signed.copy()
    rec = sanitize(kept, negative="keep", equirect=True)
    assert rec["negative"] == 3 and rec["nan"] == 1 and rec["policy"] == sanitize_policy("keep")
    assert "negative kept" in rec["policy"] and "negative_repair" not in rec
    assert (kept[2, 3] == -0.25).all() and kept[5, 0, 1] == 0  # NaN policy unchanged, negatives left signed
    e = rec["negative_energy"]
    w = np.sin(np.pi * (np.arange(8) + 0.5) / 8)
    assert e["texels"] == 3 and e["negative"] == pytest.approx([0.25 * w[2] / (16 * w.sum())] * 3)
    assert e["fraction_of_positive"][0] == pytest.approx(0.25 * w[2] / (16 * w.sum() - w[2]))
    moved = signed.copy()
    rec = sanitize(moved, negative="redistribute", equirect=True)
    assert moved.min() >= 0 and rec["negative_repair"]["residual_texels"] == 0
    assert rec["negative_repair"]["moved_energy"] == pytest.approx(e["negative"])
    clamped = signed.copy()
    rec = sanitize(clamped)  # the default: clamp, as for rendered frames
    assert rec["policy"] == "nan->0, -inf->0, negative->0, +inf->max finite" and clamped.min() == 0
    assert "negative_energy" not in rec  # only for equirect maps
    with pytest.raises(ValueError, match="equirect"):
        sanitize(signed.copy(), negative="redistribute")
    with pytest.raises(ValueError, match="policy"):
        sanitize(signed.copy(), negative="drop")


def test_equirect_problem():
    assert equirect_problem(1024, 512) is None
    assert equirect_problem(1024, 1024) == "not a 2:1 equirectangular map (1024x1024)"
    assert equirect_problem(1025, 512) is not None and equirect_problem(0, 0) is not None


def test_bundled_hdris_agree_with_the_openexr_library(bundled_hdris):
    """Blender's studio-light worlds (real PolyHaven maps written by other software): our header parser agrees
    with the bindings' own, and the pixels decode."""
    maps = sorted(bundled_hdris.glob("*.exr"))
    assert maps
    for path in maps:
        with OpenEXR.File(str(path), header_only=True) as f:
            ref = f.header()
            (x0, y0), (x1, y1) = ref["dataWindow"]
            channels = {c.name for c in ref["channels"]}
            compression = ref["compression"].name
        h = read_header(path)
        assert (h.width, h.height) == (x1 - x0 + 1, y1 - y0 + 1) == (1024, 512) and equirect_problem(1024, 512) is None
        assert set(h.channels) == channels and h.pixel_type == "float32"
        assert compression == ("NO_COMPRESSION" if h.compression == "none" else f"{h.compression.upper()}_COMPRESSION")
        with open(path, "rb") as f:
            assert read_header(f, name=str(path)) == h
        img = read_image(path)
        assert img.shape == (512, 1024, 3) and img.dtype == np.float32 and img.flags.c_contiguous
        assert np.isfinite(img).all() and img.max() > 1.0


def test_ldr_png_round_trip_and_errors(tmp_path):
    from hdr.io import LdrImageError, decode_ldr, read_ldr, write_png

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rgb[..., 1].copy()
    write_png(tmp_path / "rgb.png", rgb)
    write_png(tmp_path / "gray.png", gray)
    np.testing.assert_array_equal(read_ldr(tmp_path / "rgb.png"), rgb)  # RGB order kept (OpenCV is BGR inside)
    np.testing.assert_array_equal(read_ldr(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(read_ldr(tmp_path / "gray.png", color=True), np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(decode_ldr((tmp_path / "rgb.png").read_bytes(), "x"), rgb)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(LdrImageError, match=r"bad\.png: not a readable PNG/JPEG image"):
        read_ldr(tmp_path / "bad.png")
    with pytest.raises(LdrImageError, match=r"missing\.png: "):
        read_ldr(tmp_path / "missing.png")


def test_exr_thread_pool_only_for_compressed_files(tmp_path):
    import OpenEXR

    img = np.random.default_rng(0).random((16, 32, 3)).astype(np.float32)
    before = OpenEXR.global_thread_count()
    try:
        write_exr(tmp_path / "zip.exr", img, compression="zip", threads=3)
        assert OpenEXR.global_thread_count() == 3  # compression runs on the pool
        write_exr(tmp_path / "raw.exr", img, compression="none", threads=3)
        assert OpenEXR.global_thread_count() == 0  # raw scanlines: the pool would only add hand-offs
        np.testing.assert_array_equal(read_image(tmp_path / "raw.exr"), read_image(tmp_path / "zip.exr"))
    finally:
        OpenEXR.set_global_thread_count(before)
