"""Open a local HTML page in headless Chromium and collect what its DevTools console shows (used to test the report).

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file
descriptors 3 and 4 of the browser): no websocket client, no port. Collected as errors: uncaught exceptions
(``Runtime.exceptionThrown``), ``console.error``/``console.assert`` calls, and browser log entries of level
"error" (``Log.entryAdded``: failed resource loads such as a missing image, security and parse errors).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars"]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name) if not os.path.isabs(name) else (name if os.path.exists(name) else None)
        if p:
            return p
    return None


class _Pipe:
    def __init__(self, proc, w, r):
        self.proc, self.w, self.r = proc, w, r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        deadline = time.monotonic() + timeout
        while True:
            for m in self._read(deadline):
                if m.get("id") == want:
                    if "error" in m:
                        raise BrowserError(f"{method}: {m['error']}")
                    return m.get("result", {})
                if "method" in m:
                    self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == method:
                    return e
            for m in self._read(deadline):
                if "method" in m:
                    self.events.append(m)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                for m in self._read(deadline):
                    if "method" in m:
                        self.events.append(m)
        except TimeoutError:
            pass

    def _read(self, deadline: float) -> list[dict]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser closed the DevTools pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        *msgs, self.buf = self.buf.split(b"\0")
        return [json.loads(m) for m in msgs if m]


def render_page(html_path, screenshot=None, chromium: str | None = None, width: int = 1280, height: int = 900,
                settle: float = 1.0, timeout: float = 60.0, probes: dict | None = None) -> dict:
    """Load ``html_path`` (file) in headless Chromium; returns {"errors": [...], "console": [...], "title": str,
    "screenshot": path|None, "size": (w, h) of the full page, "probes": {name: value}}. ``screenshot`` gets a
    full-page PNG; ``probes`` are JavaScript expressions evaluated in the page after it loaded (in order)."""
    chromium = chromium or find_chromium()
    if not chromium:
        raise BrowserError("no Chromium found (Debian: apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def fds():  # in the child: the browser reads commands on fd 3 and writes answers on fd 4
        a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)  # out of the way first (the pipe may itself be fd 3 or 4)
        b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)  # dup2 makes them inheritable
        os.dup2(b, 4)

    log = tempfile.TemporaryFile()
    # close_fds=False keeps fds 3/4 made in fds(); Python's own descriptors are close-on-exec anyway
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                             f"--window-size={width},{height}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                            preexec_fn=fds, close_fds=False)
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(proc, to_child_w, from_child_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        sid = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=sid)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=sid)
        pipe.events.clear()
        nav = pipe.send("Page.navigate", {"url": url}, session=sid, timeout=timeout)
        if nav.get("errorText"):
            raise BrowserError(f"{url}: {nav['errorText']}")
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        pipe.drain(settle)
        title = pipe.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                          session=sid)["result"].get("value")
        metrics = pipe.send("Page.getLayoutMetrics", session=sid)
        size = metrics.get("cssContentSize") or metrics.get("contentSize")
        w, h = int(size["width"]), int(size["height"])
        shot = None
        if screenshot is not None:
            data = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                        "clip": {"x": 0, "y": 0, "width": w, "height": h,
                                                                 "scale": 1}}, session=sid, timeout=timeout)
            Path(screenshot).write_bytes(base64.b64decode(data["data"]))
            shot = str(screenshot)
        values = {}
        for name, expr in (probes or {}).items():
            res = pipe.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
            if "exceptionDetails" in res:
                raise BrowserError(f"probe {name}: {res['exceptionDetails'].get('text')}")
            values[name] = res["result"].get("value")
        pipe.drain(0.2)
        errors, console = [], []
        for ev in pipe.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                errors.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif m == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                console.append(f"{p.get('type')}: {text}")
                if p.get("type") in ("error", "assert"):
                    errors.append(f"console.{p.get('type')}: {text}")
            elif m == "Log.entryAdded":
                e = p.get("entry", {})
                console.append(f"{e.get('level')}: {e.get('text')} {e.get('url', '')}".strip())
                if e.get("level") == "error":
                    errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        try:
            pipe.send("Browser.close", timeout=10)
        except (BrowserError, TimeoutError):
            pass
        return {"errors": errors, "console": console, "title": title, "screenshot": shot, "size": (w, h),
                "probes": values}
    finally:
        os.close(to_child_w)
        os.close(from_child_r)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
