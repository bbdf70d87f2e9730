"""``export vN --format diffhdr-csv|hf|webdataset``: a version in the layouts other tools read.

* ``diffhdr-csv``: the CSVs the public DiffHDR trainer reads (``diffsynth/data/hdr_video.py``): per split
  ``metadata/metadata_synthetic_<split>.csv`` with one column ``video`` = ``<root>/<hdri_id>/<clip_id>/frame_0000.exr``
  (the loader opens ``frame_%04d.exr`` beside it, counting from the number in that name), and the prompt CSVs
  ``prompt_<split>.csv``, ``prompt_over_<split>.csv``, ``prompt_under_<split>.csv`` with columns ``video``,
  ``prompt`` (the loader keys prompts by ``<hdri_id>_<clip_id>`` taken from the path). The over/under prompts are the
  caption parts ``[overexposed: <o>];`` and ``[underexposed: <u>]``, which the loader joins with a space into the
  caption format of DiffHDR appendix E; clips without a caption get an empty prompt.
* ``hf``: a Hugging Face dataset folder: ``README.md`` (dataset card with YAML ``configs`` for the configs ``clips``
  and ``augmentations`` and their splits) and ``data/<config>/<split>.parquet``; paths are relative to the dataset
  root named in the card.
* ``webdataset``: tar shards ``<split>-%06d.tar`` of ~``shard_size`` (webdataset's ShardWriter), one clip per
  sample: ``clip.json``, every ``frame_NNNN.exr``, the LDR frames/masks/aug.json of one stored augmentation kind,
  ``caption.json`` if any, and ``manifest.json`` (the clip's manifest row, its version and root hash).

Every export ends with ``export.json`` (version, root hash, format, files), written last.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import posixpath
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hdr.dataset.layout import AUG_JSON, CAPTION_JSON, CLIP_JSON
from hdr.dataset.manifest import Manifest
from hdr.storage import Store
from hdr.dataset.rows import SPLITS

FORMATS = ("diffhdr-csv", "hf", "webdataset")


def parse_bytes(s) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)i?[bB]?\s*", str(s))
    if not m:
        raise ValueError(f"{s!r}: not a size (e.g. 1GB, 500MB)")
    return int(float(m.group(1)) * 1000 ** " KMGT".index((m.group(2) or " ").upper()))


def _splits(m: Manifest) -> dict[str, list]:
    out = {s: m.clips(s) for s in SPLITS}
    return {s: c for s, c in out.items() if c}


def _csv(rows: list[list], header: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def export(m: Manifest, fmt: str, out: str | None = None, shard_size="1GB", aug_kind: str = "single",
           overwrite: bool = False, progress: bool = True) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
    out = out or m.store.uri(f"_exports/{m.version}/{fmt}")
    dst = Store(out)
    if dst.exists("export.json") or (dst.is_local and Path(dst.path()).is_dir() and any(Path(dst.path()).iterdir())):
        if not overwrite:
            raise FileExistsError(f"{dst.uri()} exists and is not empty; pass --overwrite to replace it")
        dst.remove("")
        dst = Store(out)
    stage = Path(tempfile.mkdtemp(prefix=f"export-{fmt}-"))
    written: list[str] = []

    def put(rel: str, data: bytes) -> None:
        dst.write_bytes(rel, data)
        written.append(rel)

    notes = []
    try:
        if fmt == "diffhdr-csv":
            for split, clips in _splits(m).items():
                video = [m.store.uri(c.frames[0]) for c in clips]
                put(f"metadata/metadata_synthetic_{split}.csv", _csv([[v] for v in video], ["video"]))
                put(f"metadata/prompt_{split}.csv",
                    _csv([[v, c.caption or ""] for v, c in zip(video, clips)], ["video", "prompt"]))
                put(f"metadata/prompt_over_{split}.csv",
                    _csv([[v, f"[overexposed: {c.overexposed}];" if c.overexposed is not None else ""]
                          for v, c in zip(video, clips)], ["video", "prompt"]))
                put(f"metadata/prompt_under_{split}.csv",
                    _csv([[v, f"[underexposed: {c.underexposed}]" if c.underexposed is not None else ""]
                          for v, c in zip(video, clips)], ["video", "prompt"]))
            short = [c for c in m.clips() if c.n_frames < 81]
            if short:
                notes.append(f"{len(short)} clips have fewer than 81 frames; the public loader reads a window "
                             "from frames 0..80 and needs 81")
            bad = [c.key for c in m.clips() if any(ch in c.key for ch in ",\n\"")]
            if bad:
                notes.append(f"{len(bad)} keys contain CSV special characters (quoted)")
        elif fmt == "hf":
            _export_hf(m, put, stage)
        else:
            _export_wds(m, dst, stage, parse_bytes(shard_size), aug_kind, written, progress)
        record = {"schema": "hdr-toolkit/manifest-export/1", "format": fmt, "manifest": m.path,
                  "version": m.version, "root_hash": m.root_hash, "root": m.root,
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "files": sorted(written), "notes": notes}
        dst.write_json("export.json", record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return dst.uri()


def _export_hf(m: Manifest, put, stage: Path) -> None:
    splits = _splits(m)
    for split, clips in splits.items():
        rows = [{"key": c.key, "hdri_id": c.hdri_id, "hdri_sha256": c.hdri_sha256, "clip_id": c.clip_id,
                 "program": c.program, "split": c.split, "n_frames": c.n_frames, "width": c.width,
                 "height": c.height, "frames": c.frames, "caption": c.caption, "overexposed": c.overexposed,
                 "underexposed": c.underexposed, "dr_stops": c.dr_stops, "clip_hash": c.clip_hash,
                 "hdri_source": c.hdri_source, "hdri_source_id": c.hdri_source_id, "hdri_license": c.hdri_license,
                 "hdri_category": c.hdri_category, "hdri_page": c.hdri_page} for c in clips]
        augs = [{"key": c.key, "aug_id": a.aug_id, "kind": a.kind, "preset": a.preset, "frames": a.frames,
                 "over": a.over, "under": a.under, "params": json.dumps(a.params, sort_keys=True)}
                for c in clips for a in c.augs]
        for config, data in (("clips", rows), ("augmentations", augs)):
            tmp = stage / f"{config}-{split}.parquet"
            pq.write_table(pa.Table.from_pylist(data), tmp, compression="zstd")
            put(f"data/{config}/{split}.parquet", tmp.read_bytes())
    rec = m.record_dict
    yaml = ["---", "pretty_name: HDR video toolkit dataset " + m.version, "tags:", "- hdr", "- video",
            "- synthetic", "configs:"]
    for config in ("clips", "augmentations"):
        yaml.append(f"- config_name: {config}")
        if config == "clips":
            yaml.append("  default: true")
        yaml.append("  data_files:")
        for split in splits:
            yaml += [f"  - split: {split}", f"    path: data/{config}/{split}.parquet"]
    yaml.append("---")
    c = rec["counts"]
    body = f"""
# HDR video toolkit dataset, manifest {m.version}

Paired HDR/LDR video clips rendered from equirectangular HDRIs (DiffHDR §3.1). This card describes manifest
`{m.version}` (root hash `{m.root_hash}`), made by `python -m manifests export {m.version} --format hf`.

* {c['hdris']} HDRIs, {c['clips']} clips, {c['frames']} HDR frames (OpenEXR, scene-linear Rec.709), {c['augmentations']}
  LDR augmentations, {c['captions']} captions; splits at HDRI level: {json.dumps(rec['split']['clips'])}.
* Config `clips`: one row per clip; `frames` are paths relative to the dataset root `{m.root}`.
* Config `augmentations`: one row per stored LDR augmentation (8-bit PNG frames, exposure masks, parameters).
* Toolkit {rec['toolkit_version']}, git `{(rec.get('git') or {}).get('commit') or 'unknown'}`.

```python
from datasets import load_dataset
clips = load_dataset("path/to/this/folder", "clips", split="train")
```
"""
    body += _attribution(m.clips())
    put("README.md", ("\n".join(yaml) + "\n" + body).encode("utf-8"))


def _attribution(clips) -> str:
    """The card's attribution: per source of the HDRIs used, their licences and authors (CC0 maps are credited
    too); maps without a source record are counted."""
    maps: dict[str, dict] = {}
    for c in clips:
        maps.setdefault(c.hdri_id, {"source": c.hdri_source, "license": c.hdri_license, "authors": c.hdri_authors})
    by_source: dict[str, list[dict]] = {}
    unknown = 0
    for rec in maps.values():
        if rec["source"] is None:
            unknown += 1
        else:
            by_source.setdefault(rec["source"], []).append(rec)
    lines = ["", "## Attribution", ""]
    def n_maps(n: int) -> str:
        return f"{n} HDRI{'s' if n != 1 else ''}"

    for src, recs in sorted(by_source.items()):
        licences = sorted({r["license"] or "unknown licence" for r in recs})
        authors = sorted({a for r in recs for a in (r["authors"] or ())})
        lines.append(f"* {src}: {n_maps(len(recs))}, licence {', '.join(licences)}; authors: "
                     f"{', '.join(authors) or 'not recorded'}.")
    if unknown:
        lines.append(f"* {n_maps(unknown)} without a source record (rendered without `_sources.json`): check their "
                     "licences before publishing.")
    return "\n".join(lines) + "\n"


def _wds_key(key: str) -> str:
    # webdataset splits a member name at the first "." of its base name: keys must be dot-free
    return re.sub(r"[^A-Za-z0-9_-]", "_", key.replace("/", "__"))


def _export_wds(m: Manifest, dst: Store, stage: Path, maxsize: int, aug_kind: str, written: list, progress: bool):
    import webdataset as wds

    seen = {}
    for c in m.clips():
        k = _wds_key(c.key)
        if k in seen:
            raise ValueError(f"{c.key} and {seen[k]} map to the same webdataset key {k!r}")
        seen[k] = c.key
    for split, clips in _splits(m).items():
        def post(fname: str) -> None:
            rel = posixpath.basename(fname)
            dst.publish(fname, rel)
            written.append(rel)

        sink = wds.ShardWriter(str(stage / f"{split}-%06d.tar"), maxsize=maxsize, maxcount=10**9, verbose=0,
                               post=post, encoder=False)
        try:
            for c in tqdm(clips, unit="clip", desc=f"webdataset {split}", file=sys.stderr, disable=not progress,
                          dynamic_ncols=True):
                sample = {"__key__": _wds_key(c.key)}
                sample[CLIP_JSON] = m.read_bytes(f"{c.rel}/{CLIP_JSON}")
                for rel in c.frames:
                    sample[posixpath.basename(rel)] = m.read_bytes(rel)
                augs = c.aug(aug_kind)
                if augs:
                    a = augs[0]
                    for kind, files in (("ldr", a.frames), ("over", a.over), ("under", a.under)):
                        for t, rel in enumerate(files):
                            sample[f"{kind}_{t:04d}.png"] = m.read_bytes(rel)
                    sample[AUG_JSON] = m.read_bytes(f"{a.rel}/{AUG_JSON}")
                if c.caption is not None:
                    sample[CAPTION_JSON] = m.read_bytes(f"{c.rel}/{CAPTION_JSON}")
                row = {"key": c.key, "version": m.version, "root_hash": m.root_hash, "split": c.split,
                       "clip_hash": c.clip_hash, "aug_id": augs[0].aug_id if augs else None,
                       "caption": c.caption, "overexposed": c.overexposed, "underexposed": c.underexposed}
                sample["manifest.json"] = json.dumps(row).encode()
                sink.write(sample)
        finally:
            sink.close()
