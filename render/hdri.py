"""Finding HDRIs: the input folder (recursively) or the maps that ship inside the ``bpy`` wheel; and their source
records (``<hdris root>/_sources.json``, written by ``python -m render.fetch``)."""
from __future__ import annotations

import importlib.util
import json
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hdr.dataset.records import RecordError, check_source
from hdr.storage import Store

HDR_SUFFIXES = (".exr", ".hdr")
LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif")
SOURCES_FILE = "_sources.json"  # {"maps": {file name: source record}, ...} (render.fetch writes it)


@dataclass(frozen=True)
class HdriEntry:
    rel: str  # path relative to the --hdris root
    hdri_id: str  # folder name under the output root


def default_hdri_dir() -> Path | None:
    """Blender's bundled studio-light worlds (8 CC0 PolyHaven maps), found without importing bpy."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.origin:
        return None
    hits = sorted(Path(spec.origin).parent.glob("*/datafiles/studiolights/world"))
    return hits[-1] if hits else None


def make_id(rel: str) -> str:
    """A folder-safe id from a relative path: ``outdoor/sky_4k.exr`` -> ``outdoor__sky_4k``."""
    stem = rel.rsplit(".", 1)[0].replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._") or "hdri"


def discover(store: Store) -> tuple[list[HdriEntry], list[tuple[str, str]]]:
    """Every .exr/.hdr below the root (recursively), with unique ids; plus (file, reason) for image files skipped."""
    files = store.find(suffixes=HDR_SUFFIXES + LDR_SUFFIXES)
    skipped = [(r, "an 8-bit image format, not an HDR map (OpenEXR .exr or Radiance .hdr expected)")
               for r in files if r.lower().endswith(LDR_SUFFIXES)]
    hdr = [r for r in files if r.lower().endswith(HDR_SUFFIXES)]
    ids: dict[str, str] = {}
    entries = []
    for rel in hdr:
        hid = make_id(rel)
        if hid in ids:  # e.g. sky.exr and sky.hdr side by side
            hid = f"{hid}_{rel.rsplit('.', 1)[1].lower()}"
        while hid in ids:
            hid += "_"
        ids[hid] = rel
        entries.append(HdriEntry(rel=rel, hdri_id=hid))
    return entries, skipped


def read_sources(store: Store, entries: list[HdriEntry], warn=None) -> dict[str, dict]:
    """rel -> source record of every entry found in ``<root>/_sources.json`` (keyed by file name: the entry's rel,
    else its base name). No file: {}. Metadata is never fatal: a malformed file, or a record that fails
    :func:`hdr.dataset.records.check_source`, is one warning naming the file, and those maps get no record."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if not store.exists(SOURCES_FILE):
        return {}
    where = store.uri(SOURCES_FILE)
    try:
        maps = json.loads(store.read_bytes(SOURCES_FILE))["maps"]
        if not isinstance(maps, dict):
            raise TypeError("'maps' is not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as e:
        warn(f"warning: {where}: not a sources file (expected JSON with a 'maps' object; {type(e).__name__}: {e}); "
             "the HDRIs are rendered without source records")
        return {}
    out = {}
    for e in entries:
        name = e.rel if e.rel in maps else posixpath.basename(e.rel)
        if name not in maps:
            continue
        try:
            out[e.rel] = check_source(maps[name], f"{where}: maps.{name}")
        except RecordError as err:
            warn(f"warning: {err}; {e.rel} rendered without its source record")
    return out
