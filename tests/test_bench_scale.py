"""benchmarks/scale.py, smoke test: 3 and 6 cloned clips on a local folder. The table has one row per step and size,
the steps did what they should (checked inside the benchmark), and k is the log-log slope of the printed seconds.
The data it clones is schema-valid and its per-file records are trusted by ``manifests build``. No timing
assertions."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import scale  # noqa: E402


def test_fit_k_is_the_log_log_slope():
    assert scale.fit_k([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert scale.fit_k([10, 100], [1.0, 100.0]) == pytest.approx(2.0)
    assert scale.fit_k([10, 20, 40], [3.0, 3.0, 3.0]) == pytest.approx(0.0)
    assert scale.fit_k([10], [1.0]) is None


def test_clip_keys_follow_render_naming():
    keys = scale.clip_keys(9)
    assert keys[0] == ("h0000", "highlight_zoom_in") and keys[7] == ("h0001", "highlight_zoom_in")
    assert len(set(keys)) == 9


def test_scale_smoke(tmp_path):
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--sizes", "3,6", "--stores", "local",
                        "--ray-at", "none", "--json", str(out), "--keep", str(tmp_path / "work")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    rows, fits = data["rows"], data["fits"]
    steps = [s for s in scale.STEPS if s != "verify_ray"]
    assert sorted((x["step"], x["n"]) for x in rows) == sorted((s, n) for s in steps for n in (3, 6))
    assert data["files_per_clip"] == 15  # 3 EXR + clip.json + 9 PNG/masks + aug.json + caption.json
    for x in rows:
        assert x["store"] == "local" and x["seconds"] > 0 and x["peak_mb"] > 0 and x["requests"] == {}
    by = {(x["step"], x["n"]): x for x in rows}
    assert by[("build_rehash", 6)]["check"]["hashed"] == 6 * 15
    first = by[("build_first", 6)]["check"]
    assert first["hashed"] == 0 and first["recorded_by_writers"] == 6 * 15  # data files and JSON: none re-read
    assert by[("build_noop", 6)]["check"]["version"] is None
    assert by[("plan", 6)]["check"] == {"hdris": 1, "complete": 6}
    for s in steps:
        f = fits[f"{s}/local"]
        k = (math.log(by[(s, 6)]["seconds"]) - math.log(by[(s, 3)]["seconds"])) / math.log(2)
        assert f["k"] == pytest.approx(k, rel=1e-9, abs=1e-9)
        assert f["paper_seconds"] > 0
    # the printed table: a header, one line per row, a k line per step
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["step", "store", "n", "seconds"]
    table = [ln.split() for ln in lines[1:1 + len(rows)]]
    assert [(t[0], int(t[2])) for t in table] == [(x["step"], x["n"]) for x in rows]
    assert [float(t[3]) for t in table] == [pytest.approx(x["seconds"], abs=1e-3) for x in rows]
    assert sum(1 for ln in lines if " k = " in ln) == len(steps)
    assert "1.8 M files" in r.stdout
    # the clones on disk are schema-valid and the manifest holds the clone ids
    from hdr.dataset.manifest import open_manifest
    from hdr.dataset.records import AugMeta, ClipMeta
    from hdr.storage import Store

    root = tmp_path / "work" / "local-6" / "data"
    store = Store(str(root))
    meta = ClipMeta.read(store, "h0000/rotation_000/clip.json")
    assert (meta.hdri_id, meta.clip_id, meta.program) == ("h0000", "rotation_000", "rotation_000")
    aug = AugMeta.read(store, "h0000/rotation_000/ldr/paper_00/aug.json")
    assert aug.clip_id == "rotation_000" and len(aug.file_records) == 9
    assert sorted(c.key for c in open_manifest(str(root), "v1").clips()) == sorted(
        f"{h}/{c}" for h, c in scale.clip_keys(6))
