"""What one manifest row is: the typed records the loader API returns and the Parquet schema they are stored in.

One row per clip. Paths are POSIX paths relative to the dataset root. ``files`` lists every file the clip consists
of (frames, clip.json, LDR frames and masks, aug.json, caption.json) with its size, mtime and SHA-256; it is read
only by verify/diff/build, never by the loader (Parquet reads columns independently).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa

SCHEMA_ID = "hdr-toolkit/manifest/1"
FILE_HASH = "sha256"
SPLITS = ("train", "val", "test")

FILE_TYPE = pa.struct([("path", pa.string()), ("bytes", pa.int64()), ("mtime_ns", pa.int64()),
                       ("sha256", pa.string())])
AUG_TYPE = pa.struct([
    ("aug_id", pa.string()), ("rel", pa.string()), ("preset", pa.string()), ("kind", pa.string()),
    ("frames", pa.list_(pa.string())), ("over", pa.list_(pa.string())), ("under", pa.list_(pa.string())),
    ("params", pa.string()),  # JSON
])

ARROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("hdri_id", pa.string()), ("hdri_sha256", pa.string()), ("clip_id", pa.string()),
    ("program", pa.string()), ("split", pa.string()), ("n_frames", pa.int32()), ("width", pa.int32()),
    ("height", pa.int32()), ("rel", pa.string()), ("frames", pa.list_(pa.string())), ("augs", pa.list_(AUG_TYPE)),
    ("caption", pa.string()), ("overexposed", pa.string()), ("underexposed", pa.string()),
    ("caption_backend", pa.string()), ("caption_model", pa.string()),
    ("clip_hash", pa.string()), ("n_files", pa.int32()), ("bytes", pa.int64()),
    ("dr_stops", pa.float64()), ("radiance_max", pa.float64()), ("radiance_mean", pa.float64()),
    ("radiance_p50", pa.float64()), ("radiance_p99", pa.float64()), ("frac_above_1", pa.float64()),
    ("render_settings", pa.string()),  # JSON of clip.json "settings"
    # the map's source record (clip.json hdri.source, from render.fetch's _sources.json); null when it has none
    ("hdri_source", pa.string()), ("hdri_source_id", pa.string()), ("hdri_license", pa.string()),
    ("hdri_authors", pa.string()),  # JSON: {name: credit} (Poly Haven) or [names]
    ("hdri_categories", pa.list_(pa.string())), ("hdri_tags", pa.list_(pa.string())),
    ("hdri_category", pa.string()),  # the primary category (primary_category), what --stratify category uses
    ("hdri_page", pa.string()),
    ("files", pa.list_(FILE_TYPE)),
])

# columns the loader needs (everything but the per-file table)
RECORD_COLUMNS = [n for n in ARROW_SCHEMA.names if n != "files"]
SOURCE_COLUMNS = ("hdri_source", "hdri_source_id", "hdri_license", "hdri_authors", "hdri_categories", "hdri_tags",
                  "hdri_category", "hdri_page")  # absent in manifests written before them: read as null

# primary category: the first of these that a map's categories contain, else its first category, else null. Night
# and studio come first because they are the rare lighting regimes (most night and studio maps are also tagged
# outdoor or indoor); then indoor before outdoor.
CATEGORY_PRIORITY = ("night", "studio", "indoor", "outdoor")


def primary_category(categories) -> str | None:
    """The one category a map is stratified by (CATEGORY_PRIORITY, else the first listed, else None)."""
    cats = [c for c in categories or () if isinstance(c, str) and c]
    lower = {c.lower(): c for c in reversed(cats)}
    for c in CATEGORY_PRIORITY:
        if c in lower:
            return lower[c]
    return cats[0] if cats else None


def source_name(rec: dict) -> str | None:
    """A short name of where a map comes from: the record's ``source``, else the domain of its asset page or
    download URL without the top-level part (``https://polyhaven.com/a/x`` -> ``polyhaven``)."""
    if isinstance(rec.get("source"), str):
        return rec["source"]
    for key in ("page", "url"):
        host = urlsplit(rec.get(key) or "").hostname or ""
        parts = [p for p in host.split(".") if p]
        if len(parts) >= 2:
            return parts[-2]
    return None


def source_columns(rec: dict | None) -> dict:
    """The manifest's hdri_* source columns from a clip.json ``hdri.source`` record (all null without one)."""
    if not rec:
        return {c: None for c in SOURCE_COLUMNS}
    authors = rec.get("authors")
    return {"hdri_source": source_name(rec), "hdri_source_id": rec.get("id"), "hdri_license": rec.get("license"),
            "hdri_authors": json.dumps(authors, sort_keys=True) if authors is not None else None,
            "hdri_categories": list(rec.get("categories") or []), "hdri_tags": list(rec.get("tags") or []),
            "hdri_category": primary_category(rec.get("categories")), "hdri_page": rec.get("page")}


@dataclass(frozen=True)
class AugRecord:
    aug_id: str
    rel: str  # <hdri>/<clip>/ldr/<aug_id>
    preset: str
    kind: str  # "single" | "alt2" | "alt3"
    frames: list = field(default_factory=list)  # LDR PNGs, relative to the root, in order
    over: list = field(default_factory=list)
    under: list = field(default_factory=list)
    params: dict = field(default_factory=dict)  # aug.json "params" (+ "alternating" for alt kinds)


@dataclass(frozen=True)
class ClipRecord:
    key: str  # "<hdri_id>/<clip_id>"
    hdri_id: str
    hdri_sha256: str
    clip_id: str
    program: str
    split: str
    n_frames: int
    width: int
    height: int
    rel: str
    frames: list
    augs: list
    caption: str | None
    overexposed: str | None
    underexposed: str | None
    clip_hash: str
    # extra (not in the contract, handy for reports): size, dynamic range, settings
    bytes: int = 0
    dr_stops: float | None = None
    caption_backend: str | None = None
    # the map's source (SOURCE_COLUMNS); None / empty for maps without a record and for older manifests
    hdri_source: str | None = None
    hdri_source_id: str | None = None
    hdri_license: str | None = None
    hdri_authors: dict | list | None = None  # parsed from the JSON column
    hdri_categories: list = field(default_factory=list)
    hdri_tags: list = field(default_factory=list)
    hdri_category: str | None = None
    hdri_page: str | None = None

    def aug(self, kind: str = "single", preset: str | None = None) -> list:
        """The augmentations of one kind (and preset, if given), sorted by aug_id."""
        return [a for a in self.augs if a.kind == kind and (preset is None or a.preset == preset)]


def record_from_row(row: dict) -> ClipRecord:
    augs = [AugRecord(aug_id=a["aug_id"], rel=a["rel"], preset=a["preset"], kind=a["kind"], frames=a["frames"],
                      over=a["over"], under=a["under"], params=json.loads(a["params"] or "{}"))
            for a in row["augs"] or []]
    return ClipRecord(key=row["key"], hdri_id=row["hdri_id"], hdri_sha256=row["hdri_sha256"], clip_id=row["clip_id"],
                      program=row["program"], split=row["split"], n_frames=int(row["n_frames"]),
                      width=int(row["width"]), height=int(row["height"]), rel=row["rel"], frames=row["frames"],
                      augs=augs, caption=row["caption"], overexposed=row["overexposed"],
                      underexposed=row["underexposed"], clip_hash=row["clip_hash"], bytes=int(row["bytes"]),
                      dr_stops=row["dr_stops"], caption_backend=row["caption_backend"],
                      hdri_source=row.get("hdri_source"), hdri_source_id=row.get("hdri_source_id"),
                      hdri_license=row.get("hdri_license"),
                      hdri_authors=json.loads(row["hdri_authors"]) if row.get("hdri_authors") else None,
                      hdri_categories=row.get("hdri_categories") or [], hdri_tags=row.get("hdri_tags") or [],
                      hdri_category=row.get("hdri_category"), hdri_page=row.get("hdri_page"))
