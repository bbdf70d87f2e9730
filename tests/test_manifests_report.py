"""``python -m manifests report``: the HTML page renders in headless Chromium without console errors, and its
pictures are what they claim to be."""
from __future__ import annotations

import json

import cv2
import numpy as np

from hdr.io import read_image
from manifests import open_manifest
from manifests.browser import find_chromium, render_page
from manifests.build import build
from hdr.color import reinhard_display
from manifests.report import HIST_RANGE, _clip_assets
from tests.test_manifests import cli, write_caption


def test_chromium_console_error_detection_can_fail(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title>'
                    '<link rel="icon" href="data:,"></head><body><img src="missing.png">'
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    r = render_page(page)
    text = "\n".join(r["errors"])
    assert len(r["errors"]) == 3, r["errors"]
    assert "console.error: boom" in text and "undefinedFunction is not defined" in text
    assert "missing.png" in text  # the failed image load


def test_report_renders_in_headless_chromium_without_console_errors(tiny_dataset, tmp_path):
    assert find_chromium() == "/usr/bin/chromium"
    for p in tiny_dataset.glob("*/*/caption.json"):
        p.unlink()
    write_caption(tiny_dataset, "sunrise", "rotation_000", "the <b>sun</b> & sky", "a dark </div> field")
    assert build(str(tiny_dataset), test="2", progress=False).version == "v0001"
    r = cli("report", "v1", "--root", tiny_dataset, "--quiet")
    assert r.returncode == 0, r.stderr
    index = tiny_dataset / "_reports/v0001/index.html"
    assert r.stdout.strip() == f"wrote {index}"
    shot = tmp_path / "report.png"
    res = render_page(index, screenshot=shot, probes={
        "images": "document.images.length",
        "loaded": "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
        "sections": "document.querySelectorAll('section.hdri').length",
        "caption": "Array.from(document.querySelectorAll('.caption')).map(e => e.textContent).join('|')",
        "filtered": "(() => { const f = document.getElementById('filter'); f.value = 'sunrise';"
                    " f.dispatchEvent(new Event('input')); return document.getElementById('shown').textContent; })()",
    })
    assert res["errors"] == [], res["errors"]
    assert res["title"] == "Dataset report v0001"
    p = res["probes"]
    assert p["images"] == 6 * 5 and p["loaded"] is True and p["sections"] == 3  # 3 frames + paper + alt3 LDR
    assert p["caption"] == "[overexposed: the <b>sun</b> & sky]; [underexposed: a dark </div> field]"  # escaped
    assert p["filtered"] == "1"
    img = cv2.imread(str(shot))
    assert img.shape[1] == 1280 and img.shape[0] == res["size"][1] > 900
    assert img.std() > 20  # not a blank page


def test_report_thumbnails_and_histograms_are_the_frames(tiny_dataset, tmp_path):
    build(str(tiny_dataset), test="2", progress=False)
    m = open_manifest(tiny_dataset, "v1")
    c = m.clip("forest/highlight_zoom_in")
    (tmp_path / "thumbs").mkdir()
    a = _clip_assets(m, c, tmp_path, 64)
    assert [i for i, _ in a["thumbs"]] == [0, 4, 8]
    frames = np.stack([read_image(tiny_dataset / c.frames[i]) for i in (0, 4, 8)])
    tm, scale = reinhard_display(frames)
    thumb = cv2.imread(str(tmp_path / a["thumbs"][1][1]))[..., ::-1]
    assert thumb.shape == (64, 64, 3)
    np.testing.assert_array_equal(thumb[::2, ::2], tm[1])  # 32 -> 64 px, nearest neighbour
    # the histogram counts every pixel of the three frames once, in its stop
    assert a["hist"].sum() == 3 * 32 * 32 and len(a["hist"]) == HIST_RANGE[1] - HIST_RANGE[0]
    y = frames @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    mode = int(np.argmax(a["hist"])) + HIST_RANGE[0]
    assert np.mean((np.log2(y) >= mode) & (np.log2(y) < mode + 1)) == a["hist"].max() / a["hist"].sum()
    # the page quotes the clip.json dynamic range
    m_html = (tiny_dataset / "_reports").exists()
    assert not m_html
    r = cli("report", "v1", "--root", tiny_dataset, "--quiet", "--out", tmp_path / "rep")
    page = (tmp_path / "rep/index.html").read_text()
    dr = json.loads((tiny_dataset / c.rel / "clip.json").read_text())["radiance"]["dynamic_range_stops"]
    assert r.returncode == 0 and f"DR {dr:.1f} stops (clip.json)" in page
    # a subset of the sections, the totals unchanged
    r = cli("report", "v1", "--root", tiny_dataset, "--quiet", "--out", tmp_path / "sub", "--split", "train",
            "--max-hdris", "1")
    page = (tmp_path / "sub/index.html").read_text()
    train = sorted({x.hdri_id for x in m.clips("train")})
    assert r.returncode == 0 and page.count('<section class="hdri"') == 1 and f"<h2>{train[0]} " in page
    assert "Showing 1 of 3 HDRIs (split train)" in page and "<td>clips</td><td>6</td>" in page
