"""What one manifest row is: the typed records the loader API returns and the Parquet schema they are stored in.

One row per clip. Paths are POSIX paths relative to the dataset root. ``files`` lists every file the clip consists
of (frames, clip.json, LDR frames and masks, aug.json, caption.json) with its size, mtime and SHA-256; it is read
only by verify/diff/build, never by the loader (Parquet reads columns independently).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

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
    ("files", pa.list_(FILE_TYPE)),
])

# columns the loader needs (everything but the per-file table)
RECORD_COLUMNS = [n for n in ARROW_SCHEMA.names if n != "files"]


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
                      dr_stops=row["dr_stops"], caption_backend=row["caption_backend"])
