"""``python -m render.fetch polyhaven`` against a fake of the Poly Haven API that the test starts on loopback: the
API's JSON shapes, bundled maps as the files, one wrong MD5, one connection dropped mid-file, Range resumes, reruns
that download nothing, dry runs, filters, fallbacks, _sources.json and the User-Agent. Nothing touches the network."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hdr import __version__
from hdr.io import read_header, write_hdr
from hdr.storage import Store
from render import fetch
from render.hdri import discover

MAPS = {  # asset id -> (categories, tags); the bytes are bundled maps; studio has only a 1k .hdr
    "city": (["outdoor", "urban"], ["street", "sunny"]),
    "forest": (["outdoor", "nature"], ["trees"]),
    "interior": (["indoor"], ["room"]),
    "night": (["outdoor", "night"], ["dark", "moon"]),
    "studio": (["indoor", "studio"], ["softbox"]),
}
BAD_MD5 = "night"  # the API lists a wrong MD5 for it
DROP_ONCE = "forest_1k.exr"  # the first GET of it closes the connection halfway


class FakeAPI:
    """``/assets``, ``/files/<id>``, ``/info/<id>`` in the real API's shapes and ``/dl/<file>`` with Range support;
    every request is logged; a request without the toolkit's User-Agent gets 403."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.dropped = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                api.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def info(self, asset_id):
        cats, tags = MAPS[asset_id]
        return {"name": asset_id.title(), "type": 0, "categories": cats, "tags": tags,
                "authors": {"Greg Zaal": "All"}, "max_resolution": [1024, 512], "date_published": 1600000000}

    def files(self, asset_id):
        hdri = {}
        for name in self.blobs:
            stem, ext = name.rsplit(".", 1)
            aid, res = stem.rsplit("_", 1)
            if aid == asset_id:
                data = self.blobs[name]
                md5 = hashlib.md5(data + (b"x" if aid == BAD_MD5 else b"")).hexdigest()
                hdri.setdefault(res, {})[ext] = {"url": f"{self.url}/dl/{name}", "size": len(data), "md5": md5}
        return {"hdri": hdri, "tonemapped": {"url": f"{self.url}/dl/{asset_id}.jpg", "size": 1, "md5": "0"}}

    def handle(self, h: BaseHTTPRequestHandler):
        u = urllib.parse.urlparse(h.path)
        q = urllib.parse.parse_qs(u.query)
        with self.lock:
            self.log.append({"path": u.path, "query": q, "ua": h.headers.get("User-Agent"),
                             "range": h.headers.get("Range")})
        if not str(h.headers.get("User-Agent", "")).startswith("hdr-video-toolkit/"):
            return self.send(h, 403, b"unique User-Agent required")
        if u.path == "/assets":
            want = set(q.get("categories", [""])[0].split(",")) - {""}
            body = {a: self.info(a) for a in MAPS if want <= set(MAPS[a][0])} if q.get("type") == ["hdris"] else {}
            return self.send(h, 200, json.dumps(body).encode())
        kind, _, rest = u.path.strip("/").partition("/")
        if kind in ("files", "info") and rest in MAPS:
            return self.send(h, 200, json.dumps(self.files(rest) if kind == "files" else self.info(rest)).encode())
        if kind == "dl" and rest in self.blobs:
            data = self.blobs[rest]
            m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                return self.send(h, 416, b"")
            h.send_response(206 if m else 200)
            h.send_header("Content-Length", str(len(data) - start))
            if m:
                h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            h.end_headers()
            with self.lock:
                drop = rest == DROP_ONCE and not self.dropped
                self.dropped |= drop
            h.wfile.write(data[start:start + (len(data) - start) // 2] if drop else data[start:])
            h.close_connection = True
            return
        self.send(h, 404, b"not found")

    @staticmethod
    def send(h, code, body):
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def downloads(self, name: str | None = None) -> list[dict]:
        return [r for r in self.log if r["path"].startswith("/dl/") and (name is None or r["path"] == f"/dl/{name}")]


@pytest.fixture
def api(bundled_hdris, tmp_path):
    blobs = {f"{a}_1k.exr": (bundled_hdris / f"{a}.exr").read_bytes() for a in ("city", "forest", "interior", "night")}
    blobs["city_2k.exr"] = blobs["city_1k.exr"] + b"\0" * 16  # any bytes: only checked against the listing
    hdr = tmp_path / "studio.hdr"
    write_hdr(hdr, np.linspace(0.1, 4.0, 8 * 16 * 3, dtype=np.float32).reshape(8, 16, 3))
    blobs["studio_1k.hdr"] = hdr.read_bytes()
    fake = FakeAPI(blobs)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def cmd(api, out, *extra):
    return ["polyhaven", "--out", str(out), "--resolution", "1k", "--format", "exr", "--api-url", api.url,
            "--retry-wait", "0.01", "--timeout", "10", "--jobs", "2", *extra]


def run_fetch(capsys, argv):
    rc = fetch.main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_fetch_verifies_resumes_reports_and_records(api, tmp_path, capsys, monkeypatch):
    out = tmp_path / "polyhaven"
    rc, _, err = run_fetch(capsys, cmd(api, out))  # with the progress bar
    lines = err.strip().splitlines()
    assert rc == 1
    summary = lines[-1]
    assert summary.startswith("polyhaven: 3 downloaded") and "1 failed (night)" in summary
    assert "1 skipped (no 1k exr: studio)" in summary
    bad = [ln for ln in lines if "failed its check twice" in ln]
    assert len(bad) == 1 and "night" in bad[0] and "MD5" in bad[0]
    assert any(ln.startswith("skipped studio: no 1k exr (available: 1k hdr)") for ln in lines)
    assert re.search(r"polyhaven: +\d+%\|", err) and "B/s" in err  # tqdm, in bytes

    for a in ("city", "forest", "interior"):
        assert (out / f"{a}_1k.exr").read_bytes() == api.blobs[f"{a}_1k.exr"]
        assert read_header(out / f"{a}_1k.exr").width == 1024
    assert not (out / "night_1k.exr").exists() and not list((out / fetch.PARTIAL_DIR).iterdir())
    assert len(api.downloads("night_1k.exr")) == 2  # checked twice, then given up

    forest = api.downloads("forest_1k.exr")  # dropped halfway, resumed with a Range request
    half = len(api.blobs["forest_1k.exr"]) // 2
    assert [r["range"] for r in forest] == [None, f"bytes={half}-"]
    assert all(r["ua"] == fetch.user_agent() for r in api.log)
    assert api.log[0]["ua"].startswith(f"hdr-video-toolkit/{__version__} (render.fetch")

    src = json.loads((out / fetch.SOURCES_FILE).read_text())
    assert sorted(src["maps"]) == ["city_1k.exr", "forest_1k.exr", "interior_1k.exr"]
    rec = src["maps"]["forest_1k.exr"]
    data = api.blobs["forest_1k.exr"]
    assert rec["id"] == "forest" and rec["name"] == "Forest" and rec["authors"] == {"Greg Zaal": "All"}
    assert rec["license"] == "CC0" and rec["categories"] == ["outdoor", "nature"] and rec["tags"] == ["trees"]
    assert (rec["resolution"], rec["format"]) == ("1k", "exr") and rec["url"] == f"{api.url}/dl/forest_1k.exr"
    assert rec["md5"] == hashlib.md5(data).hexdigest() and rec["bytes"] == len(data)
    assert datetime.strptime(rec["downloaded"], "%Y-%m-%dT%H:%M:%SZ").date() == datetime.now(timezone.utc).date()

    # a rerun downloads only what is not verified yet (night, which fails again)
    n = len(api.downloads())
    rc, _, err = run_fetch(capsys, cmd(api, out, "--quiet"))
    assert rc == 1 and [r["path"] for r in api.downloads()[n:]] == ["/dl/night_1k.exr"] * 2
    assert err.strip().splitlines()[-1].startswith("polyhaven: 0 downloaded (0 B), 3 already verified")

    # without the bad asset: nothing downloaded, exit 0; an earlier run's records are kept (merged)
    n = len(api.downloads())
    hashed = []
    md5_file = fetch.md5_file
    monkeypatch.setattr(fetch, "md5_file", lambda p: hashed.append(p.name) or md5_file(p))
    rc, _, err = run_fetch(capsys, cmd(api, out, "--quiet", "--ids", "city,forest"))
    assert rc == 0 and len(api.downloads()) == n and not hashed  # the record vouches: no re-hashing
    assert sorted(json.loads((out / fetch.SOURCES_FILE).read_text())["maps"]) == sorted(src["maps"])

    # unsure (mtime differs from the record): re-hashed; same bytes kept, a corrupted file fetched again
    city, interior = out / "city_1k.exr", out / "interior_1k.exr"
    os.utime(interior, ns=(1, 1))
    raw = bytearray(city.read_bytes())
    raw[100] ^= 0xFF
    city.write_bytes(bytes(raw))
    rc, _, _ = run_fetch(capsys, cmd(api, out, "--quiet", "--ids", "city,interior"))
    assert rc == 0 and [r["path"] for r in api.downloads()[n:]] == ["/dl/city_1k.exr"]
    assert sorted(hashed) == ["city_1k.exr", "city_1k.exr.part", "interior_1k.exr"]
    assert city.read_bytes() == api.blobs["city_1k.exr"]


def test_partial_file_of_an_earlier_run_is_resumed_and_render_sees_only_maps(api, tmp_path, capsys):
    out = tmp_path / "ph"
    data = api.blobs["city_1k.exr"]
    (out / fetch.PARTIAL_DIR).mkdir(parents=True)
    (out / fetch.PARTIAL_DIR / "city_1k.exr.part").write_bytes(data[:1000])
    assert discover(Store(str(out))) == ([], [])  # render.run --hdris skips partial files
    rc, _, _ = run_fetch(capsys, cmd(api, out, "--quiet", "--ids", "city,interior"))
    assert rc == 0 and sorted((r["path"], r["range"]) for r in api.downloads()) == [
        ("/dl/city_1k.exr", "bytes=1000-"), ("/dl/interior_1k.exr", None)]
    assert (out / "city_1k.exr").read_bytes() == data
    assert [e.rel for e in discover(Store(str(out)))[0]] == ["city_1k.exr", "interior_1k.exr"]


def test_dry_run_prints_count_and_size_and_downloads_nothing(api, tmp_path):
    out = tmp_path / "ph"  # the real command line, in a process of its own
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "render.fetch", *cmd(api, out, "--dry-run")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    rc, stdout = r.returncode, r.stdout
    assert rc == 0 and not api.downloads() and not out.exists()
    total = sum(len(api.blobs[f"{a}_1k.exr"]) for a in ("city", "forest", "interior", "night"))
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("polyhaven: 4 maps, ") and f"({total} bytes) at 1k exr" in last
    assert "1 skipped (no 1k exr: studio)" in last and "nothing downloaded" in last


def dry_ids(capsys, api, tmp_path, *extra):
    rc, stdout, err = run_fetch(capsys, cmd(api, tmp_path / "ph", "--dry-run", "--quiet", *extra))
    rows = [ln.split() for ln in stdout.splitlines() if ln.startswith("  ")]
    return rc, [(r[0], r[1], r[2]) for r in rows], err


def test_filters(api, tmp_path, capsys):
    ids = lambda *extra: [r[0] for r in dry_ids(capsys, api, tmp_path, *extra)[1]]  # noqa: E731
    assert ids("--ids", "night,city") == ["night", "city"]
    assert ids("--categories", "outdoor") == ["city", "forest", "night"]
    asked = [r["query"] for r in api.log if r["path"] == "/assets"][-1]
    assert asked == {"type": ["hdris"], "categories": ["outdoor"]}  # passed on to the API (AND, as the API does)
    assert ids("--categories", "outdoor,nature") == ["forest"]
    assert ids("--tags", "DARK") == ["night"]
    assert ids("--limit", "2") == ["city", "forest"]
    assert ids("--categories", "indoor", "--fallback-format") == ["interior", "studio"]
    assert not api.downloads()
    rc, _, err = run_fetch(capsys, cmd(api, tmp_path / "ph", "--ids", "city,nope"))
    assert rc == 2 and err.strip().splitlines() == ["error: --ids: not an HDRI the API lists: nope"]


def test_fallbacks(api, tmp_path, capsys):
    rc, rows, err = dry_ids(capsys, api, tmp_path, "--ids", "studio", "--fallback-format")
    assert rows == [("studio", "1k", "hdr")] and "studio: no 1k exr: taking 1k hdr" in err
    rc, rows, err = dry_ids(capsys, api, tmp_path, "--ids", "city,interior", "--resolution", "2k")
    assert rows == [("city", "2k", "exr")] and "skipped interior: no 2k exr (available: 1k exr)" in err
    rc, rows, _ = dry_ids(capsys, api, tmp_path, "--ids", "city,interior", "--resolution", "2k",
                          "--fallback-resolution")
    assert rows == [("city", "2k", "exr"), ("interior", "1k", "exr")]
    out = tmp_path / "ph"
    rc, _, _ = run_fetch(capsys, cmd(api, out, "--quiet", "--ids", "studio", "--fallback-format"))
    rec = json.loads((out / fetch.SOURCES_FILE).read_text())["maps"]["studio_1k.hdr"]
    assert rc == 0 and rec["format"] == "hdr" and read_header(out / "studio_1k.hdr").width == 16


def test_network_errors_retry_then_fail_in_one_line(tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused, retried, then one line
    rc, _, err = run_fetch(capsys, ["polyhaven", "--out", str(tmp_path / "ph"), "--api-url", f"http://127.0.0.1:{port}",
                                    "--retries", "2", "--retry-wait", "0.01"])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: http://127.0.0.1:{port}/assets?type=hdris: ") and "after 2 retries" in err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        fetch.main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith("usage: python -m render.fetch")
    for flag in ("--out", "--resolution", "--format", "--fallback-format", "--fallback-resolution", "--ids",
                 "--categories", "--tags", "--limit", "--jobs", "--retries", "--retry-wait", "--dry-run", "--verify",
                 "--api-url", "--quiet"):
        assert flag in text
