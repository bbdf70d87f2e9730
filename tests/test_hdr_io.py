"""hdr.io: EXR/HDR read and write, header sniffing, the bad-texel policy."""
from __future__ import annotations

import cv2
import numpy as np
import OpenEXR
import pytest

from hdr.io import (HALF_MAX, HdrImageError, equirect_problem, read_header, read_image, sanitize, sniff_format,
                    write_exr, write_hdr)

RNG = np.random.default_rng(0)


def _img(h=16, w=32, scale=100.0):
    return (RNG.random((h, w, 3)) * scale).astype(np.float32)


@pytest.mark.parametrize("compression", ["zip", "piz", "none", "dwab"])
def test_exr_round_trip(tmp_path, compression):
    a = _img()
    info = write_exr(tmp_path / "a.exr", a, compression=compression)
    assert info == {"pixel_type": "float32", "compression": compression, "clamped": 0, "clamp_value": None}
    b = read_image(tmp_path / "a.exr")
    assert b.dtype == np.float32 and b.shape == a.shape and b.flags.c_contiguous
    if compression == "dwab":  # lossy
        np.testing.assert_allclose(b, a, rtol=0.05, atol=1.0)
    else:
        np.testing.assert_array_equal(b, a)
    h = read_header(tmp_path / "a.exr")
    assert (h.format, h.width, h.height, h.pixel_type, h.compression) == ("exr", 32, 16, "float32", compression)
    assert set(h.channels) == {"R", "G", "B"} and h.nbytes_float32_rgb() == 32 * 16 * 12


def test_half_clamps_at_65504_and_never_writes_inf(tmp_path):
    a = _img()
    a[0, 0] = 1e5
    info = write_exr(tmp_path / "h.exr", a, half=True)
    assert info["pixel_type"] == "half" and info["clamped"] == 3 and info["clamp_value"] == HALF_MAX
    b = read_image(tmp_path / "h.exr")
    assert np.isfinite(b).all() and b[0, 0].tolist() == [HALF_MAX] * 3
    np.testing.assert_allclose(b[1:], a[1:], rtol=1e-3)
    assert read_header(tmp_path / "h.exr").pixel_type == "half"


def test_write_refuses_non_finite(tmp_path):
    a = _img()
    a[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="sanitize"):
        write_exr(tmp_path / "x.exr", a)
    assert not (tmp_path / "x.exr").exists()


def test_header_from_a_file_object(tmp_path):
    write_exr(tmp_path / "a.exr", _img(8, 16), half=True, compression="piz")
    with open(tmp_path / "a.exr", "rb") as f:
        h = read_header(f, name="remote/a.exr")
    assert (h.path, h.width, h.height, h.pixel_type, h.compression) == ("remote/a.exr", 16, 8, "half", "piz")


def test_radiance_hdr(tmp_path):
    a = _img(8, 16, scale=1000.0)
    write_hdr(tmp_path / "a.hdr", a)
    h = read_header(tmp_path / "a.hdr")
    assert (h.format, h.width, h.height, h.pixel_type) == ("hdr", 16, 8, "rgbe")
    b = read_image(tmp_path / "a.hdr")
    assert b.dtype == np.float32 and b.shape == a.shape
    # RGBE: 8-bit mantissas sharing the exponent of the pixel's largest channel
    assert (np.abs(b - a) <= a.max(-1, keepdims=True) / 64).all()


def test_channel_layouts(tmp_path):
    y = RNG.random((4, 8)).astype(np.float32)
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Y": y}) as f:
        f.write(str(tmp_path / "y.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "y.exr"), np.repeat(y[..., None], 3, -1))
    rgba = RNG.random((4, 8, 4)).astype(np.float32)
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {"RGBA": rgba}) as f:
        f.write(str(tmp_path / "rgba.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.exr"), rgba[..., :3])
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {f"diffuse.{c}": y * i for i, c in enumerate("RGB")}) as f:
        f.write(str(tmp_path / "layer.exr"))
    np.testing.assert_array_equal(read_image(tmp_path / "layer.exr")[..., 2], y * 2)
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": y}) as f:
        f.write(str(tmp_path / "depth.exr"))
    with pytest.raises(HdrImageError, match=r"depth\.exr: no colour channels"):
        read_image(tmp_path / "depth.exr")


def test_ldr_image_with_an_hdr_name_is_named_and_explained(tmp_path):
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((4, 8, 3), np.uint8))
    (tmp_path / "p.png").rename(tmp_path / "fake.exr")
    for fn in (read_image, read_header):
        with pytest.raises(HdrImageError) as e:
            fn(tmp_path / "fake.exr")
        assert str(e.value).startswith(str(tmp_path / "fake.exr")) and "8-bit PNG" in str(e.value)


def test_corrupt_truncated_and_empty_files(tmp_path):
    (tmp_path / "noise.exr").write_bytes(b"\x76\x2f\x31\x01" + RNG.bytes(2000))
    write_exr(tmp_path / "good.exr", _img(64, 128))
    data = (tmp_path / "good.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.hdr").write_bytes(b"")
    for name, what in (("noise.exr", "corrupt"), ("cut.exr", "corrupt"), ("empty.hdr", "empty"),
                       ("missing.exr", "not found")):
        with pytest.raises(HdrImageError) as e:
            read_image(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name)) and what in str(e.value), str(e.value)
        assert e.value.path == str(tmp_path / name)


def test_sniff_format():
    assert sniff_format(b"\x76\x2f\x31\x01rest") == "exr"
    assert sniff_format(b"#?RADIANCE\n") == "hdr" and sniff_format(b"#?RGBE\n") == "hdr"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"II*\x00") == "tiff"
    assert sniff_format(b"hello") == "unknown"


@pytest.mark.parametrize("chunk_rows", [1, 3, 256])
def test_sanitize_policy(chunk_rows):
    a = _img(8, 4, scale=10.0)
    a[0, 0, 0] = 123.0  # the largest finite value
    a[1, 1, 0] = np.nan
    a[2, 2, 1] = np.inf
    a[3, 3, 2] = -np.inf
    a[4, 0, 0] = -0.5
    a[5, 1, :] = -1e-3
    counts = sanitize(a, chunk_rows=chunk_rows)
    assert {k: counts[k] for k in ("nan", "posinf", "neginf", "negative")} == {
        "nan": 1, "posinf": 1, "neginf": 1, "negative": 4}
    assert counts["posinf_replaced_with"] == 123.0
    assert np.isfinite(a).all() and a.min() >= 0
    assert a[1, 1, 0] == 0 and a[2, 2, 1] == 123.0 and a[3, 3, 2] == 0 and a[4, 0, 0] == 0


def test_sanitize_clean_image_is_untouched():
    a = _img()
    b = a.copy()
    c = sanitize(a)
    assert c["nan"] == c["posinf"] == c["neginf"] == c["negative"] == 0 and c["posinf_replaced_with"] is None
    np.testing.assert_array_equal(a, b)


def test_equirect_problem():
    assert equirect_problem(1024, 512) is None
    assert "2:1" in equirect_problem(1024, 1024) and "1024x1024" in equirect_problem(1024, 1024)


def test_real_bundled_hdri(bundled_hdris):
    img = read_image(bundled_hdris / "sunrise.exr")
    assert img.shape == (512, 1024, 3) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.max() > 1000  # a real sun
    h = read_header(bundled_hdris / "sunrise.exr")
    assert (h.width, h.height) == (1024, 512)
