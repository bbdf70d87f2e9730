"""The render stage with the real Blender engine, in this process (library API)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hdr.color import luminance
from hdr.io import read_header, read_image, write_exr
from hdr.storage import Store
from hdr.dataset import layout
from hdr.dataset.records import ClipMeta
from render.job import HdriTask, RenderSettings, render_hdri
from tests.conftest import sun_map

TINY = dict(width=64, height=32, frames=3, samples=4, threads=2)


def _run(hdris, rel, out, **kw):
    s = RenderSettings(**{**TINY, **kw})
    return render_hdri(HdriTask(str(hdris), rel, rel.rsplit(".", 1)[0], str(out), s))


def test_highlight_zoom_centre_is_in_the_brightest_region(bundled_hdris, tmp_path):
    for name in ("sunrise", "city"):
        res = _run(bundled_hdris, f"{name}.exr", tmp_path, programs=("highlight_zoom_in",))
        assert res.error is None and res.clips["highlight_zoom_in"]["status"] == "rendered", res
        frame = read_image(tmp_path / name / "highlight_zoom_in" / "frame_0000.exr")
        centre = luminance(frame[15:17, 31:33]).mean()
        hdri_lum = luminance(read_image(bundled_hdris / f"{name}.exr"))
        assert centre >= np.percentile(hdri_lum, 99), name
        # and the shadow zoom looks at something darker than the median of the map
        res = _run(bundled_hdris, f"{name}.exr", tmp_path, programs=("shadow_zoom_in",))
        shadow = read_image(tmp_path / name / "shadow_zoom_in" / "frame_0000.exr")
        assert luminance(shadow[15:17, 31:33]).mean() <= np.percentile(hdri_lum, 50), name


def test_clip_json_is_complete_and_frames_are_float32_exr(bundled_hdris, tmp_path):
    res = _run(bundled_hdris, "forest.exr", tmp_path, programs=("shadow_zoom_out", "rotation_120"))
    assert res.count("rendered") == 2
    for clip in ("shadow_zoom_out", "rotation_120"):
        d = tmp_path / "forest" / clip
        meta = json.loads((d / "clip.json").read_text())
        assert meta["schema"] == ClipMeta.schema_id() and meta["program"] == clip
        assert len(meta["hdri"]["sha256"]) == 64 and meta["hdri"]["width"] == 1024
        assert meta["engine"]["name"] == "blender" and meta["engine"]["version"].startswith("5.")
        assert meta["engine"]["samples"] == 4 and meta["output"]["resolution"] == [64, 32]
        assert meta["camera"]["sensor_width_mm"] == 36.0 and meta["camera"]["sensor_fit"] == "AUTO"
        assert meta["seed"] > 0 and meta["dataset_seed"] == 0
        for key in ("min", "max", "p1", "p50", "p99", "frac_above_1"):
            assert key in meta["radiance"]
        assert meta["timing"]["render_seconds"] > 0
        assert [f["file"] for f in meta["frames"]] == [f"frame_{i:04d}.exr" for i in range(3)]
        for f in meta["frames"]:
            assert 18 <= f["focal_mm"] <= 70 and len(f["rotation_euler"]) == 3
            h = read_header(d / f["file"])
            assert (h.width, h.height, h.pixel_type) == (64, 32, "float32")
            img = read_image(d / f["file"])
            assert img.dtype == np.float32 and np.isfinite(img).all() and img.min() >= 0
            assert f["bytes"] == (d / f["file"]).stat().st_size
    if True:  # shadow aim is recorded with the elevation band it was searched in
        aim = json.loads((tmp_path / "forest/shadow_zoom_out/clip.json").read_text())["program_params"]["aim"]
        lo, hi = aim["elevation_range_deg"]
        assert aim["kind"] == "darkest" and lo <= aim["elevation_deg"] <= hi


def test_resume_redoes_only_the_broken_clip(bundled_hdris, tmp_path):
    programs = ("highlight_zoom_out", "rotation_000", "rotation_240")
    res = _run(bundled_hdris, "night.exr", tmp_path, programs=programs)
    assert res.count("rendered") == 3
    d = tmp_path / "night"
    before = {p: (d / p / "clip.json").stat().st_mtime_ns for p in programs}
    # simulated crash inside rotation_000: its clip.json never got written and one frame is missing
    (d / "rotation_000" / "clip.json").unlink()
    (d / "rotation_000" / "frame_0002.exr").unlink()
    # and rotation_240 lost a frame after it was finished (size check catches it)
    (d / "rotation_240" / "frame_0001.exr").write_bytes(b"")
    assert layout.clip_state(Store(tmp_path), "night", "rotation_240")[0] == "partial"
    res = _run(bundled_hdris, "night.exr", tmp_path, programs=programs)
    assert {k: v["status"] for k, v in res.clips.items()} == {
        "highlight_zoom_out": "skipped", "rotation_000": "rendered", "rotation_240": "rendered"}
    assert (d / "highlight_zoom_out" / "clip.json").stat().st_mtime_ns == before["highlight_zoom_out"]
    for p in programs:
        assert layout.clip_state(Store(tmp_path), "night", p)[0] == "complete"
    # a third run has nothing to do and does not even load the map
    res = _run(bundled_hdris, "night.exr", tmp_path, programs=programs)
    assert all(c["status"] == "skipped" for c in res.clips.values())


def test_other_settings_are_never_silently_overwritten(bundled_hdris, tmp_path):
    _run(bundled_hdris, "studio.exr", tmp_path, programs=("rotation_000",))
    res = _run(bundled_hdris, "studio.exr", tmp_path, programs=("rotation_000",), samples=8)
    assert res.clips["rotation_000"]["status"] == "conflict"
    assert "samples 4 -> 8" in res.clips["rotation_000"]["detail"]
    meta = json.loads((tmp_path / "studio/rotation_000/clip.json").read_text())
    assert meta["engine"]["samples"] == 4
    res = _run(bundled_hdris, "studio.exr", tmp_path, programs=("rotation_000",), samples=8, overwrite=True)
    assert res.clips["rotation_000"]["status"] == "rendered"


def test_overflow_guard_float32_keeps_and_half_clamps(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_exr(src / "sun.exr", sun_map(64, 1e5))
    out32, out16 = tmp_path / "f32", tmp_path / "f16"
    for out, half in ((out32, False), (out16, True)):
        res = _run(src, "sun.exr", out, programs=("highlight_zoom_in",), half=half, samples=1)
        assert res.clips["highlight_zoom_in"]["status"] == "rendered", res
    f32 = read_image(out32 / "sun/highlight_zoom_in/frame_0002.exr")
    assert np.isfinite(f32).all() and f32.max() > 65504
    p16 = out16 / "sun/highlight_zoom_in/frame_0002.exr"
    assert read_header(p16).pixel_type == "half"
    f16 = read_image(p16)
    assert np.isfinite(f16).all() and f16.max() == 65504.0
    meta = json.loads((out16 / "sun/highlight_zoom_in/clip.json").read_text())
    assert meta["output"]["pixel_type"] == "half"
    assert meta["output"]["clamp"]["value"] == 65504.0 and meta["output"]["clamp"]["texels_clamped"] > 0
    assert meta["radiance"]["max_channel"] > 65504  # statistics are of the radiance before the clamp


def test_bad_texels_are_repaired_once_and_recorded(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = sun_map(64, 50.0)
    img[2, 3] = np.nan
    img[4, 5, 1] = -3.0
    img[6, 7, 2] = np.inf
    write_exr(src / "bad.exr", np.nan_to_num(img, nan=0, posinf=0))  # write_exr refuses non-finite values...
    import OpenEXR  # ...so poke the bad values in with the raw bindings

    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": img}) as f:
        f.write(str(src / "bad.exr"))
    res = _run(src, "bad.exr", tmp_path / "out", programs=("rotation_000",), samples=1)
    assert res.clips["rotation_000"]["status"] == "rendered", res
    meta = json.loads((tmp_path / "out/bad/rotation_000/clip.json").read_text())
    san = meta["hdri"]["sanitize"]
    assert (san["nan"], san["negative"], san["posinf"]) == (3, 1, 1)
    for f in meta["frames"]:
        assert np.isfinite(read_image(tmp_path / "out/bad/rotation_000" / f["file"])).all()


@pytest.mark.parametrize("kind", ["corrupt", "png", "square"])
def test_bad_inputs_fail_with_a_message_naming_the_file(tmp_path, kind):
    src = tmp_path / "in"
    src.mkdir()
    if kind == "corrupt":
        (src / "broken.exr").write_bytes(b"\x76\x2f\x31\x01" + bytes(range(256)) * 4)
        name = "broken.exr"
    elif kind == "png":
        import cv2

        cv2.imwrite(str(src / "photo.png"), np.zeros((8, 16, 3), np.uint8))
        (src / "photo.png").rename(src / "fake.hdr")
        name = "fake.hdr"
    else:
        write_exr(src / "square.exr", np.ones((32, 32, 3), np.float32))
        name = "square.exr"
    res = _run(src, name, tmp_path / "out", programs=("rotation_000",))
    assert res.error and res.error.startswith(name), res.error
    assert res.clips["rotation_000"]["status"] == "failed"
    assert not (tmp_path / "out" / name.rsplit(".", 1)[0] / "rotation_000" / "clip.json").exists()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_bpy_memory_does_not_grow_across_hdris(bundled_hdris, tmp_path):
    """Each HDRI job resets Blender's state, so a worker's memory stays flat over many maps (plus the driver
    recycles workers after --tasks-per-worker jobs)."""
    from render.engines import HdriSource, get_engine
    from render.programs import plan_clip

    engine = get_engine("blender", samples=1, threads=2)
    names = sorted(p.name for p in bundled_hdris.glob("*.exr"))
    rss = []
    for rep in range(2):
        for name in names:
            engine.load(HdriSource(path=bundled_hdris / name, pixels=None, width=1024, height=512))
            frames = list(engine.render(plan_clip("rotation_000", 2, 0, name), 32, 16, tmp_path))
            assert len(frames) == 2
            engine.close()
        rss.append(_rss_mb())
    print("RSS MB after each pass over the 8 maps:", rss)
    assert rss[1] - rss[0] < 40, rss  # a second pass over all 8 maps adds (almost) nothing
