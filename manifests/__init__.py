"""Versioned, content-hashed dataset manifests; training and evaluation launch from them.

    from manifests import open_manifest
    m = open_manifest("ROOT/manifests/v0003.parquet")      # or open_manifest(ROOT, "v3")
    m.clips("train") -> [ClipRecord, ...];  m.record(run_dir)  # writes run_dir/manifest.json

``python -m manifests build|list|show|diff|verify|export|report --root ROOT`` is the CLI; the torch Dataset is
:class:`manifests.dataset.ClipWindowDataset` (torch is imported only there).
"""
from manifests.manifest import Manifest, open_manifest
from manifests.paths import ManifestError, list_versions
from manifests.records import AugRecord, ClipRecord

__all__ = ["open_manifest", "Manifest", "ManifestError", "ClipRecord", "AugRecord", "list_versions"]
