"""Versioned, content-hashed dataset manifests: ``python -m manifests build|list|show|diff|verify|export|report``.

This package writes and checks versions; reading one is the dataset contract's job (re-exported here):

    from hdr.dataset import open_manifest          # also: from manifests import open_manifest
    m = open_manifest("ROOT/manifests/v0003.parquet")      # or open_manifest(ROOT, "v3")
    m.clips("train") -> [ClipRecord, ...];  m.record(run_dir)  # writes run_dir/manifest.json

The torch Dataset is :class:`hdr.dataset.loader.ClipWindowDataset`.
"""
from hdr.dataset.layout import ManifestError, list_versions
from hdr.dataset.manifest import Manifest, open_manifest
from hdr.dataset.rows import AugRecord, ClipRecord

__all__ = ["open_manifest", "Manifest", "ManifestError", "ClipRecord", "AugRecord", "list_versions"]
