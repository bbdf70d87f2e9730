"""Where versions live, how they are named, and the path-safety rules (a manifest is input, never trusted).

    <root>/manifests/v0001.parquet   one row per clip (see manifests.records)
    <root>/manifests/v0001.json      the version record, published last: a version exists once its record does
"""
from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.compute as pc

from hdr.storage import Store, UnsafePathError, check_rel

MANIFEST_DIR = "manifests"
EXT = "parquet"
_VERSION = re.compile(r"^v?(\d{1,6})$")


class ManifestError(ValueError):
    """A manifest or version that cannot be used (missing, incomplete, tampered, malformed); one-line message."""


def version_name(v: str | int) -> str:
    """"3", 3, "v3", "v0003", "v0003.parquet" -> "v0003"."""
    s = str(v).strip()
    s = s[: -len("." + EXT)] if s.endswith("." + EXT) else s
    s = s[: -len(".json")] if s.endswith(".json") else s
    m = _VERSION.match(s)
    if not m:
        raise ManifestError(f"{v!r}: not a version name (expected e.g. v3 or v0003)")
    return f"v{int(m.group(1)):04d}"


def version_files(version: str) -> tuple[str, str]:
    v = version_name(version)
    return f"{MANIFEST_DIR}/{v}.{EXT}", f"{MANIFEST_DIR}/{v}.json"


def list_versions(store: Store) -> list[str]:
    """Published versions (those with a record), oldest first."""
    out = []
    for rel in store.glob(f"{MANIFEST_DIR}/v*.json"):
        try:
            out.append(version_name(rel.rsplit("/", 1)[1]))
        except ManifestError:
            continue
    return sorted(set(out))


# path safety -----------------------------------------------------------------------------------------------------
_BAD = r"(^/)|(^[A-Za-z]:)|(://)|(\\)|(^$)|(^|/)\.\.?(/|$)|(//)|(/$)"


def check_paths(paths: pa.Array | pa.ChunkedArray, what: str) -> None:
    """Reject (with one line naming the path) any absolute path, '..' or '.' component, drive letter or URL in a
    column of relative paths; vectorised (one regex pass over every path of a 5400-clip manifest)."""
    if len(paths) == 0:
        return
    bad = pc.match_substring_regex(paths, _BAD)
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        idx = pc.index(bad, True).as_py()
        p = paths[idx].as_py()
        try:
            check_rel("" if p is None else p)
        except UnsafePathError as e:
            raise UnsafePathError(f"{what}: {e}") from None
        raise UnsafePathError(f"{what}: {p!r}: not a safe path relative to the root")


def check_name(name: str, where: str) -> str:
    """A plain file name (no '/') as listed in clip.json / aug.json."""
    if not isinstance(name, str) or "/" in name or "\\" in name:
        raise UnsafePathError(f"{where}: {name!r}: file names there must be plain names inside the folder")
    check_rel(name)
    return name


def real_root(store: Store) -> str | None:
    return os.path.realpath(store.path()) if store.is_local else None


def check_inside(store: Store, rel: str, root_real: str | None = None) -> str:
    """The filesystem path of ``rel``; on a local root, refuse anything (a symlinked file or folder on the way)
    that resolves outside the root."""
    path = store.path(check_rel(rel))
    if store.is_local:
        root_real = root_real or real_root(store)
        resolved = os.path.realpath(path)
        if not (resolved == root_real or resolved.startswith(root_real.rstrip(os.sep) + os.sep)):
            raise UnsafePathError(f"{rel}: resolves to {resolved}, outside the dataset root {root_real} "
                                  "(symlinks must stay inside the root)")
    return path
