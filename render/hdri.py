"""Finding HDRIs: the input folder (recursively) or the maps that ship inside the ``bpy`` wheel."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from hdr.storage import Store

HDR_SUFFIXES = (".exr", ".hdr")
LDR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif")


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
