"""One storage layer for every stage: local paths, shared filesystems and object stores (``s3://``, ``gs://``).

Built on fsspec (see README, "Storage"). Everything a stage writes goes through :meth:`Store.publish` /
:meth:`Store.write_bytes`, which are atomic: on a filesystem the file is written beside its destination under a
temporary name and renamed; on an object store it is a single PUT, so a reader never sees a half-written object
under its final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_DIR = ".tmp"  # scratch inside a local root (same device, so publishing is a rename); scanners skip dot-dirs


def human_bytes(n: float) -> str:
    """A byte count for people: "512 B", "1.5 MB", "4.5 TB" (SI units, 1000-based, as disks and clouds count)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def sha256_file(src, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a local path or an open binary file object, read in chunks (hashlib releases the GIL).
    The one file hash of the toolkit: manifests, HDRI records and run records all use it."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb", buffering=0) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    if hasattr(src, "readinto"):
        return hashlib.file_digest(src, "sha256").hexdigest()
    h = hashlib.sha256()
    for block in iter(lambda: src.read(chunk), b""):
        h.update(block)
    return h.hexdigest()


def etag_of(info: dict) -> str | None:
    """An object's ETag from an fsspec ``info``/``ls(detail=True)`` entry (S3: ``ETag``, GCS: ``etag``), unquoted;
    None where the store has none (local files)."""
    tag = info.get("ETag") or info.get("etag") or info.get("Etag")
    return str(tag).strip('"') or None if tag else None


def recorded_matches(record: dict | None, size: int, mtime_ns: int = 0, etag: str | None = None) -> bool:
    """Whether a file's record (:meth:`Store.publish_recorded`) still describes the file a listing shows: the size,
    and the mtime or ETag where both the record and the listing have one. A file rewritten in place with the same
    size on a store that reports neither is not detected here (``manifests verify`` re-reads everything)."""
    if not record or not record.get("sha256") or record.get("bytes") != size:
        return False
    if record.get("mtime_ns") and mtime_ns and record["mtime_ns"] != mtime_ns:
        return False
    if record.get("etag") and etag and record["etag"] != etag:
        return False
    return True


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside local ``dest`` to write to; renamed onto ``dest`` when the block ends without an
    error, removed otherwise. For writers that want a file name (``torch.save``, safetensors, OpenEXR)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh temporary folder beside local ``dest`` to fill; it replaces ``dest`` (an existing folder is removed
    first) when the block ends without an error and is removed otherwise. ``tmp`` fixes its name (several processes
    writing into one folder); a leftover of that name is cleared first."""
    dest = Path(dest)
    tmp = Path(tmp) if tmp is not None else dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to local ``dest`` atomically (temp file beside it, fsync, rename)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj, indent: int | None = 1) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=indent) + "\n")


class UnsafePathError(ValueError):
    """A relative path that would leave the store's root."""


def check_rel(rel: str) -> str:
    """Validate a path relative to a store root: no absolute paths, no ``..``, no empty parts."""
    rel = str(rel).replace("\\", "/")
    if not rel or rel.startswith("/") or "://" in rel or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"{rel!r}: absolute paths are not allowed here, only paths relative to the root")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{rel!r}: path components '', '.' and '..' are not allowed")
    return rel


class Store:
    """A root directory or prefix, addressed by relative POSIX paths."""

    def __init__(self, url: str | os.PathLike):
        self.url = str(url)
        protocol = fsspec.core.split_protocol(self.url)[0]
        # Object stores: no listings cache. Other processes (Ray workers, other nodes) publish into the same prefix
        # while this one runs, and a cached listing would hide their clips from resume, caption or manifests.
        opts = {} if protocol in (None, "file", "local") else {"use_listings_cache": False}
        self.fs, root = fsspec.core.url_to_fs(self.url, **opts)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            root = str(Path(root).resolve())
        self.root = root.rstrip("/") or "/"
        cat = getattr(self.fs, "_cat_file", None)  # s3fs: max_concurrency=1 reads in one GET without a HEAD
        self._one_get = {"max_concurrency": 1} if cat and "max_concurrency" in inspect.signature(cat).parameters \
            else {}

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # paths ---------------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (for fsspec calls)."""
        return self.root if not rel else posixpath.join(self.root, check_rel(rel))

    def uri(self, rel: str = "") -> str:
        """A URL of ``rel`` to record in metadata (a plain path for local stores)."""
        p = self.path(rel)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def rel(self, path: str) -> str:
        """Inverse of :meth:`path`. A path below the root (what this store's listings return) is cut with no system
        call; anything else is resolved (local) and made relative as before."""
        path = str(path) if self.is_local else self.fs._strip_protocol(path)
        if path.rstrip("/") == self.root.rstrip("/"):
            return "."
        prefix = self.root if self.root.endswith("/") else self.root + "/"
        if path.startswith(prefix) and "/." not in path[len(prefix) - 1:] and "//" not in path[len(prefix) - 1:]:
            return path[len(prefix):].rstrip("/") or "."
        if self.is_local:
            path = str(Path(path).resolve())
        return posixpath.relpath(path, self.root)

    def local_path(self, rel: str = "") -> Path:
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.path(rel))

    # reading ---------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """The whole file. On an object store one GET (s3fs asks for the size with a HEAD first unless it is told
        to read in one request)."""
        p = self.path(rel)
        if self.is_local:
            with open(p, "rb") as f:
                return f.read()
        return self.fs.cat_file(p, **self._one_get)

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    ONE_GET_MAX = 64 << 20  # sha256(size=...): objects up to this size are read in one GET (held in memory)

    def sha256(self, rel: str, size: int | None = None) -> str:
        """SHA-256 of a stored file (streamed; unbuffered reads on a local store). ``size``: the size a listing gave;
        on an object store a file up to :attr:`ONE_GET_MAX` is then read with one GET (a file object sends a HEAD
        first), larger ones are streamed."""
        if self.is_local:
            return sha256_file(self.path(rel))
        if size is not None and size <= self.ONE_GET_MAX:
            return hashlib.sha256(self.read_bytes(rel)).hexdigest()
        with self.open(rel) as f:
            return sha256_file(f)

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob (``*/*/clip.json``); works the same on object stores."""
        hits = self.fs.glob(self.path() + "/" + pattern)
        return sorted(self.rel(h) for h in hits)

    def list_tree(self, rel: str = "") -> dict[str, dict]:
        """Every file below ``rel`` (recursively) -> its listing entry (``size``, and ``ETag``/``LastModified`` or
        ``mtime`` as the filesystem reports them), keyed by path relative to ``rel``; dot-dirs skipped. On an object
        store this is one paginated LIST of the prefix (1,000 keys per request), not one listing per folder."""
        base = self.path(rel) if rel else self.path()
        try:
            hits = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        cut = len(self.rel(base)) + 1 if rel else 0
        out = {}
        for p, info in hits.items():
            r = self.rel(p)[cut:]
            if not r or p.endswith("/") or info.get("type") == "directory":
                continue
            if not any(part.startswith(".") for part in r.split("/")):
                out[r] = info
        return out

    def find(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> list[str]:
        """Every file below ``rel`` (recursively), optionally filtered by lower-case suffix; dot-dirs skipped."""
        base = self.path(rel) if rel else self.path()
        if not self.fs.isdir(base):
            return []
        out = []
        for p in self.fs.find(base):
            r = self.rel(p)
            if any(part.startswith(".") for part in r.split("/")):
                continue
            if not suffixes or r.lower().endswith(suffixes):
                out.append(r)
        return sorted(out)

    @contextlib.contextmanager
    def local_copy(self, rel: str, scratch: str | os.PathLike) -> Iterator[Path]:
        """A local file with the content of ``rel``: the file itself on a local store, a download otherwise."""
        if self.is_local:
            yield Path(self.path(rel))
            return
        dst = Path(scratch) / f"dl-{uuid.uuid4().hex}{posixpath.splitext(rel)[1]}"
        self.fs.get_file(self.path(rel), str(dst))
        try:
            yield dst
        finally:
            dst.unlink(missing_ok=True)

    # writing (atomic) --------------------------------------------------------------------------------
    def scratch_dir(self, prefix: str) -> Path:
        """A private local directory for work in progress. For local roots it lives under ``ROOT/.tmp`` so that
        :meth:`publish` is a rename; for object stores it is in the system temp dir."""
        if self.is_local:
            base = Path(self.path()) / TMP_DIR
            base.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        return Path(tempfile.mkdtemp(prefix=prefix))

    def publish(self, local_file: str | os.PathLike, rel: str) -> int:
        """Move a finished local file to ``rel`` atomically; returns its size in bytes."""
        local_file = Path(local_file)
        size = local_file.stat().st_size
        dest = self.path(rel)
        if self.is_local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(local_file, dest)
            except OSError:  # another device: copy beside the destination, then rename
                tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
                shutil.copyfile(local_file, tmp)
                os.replace(tmp, dest)
                local_file.unlink()
        else:
            self.fs.put_file(str(local_file), dest)  # one PUT (or a multipart upload that appears only when complete)
            local_file.unlink()
        return size

    def publish_recorded(self, local_file: str | os.PathLike, rel: str) -> dict:
        """:meth:`publish`, and the file's record for the dataset's JSON records (``manifests build`` trusts it
        instead of re-reading the file, see :func:`recorded_matches`): ``{"bytes", "sha256"}``, plus ``mtime_ns``
        on a filesystem (a rename keeps it) or the object's ``etag`` where the store reports one (one HEAD)."""
        digest = sha256_file(local_file)  # just written: read back from the page cache
        size = self.publish(local_file, rel)
        rec = {"bytes": size, "sha256": digest}
        if self.is_local:
            rec["mtime_ns"] = os.stat(self.path(rel)).st_mtime_ns
        else:
            etag = etag_of(self.fs.info(self.path(rel)))
            if etag:
                rec["etag"] = etag
        return rec

    def write_bytes(self, rel: str, data: bytes) -> None:
        dest = self.path(rel)
        if self.is_local:
            atomic_write_bytes(dest, data)
        else:
            self.fs.pipe_file(dest, data)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)
