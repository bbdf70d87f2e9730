"""The dataset contract: what the stages write and read, in one place (spec: docs/dataset.md).

- :mod:`hdr.dataset.layout`    every path and file name; finished vs partial clips; manifest version names; path safety.
- :mod:`hdr.dataset.records`   typed, versioned records of clip.json, aug.json, caption.json (validated read/write).
- :mod:`hdr.dataset.ldr`       ``make_ldr``: HDR frames + an augmentation -> LDR frames, exposures, masks.
- :mod:`hdr.dataset.rows`      one manifest row per clip (``ClipRecord``/``AugRecord``) and its Parquet schema.
- :mod:`hdr.dataset.manifest`  ``open_manifest``: a published manifest version, checked on open.
- :mod:`hdr.dataset.loader`    the torch ``ClipWindowDataset`` and ``collate_windows`` (torch is imported there only).

Writers live in the stages (render writes clip.json, augment aug.json, caption caption.json, manifests the
versions); every reader goes through here.
"""
from hdr.dataset.layout import ManifestError
from hdr.dataset.manifest import Manifest, open_manifest
from hdr.dataset.records import AugMeta, CaptionMeta, ClipMeta, RecordError
from hdr.dataset.rows import AugRecord, ClipRecord

__all__ = ["open_manifest", "Manifest", "ManifestError", "ClipRecord", "AugRecord", "ClipMeta", "AugMeta",
           "CaptionMeta", "RecordError"]
