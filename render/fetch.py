"""``python -m render.fetch polyhaven``: the Poly Haven HDRI library as a verified, resumable folder for
``python -m render.run --hdris``.

Library: :func:`list_assets` (``GET /assets?type=hdris``), :func:`select` (ids, categories, tags, limit),
:func:`plan` (``GET /files/<id>`` per asset: one file at the chosen resolution and format, or the documented
fallback), :func:`local_state` (what is already on disk, cheaply), :func:`fetch_file` (one file: temporary name
``OUT/.partial/<name>.part``, HTTP Range resume, retries with exponential backoff, size + MD5 check, atomic
rename) and :class:`Sources` (``OUT/_sources.json``: one source record per map, merged across runs, written
atomically). :func:`run` drives them with a bounded thread pool and a progress bar in bytes. The API fields relied
on are listed in docs/render.md, "Getting the PolyHaven library". Only the standard library talks HTTP.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import importlib.metadata
import json
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from hdr import __version__, cli
from hdr.storage import atomic_write_json, human_bytes
from render.hdri import SOURCES_FILE  # its one home: render.hdri reads the file

DEFAULT_API = "https://api.polyhaven.com"
PARTIAL_DIR = ".partial"  # a dot-dir: render's HDRI scan skips it
FORMATS = ("exr", "hdr")
LICENSE = "CC0"
LICENSE_URL = "https://creativecommons.org/publicdomain/zero/1.0/"
PAGE_URL = "https://polyhaven.com/a/{id}"
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A one-line problem naming the asset or URL."""


class ShortRead(OSError):
    """The server closed the connection before the body was complete (resumable)."""


class Interrupted(Exception):
    """The run is stopping (Ctrl-C): partial files are kept for the next run."""


@functools.lru_cache(maxsize=1)
def user_agent() -> str:
    """``hdr-video-toolkit/<version> (render.fetch; +<project URL>)``: Poly Haven's API terms ask for a User-Agent
    unique to the software. The URL is the package's ``[project.urls]`` entry when it has one."""
    try:
        urls = importlib.metadata.metadata("hdr-video-toolkit").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        urls = []
    url = next((u.split(",", 1)[1].strip() for u in urls if "," in u), "")
    return f"hdr-video-toolkit/{__version__} (render.fetch{'; +' + url if url else ''})"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _transient(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code in TRANSIENT_HTTP
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                          socket.timeout, ShortRead))


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    return " ".join(f"{type(e).__name__}: {e}".split())


# --- HTTP --------------------------------------------------------------------------------------------------------
@dataclass
class Client:
    """The API root, the User-Agent every request carries, and the retry policy: a network error (connection refused
    or dropped, timeout, HTTP 408/429/5xx) is retried ``retries`` times after ``retry_wait * 2**k`` seconds (at most
    60 s); any other HTTP error is final."""

    api_url: str = DEFAULT_API
    user_agent: str = field(default_factory=user_agent)
    timeout: float = 60.0
    retries: int = 5
    retry_wait: float = 2.0
    stop: threading.Event = field(default_factory=threading.Event)

    def open(self, url: str, headers: dict | None = None):
        req = urllib.request.Request(url, headers={"User-Agent": self.user_agent, **(headers or {})})
        return urllib.request.urlopen(req, timeout=self.timeout)

    def retrying(self, what: str, fn: Callable[[], object]):
        """``fn()``, retried on network errors with exponential backoff; FetchError naming ``what`` at the end."""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise Interrupted()
            try:
                return fn()
            except Interrupted:
                raise
            except Exception as e:  # noqa: BLE001 - classified just below
                if not _transient(e):
                    raise FetchError(f"{what}: {_reason(e)}") from None
                if attempt == self.retries:
                    raise FetchError(f"{what}: {_reason(e)} (gave up after {self.retries} retries)") from None
                if self.stop.wait(min(60.0, self.retry_wait * 2 ** attempt)):
                    raise Interrupted() from None
        raise AssertionError("unreachable")

    def get_json(self, path: str, query: dict | None = None):
        url = self.api_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query, safe=",") if query else "")

        def once():
            with self.open(url, {"Accept": "application/json"}) as r:
                return r.read()

        body = self.retrying(url, once)
        try:
            return json.loads(body)
        except ValueError:
            raise FetchError(f"{url}: the API's answer is not JSON") from None


# --- choosing --------------------------------------------------------------------------------------------------------
def list_assets(client: Client, categories: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{asset_id: info}`` of every HDRI (``GET /assets?type=hdris``, with ``&categories=a,b`` when given; entries
    whose ``type`` is present and not 0 are dropped, for mirrors that ignore the filter)."""
    query = {"type": "hdris", **({"categories": ",".join(categories)} if categories else {})}
    data = client.get_json("/assets", query)
    if not isinstance(data, dict):
        raise FetchError(f"{client.api_url}/assets: expected a JSON object of assets, got {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("type", 0) == 0}


def _words(values) -> set[str]:
    return {str(v).strip().lower() for v in values or ()}


def select(assets: dict[str, dict], *, ids: tuple[str, ...] = (), categories: tuple[str, ...] = (),
           tags: tuple[str, ...] = (), limit: int | None = None) -> list[str]:
    """The asset ids to fetch: ``ids`` (in that order) or every asset sorted by id, keeping those in ALL the
    ``categories`` and carrying ALL the ``tags`` (case-insensitive), then the first ``limit``. FetchError for an id
    the API does not list."""
    unknown = [i for i in ids if i not in assets]
    if unknown:
        raise FetchError(f"--ids: not an HDRI the API lists: {', '.join(unknown)}")
    chosen = list(dict.fromkeys(ids)) if ids else sorted(assets)
    want_c, want_t = _words(categories), _words(tags)
    chosen = [i for i in chosen if want_c <= _words(assets[i].get("categories"))
              and want_t <= _words(assets[i].get("tags"))]
    return chosen[:limit] if limit is not None else chosen


def _res_key(res: str) -> int:
    m = re.fullmatch(r"(\d+)k", str(res).lower())
    return int(m.group(1)) if m else -1


@dataclass
class FileTask:
    """One map to fetch: where from, what it must be, and its source record (without the download date)."""

    asset_id: str
    name: str  # file name inside OUT
    url: str
    size: int | None  # bytes the API lists (None: not listed, not checked)
    md5: str | None  # the API's MD5 (None: not listed, not checked)
    resolution: str
    format: str
    record: dict
    note: str = ""  # the fallback taken, if any


def choose_file(files: dict, resolution: str, fmt: str, *, fallback_format: bool = False,
                fallback_resolution: bool = False) -> tuple[str, str, dict] | str:
    """``(resolution, format, {url, size, md5})`` from a ``GET /files/<id>`` answer, or the reason there is none.
    Order tried: the requested pair; the other format at that resolution (``fallback_format``); then each lower
    resolution, largest first, in the requested format (and the other one with ``fallback_format``)."""
    hdri = files.get("hdri") if isinstance(files, dict) else None
    if not isinstance(hdri, dict):
        return "the API lists no HDRI files for it"
    fmts = (fmt,) + tuple(f for f in FORMATS if f != fmt and fallback_format)
    resolutions = [resolution]
    if fallback_resolution:
        resolutions += sorted((r for r in hdri if 0 < _res_key(r) < _res_key(resolution)), key=_res_key,
                              reverse=True)
    for r in resolutions:
        for f in fmts:
            entry = (hdri.get(r) or {}).get(f)
            if isinstance(entry, dict) and entry.get("url"):
                return r, f, entry
    have = ", ".join(f"{r} {'/'.join(sorted(hdri[r]))}" for r in sorted(hdri, key=_res_key)
                     if isinstance(hdri[r], dict))
    return f"no {resolution} {fmt} (available: {have or 'none'})"


def _file_name(asset_id: str, url: str, resolution: str, fmt: str) -> str:
    base = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", base) or not base.lower().endswith("." + fmt):
        base = re.sub(r"[^A-Za-z0-9._-]", "_", f"{asset_id}_{resolution}.{fmt}")
    return base


def source_record(asset_id: str, info: dict, resolution: str, fmt: str, entry: dict, api_url: str) -> dict:
    """The per-map record of ``_sources.json`` (the download date is added when the file is in place)."""
    rec = {"id": asset_id, "name": info.get("name", asset_id), "authors": info.get("authors") or {},
           "license": LICENSE, "license_url": LICENSE_URL, "categories": list(info.get("categories") or []),
           "tags": list(info.get("tags") or []), "resolution": resolution, "format": fmt, "url": entry["url"],
           "md5": entry.get("md5"), "bytes": entry.get("size"), "page": PAGE_URL.format(id=asset_id),
           "api": api_url}
    for key in ("category", "attributes", "max_resolution", "date_published"):
        if info.get(key) is not None:  # newer or optional API fields: kept when present
            rec[key] = info[key]
    return rec


@dataclass
class Plan:
    tasks: list[FileTask]
    skipped: list[tuple[str, str]]  # (asset id, reason): no file at the requested resolution/format
    failed: list[tuple[str, str]]  # (asset id, one-line error): its file list could not be read


def plan(client: Client, assets: dict[str, dict], ids: list[str], resolution: str, fmt: str, *,
         fallback_format: bool = False, fallback_resolution: bool = False, jobs: int = 4) -> Plan:
    """One :class:`FileTask` per asset (``GET /files/<id>``, ``jobs`` at a time), in the order of ``ids``."""
    def one(asset_id):
        files = client.get_json(f"/files/{urllib.parse.quote(asset_id)}")
        got = choose_file(files, resolution, fmt, fallback_format=fallback_format,
                          fallback_resolution=fallback_resolution)
        if isinstance(got, str):
            return got
        r, f, entry = got
        size = entry.get("size")
        md5 = entry.get("md5")
        task = FileTask(asset_id, _file_name(asset_id, entry["url"], r, f), entry["url"],
                        int(size) if isinstance(size, (int, float)) else None,
                        str(md5).lower() if md5 else None, r, f,
                        source_record(asset_id, assets[asset_id], r, f, entry, client.api_url))
        notes = [f"no {resolution} {fmt}: taking {r} {f}"] if (r, f) != (resolution, fmt) else []
        notes += [f"the API lists no {what}: not checked" for what, v in (("size", task.size), ("MD5", task.md5))
                  if v is None]
        task.note = "; ".join(notes)
        return task

    results: dict[str, object] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, i): i for i in ids}
        for fut, asset_id in futures.items():
            try:
                results[asset_id] = fut.result()
            except FetchError as e:
                results[asset_id] = e
    out = Plan([], [], [])
    for asset_id in ids:
        r = results[asset_id]
        if isinstance(r, FileTask):
            out.tasks.append(r)
        elif isinstance(r, FetchError):
            out.failed.append((asset_id, str(r)))
        else:
            out.skipped.append((asset_id, str(r)))
    return out


# --- the folder ------------------------------------------------------------------------------------------------------
class Sources:
    """``OUT/_sources.json``: ``{"maps": {file name: source record}, ...}``. Records of earlier runs are kept; every
    :meth:`put` rewrites the file atomically (thread-safe)."""

    def __init__(self, out: Path):
        self.path = Path(out) / SOURCES_FILE
        self.lock = threading.Lock()
        self.maps: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                maps = data["maps"]
                assert isinstance(maps, dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                raise FetchError(f"{self.path}: not a sources file (expected JSON with a 'maps' object); "
                                 "move it away to start a new one") from None
            self.maps = dict(maps)

    def get(self, name: str) -> dict | None:
        with self.lock:
            return self.maps.get(name)

    def put(self, name: str, record: dict) -> None:
        with self.lock:
            self.maps[name] = record
            self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, {
            "source": "Poly Haven (https://polyhaven.com), via its public API",
            "license": f"{LICENSE} ({LICENSE_URL})", "tool": user_agent(), "updated": _now(),
            "maps": dict(sorted(self.maps.items()))})


def md5_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _partial(out: Path, task: FileTask) -> Path:
    return Path(out) / PARTIAL_DIR / f"{task.name}.part"


def _trusted(task: FileTask, record: dict | None, st: os.stat_result) -> bool:
    """Whether ``_sources.json`` vouches for the file on disk without re-hashing: the recorded MD5 and size are the
    API's and the file's size and mtime are the recorded ones."""
    return bool(record) and record.get("md5") == task.md5 and record.get("bytes") == st.st_size \
        and record.get("mtime_ns") == st.st_mtime_ns and (task.size is None or task.size == st.st_size)


def local_state(out: Path, task: FileTask, sources: Sources, *, verify: bool = False) -> tuple[str, int]:
    """``("present", 0)`` when the recorded MD5 vouches for the file in place (no hashing); ``("check", 0)`` when a
    file is in place but must be hashed (no record, another size or mtime, or ``verify``); ``("download", n)``
    otherwise, ``n`` the bytes already in its partial file."""
    dest = Path(out) / task.name
    if dest.exists():
        st = dest.stat()
        if not verify and _trusted(task, sources.get(task.name), st):
            return "present", 0
        if task.size is None or st.st_size == task.size:
            return "check", 0
    part = _partial(out, task)
    return "download", part.stat().st_size if part.exists() else 0


def _check(path: Path, task: FileTask) -> str | None:
    """None when ``path`` is the file the API lists, else what differs."""
    size = path.stat().st_size
    if task.size is not None and size != task.size:
        return f"{size} bytes, the API lists {task.size}"
    if task.md5 is not None:
        got = md5_file(path)
        if got != task.md5:
            return f"MD5 {got}, the API lists {task.md5}"
    return None


def _transfer(client: Client, task: FileTask, part: Path, progress: Callable[[int], None]) -> None:
    """Bring ``part`` up to the whole file: resume with ``Range: bytes=N-`` when it holds N bytes (a server that
    answers 200 instead of 206 is read from the start), retrying dropped connections."""
    part.parent.mkdir(parents=True, exist_ok=True)

    def once():
        have = part.stat().st_size if part.exists() else 0
        if task.size is not None and have >= task.size:
            return  # complete, or longer than listed: the check decides
        try:
            resp = client.open(task.url, {"Range": f"bytes={have}-"} if have else None)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                return  # nothing past `have`: the check decides
            raise
        with resp:
            if have and resp.status != 206:
                progress(-have)
                have = 0
            elif have:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != have:
                    part.unlink()
                    progress(-have)
                    raise ShortRead(f"the server resumed at {m.group(1) if m else '?'} instead of byte {have}")
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            got = 0
            with open(part, "ab" if have else "wb") as f:
                while True:
                    if client.stop.is_set():
                        raise Interrupted()
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    progress(len(chunk))
            if expected is not None and got < expected:
                raise ShortRead(f"connection closed after {have + got} of {have + expected} bytes")

    client.retrying(f"{task.asset_id}: {task.url}", once)


@dataclass
class Outcome:
    task: FileTask
    status: str  # "present" (verified in place), "downloaded" or "failed"
    bytes: int = 0  # bytes of the file now in place
    error: str = ""


def _finish(out: Path, task: FileTask, sources: Sources, status: str) -> Outcome:
    st = (Path(out) / task.name).stat()
    old = sources.get(task.name) or {}
    when = old.get("downloaded") if status == "present" and old.get("md5") == task.md5 else None
    sources.put(task.name, {**task.record, "bytes": st.st_size, "downloaded": when or _now(),
                            "mtime_ns": st.st_mtime_ns})
    return Outcome(task, status, st.st_size)


def fetch_file(client: Client, task: FileTask, out: Path, sources: Sources, *, verify: bool = False,
               progress: Callable[[int], None] = lambda n: None) -> Outcome:
    """Make ``OUT/<task.name>`` the file the API lists and record it in ``sources``. A file in place is kept when the
    record vouches for it or its MD5 matches; otherwise the file is downloaded to ``OUT/.partial/<name>.part``
    (resuming what is there), checked (size, MD5) and renamed into place. A file failing its check is fetched again
    from scratch once; failing twice is an ``Outcome("failed")`` whose error is one line naming the asset.
    Network errors that outlast the retries are failures too; Ctrl-C (``client.stop``) raises Interrupted."""
    out = Path(out)
    dest = out / task.name
    state, _ = local_state(out, task, sources, verify=verify)
    if state == "present":
        return Outcome(task, "present", dest.stat().st_size)
    if state == "check" and _check(dest, task) is None:
        progress(task.size or 0)
        return _finish(out, task, sources, "present")
    part = _partial(out, task)
    problem = ""
    for _ in range(2):
        try:
            _transfer(client, task, part, progress)
        except FetchError as e:
            return Outcome(task, "failed", error=str(e))
        problem = _check(part, task)
        if problem is None:
            os.replace(part, dest)
            return _finish(out, task, sources, "downloaded")
        progress(-part.stat().st_size)
        part.unlink()
    return Outcome(task, "failed", error=f"{task.asset_id}: {task.name} failed its check twice ({problem}); "
                   "nothing kept")


# --- the run -----------------------------------------------------------------------------------------------------
def _names(items, n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", +{len(items) - n} more" if len(items) > n else "")


def run(args: argparse.Namespace) -> int:
    """The CLI's work after parsing: list, select, plan, then (unless ``--dry-run``) fetch ``--jobs`` files at a
    time. Per-asset lines and the summary (last) go to stderr; ``--dry-run`` prints its table to stdout."""
    client = Client(api_url=args.api_url.rstrip("/"), timeout=args.timeout, retries=args.retries,
                    retry_wait=args.retry_wait)
    out = Path(args.out)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    try:
        assets = list_assets(client, tuple(args.categories))
        ids = select(assets, ids=tuple(args.ids), categories=tuple(args.categories), tags=tuple(args.tags),
                     limit=args.limit)
        say(f"polyhaven: {len(assets)} HDRIs listed by {client.api_url}, {len(ids)} selected; reading their file "
            "lists")
        p = plan(client, assets, ids, args.resolution, args.format, fallback_format=args.fallback_format,
                 fallback_resolution=args.fallback_resolution, jobs=args.jobs)
        sources = Sources(out)  # reads the file if there is one; writes only on put()
    except (FetchError, Interrupted) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        client.stop.set()
        print(cli.INTERRUPTED, file=sys.stderr)
        return 130
    for asset_id, why in p.skipped:
        print(f"skipped {asset_id}: {why}", file=sys.stderr)
    for asset_id, err in p.failed:
        print(f"failed: {err}", file=sys.stderr)
    for t in p.tasks:
        if t.note:
            print(f"{t.asset_id}: {t.note}", file=sys.stderr)

    states = {t.name: local_state(out, t, sources, verify=args.verify) for t in p.tasks}
    todo = [t for t in p.tasks if states[t.name][0] != "present"]
    total = sum(t.size or 0 for t in p.tasks)
    to_get = sum(t.size or 0 for t in todo)
    resumed = sum(states[t.name][1] for t in todo)
    wanted = f"{args.resolution} {args.format}"
    skipped_text = f"; {len(p.skipped)} skipped (no {wanted}: {_names(i for i, _ in p.skipped)})" if p.skipped else ""

    if args.dry_run:
        for t in p.tasks:
            state, have = states[t.name]
            label = {"present": "verified", "check": "in place, hashed on a run", "download": "to download"}[state]
            extra = f", {human_bytes(have)} in a partial file" if have else ""
            print(f"  {t.asset_id:40s} {t.resolution:>4s} {t.format}  {human_bytes(t.size or 0):>9s}  {label}{extra}")
        print(f"polyhaven: {len(p.tasks)} maps, {human_bytes(total)} ({total} bytes) at {wanted}; {len(todo)} to "
              f"fetch ({human_bytes(max(0, to_get - resumed))} to download), {len(p.tasks) - len(todo)} already "
              f"verified{skipped_text}; {len(p.failed)} failed to list (dry run: nothing downloaded)")
        return 1 if p.failed else 0

    out.mkdir(parents=True, exist_ok=True)
    counts = {"present": len(p.tasks) - len(todo), "downloaded": 0, "failed": 0}
    failures = [a for a, _ in p.failed]
    got_bytes = 0
    bar = tqdm(total=to_get, initial=min(resumed, to_get), unit="B", unit_scale=True, unit_divisor=1000,
               desc="polyhaven", dynamic_ncols=True, file=sys.stderr, disable=args.quiet)
    bar_lock = threading.Lock()

    def progress(n: int) -> None:
        with bar_lock:
            bar.update(n)

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = {pool.submit(fetch_file, client, t, out, sources, verify=args.verify, progress=progress): t
               for t in todo}
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                t = futures[fut]
                try:
                    o = fut.result()
                except Exception as e:  # noqa: BLE001 - a bug or a disk error: one line, the others go on
                    o = Outcome(t, "failed", error=f"{t.asset_id}: {' '.join(str(e).split())}")
                counts[o.status] += 1
                if o.status == "failed":
                    failures.append(t.asset_id)
                    tqdm.write(f"failed: {o.error}", file=sys.stderr)
                    with bar_lock:  # the bar ends at 100% of what could be fetched
                        bar.total = max(bar.n, bar.total - (t.size or 0))
                        bar.refresh()
                elif o.status == "downloaded":
                    got_bytes += o.bytes
    except (KeyboardInterrupt, Interrupted):
        client.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        print(cli.INTERRUPTED, file=sys.stderr)
        return 130
    pool.shutdown(wait=True)
    bar.close()
    failed_text = f", {len(failures)} failed ({_names(failures)})" if failures else ""
    print(f"polyhaven: {counts['downloaded']} downloaded ({human_bytes(got_bytes)}), {counts['present']} already "
          f"verified{skipped_text}{failed_text} -> {out}", file=sys.stderr)
    return 1 if failures else 0


def _csv(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except the empty ones (off flags, no filter)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=cli.prog("render.fetch"),
        description="Download equirectangular HDRIs from Poly Haven (CC0) through its public API into a folder for "
        "`python -m render.run --hdris OUT`. Every file is downloaded under OUT/.partial/, checked against the "
        "API's size and MD5 and renamed into place; OUT/_sources.json records each map's source (id, name, authors, "
        "licence, categories, tags, resolution, format, URL, MD5, bytes, download date). Rerun the same command to "
        "resume: verified files are skipped, partial ones continue where they stopped.",
        formatter_class=_Help)
    p.add_argument("source", choices=("polyhaven",), help="the library to fetch from")
    p.add_argument("--out", default="polyhaven", help="folder the maps and _sources.json are written to")
    p.add_argument("--resolution", default="4k", type=str.lower,
                   help="the API's resolution key: 1k, 2k, 4k, 8k, 16k, ... (width in thousands of pixels)")
    p.add_argument("--format", choices=FORMATS, default="exr", help="file format")
    p.add_argument("--fallback-format", action="store_true",
                   help="when an asset has no file in --format at the resolution, take the other format (exr <-> "
                   "hdr); otherwise the asset is skipped and listed in the summary")
    p.add_argument("--fallback-resolution", action="store_true",
                   help="when an asset has no file at --resolution, take its largest lower resolution; "
                   "otherwise the asset is skipped and listed in the summary")
    p.add_argument("--ids", type=_csv, default=[], metavar="ID,ID", help="only these asset ids (comma list)")
    p.add_argument("--categories", type=_csv, default=[], metavar="CAT,CAT",
                   help="only assets in ALL these categories (comma list, e.g. outdoor,night; see "
                   "https://api.polyhaven.com/categories/hdris)")
    p.add_argument("--tags", type=_csv, default=[], metavar="TAG,TAG", help="only assets with ALL these tags")
    p.add_argument("--limit", type=int, default=None, help="at most this many assets (the first by id)")
    p.add_argument("--jobs", type=int, default=4, help="files downloaded at once (be gentle with a free service)")
    p.add_argument("--retries", type=int, default=5, help="retries of a request after a network error")
    p.add_argument("--retry-wait", type=float, default=2.0,
                   help="seconds before the first retry; doubled for each next one (at most 60)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a connection may stay silent")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every file already in place (otherwise a file is trusted when _sources.json records "
                   "its size, mtime and the API's MD5)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be fetched, with the count and total size; download nothing")
    p.add_argument("--api-url", default=DEFAULT_API, help="the API root (a mirror serving the same JSON)")
    cli.add_quiet(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1 or args.retries < 0 or (args.limit is not None and args.limit < 0) or args.timeout <= 0:
        print("error: --jobs and --timeout must be positive, --retries and --limit at least 0", file=sys.stderr)
        return 2
    if _res_key(args.resolution) < 1:
        print(f"error: --resolution {args.resolution}: expected 1k, 2k, 4k, 8k, 16k, ...", file=sys.stderr)
        return 2
    if "://" in args.out:
        print(f"error: --out {args.out}: a local folder is expected (copy it to object storage afterwards)",
              file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
