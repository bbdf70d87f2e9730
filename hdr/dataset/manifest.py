"""The loader API: ``open_manifest(path_or_url)`` or ``open_manifest(root, "v3")`` -> :class:`Manifest`.

A manifest is input: opening one checks that its Parquet file is the one its record describes (SHA-256), and that
every path in it is relative and stays inside the root (no absolute paths, no '..'); reading a file through
:meth:`Manifest.local_file` also refuses symlinks that resolve outside a local root.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import weakref

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hdr.storage import Store
from hdr.dataset.layout import (MANIFEST_DIR, ManifestError, check_inside, check_paths, list_versions, real_root,
                             version_files, version_name)
from hdr.dataset.rows import RECORD_COLUMNS, SCHEMA_ID, SOURCE_COLUMNS, SPLITS, ClipRecord, record_from_row


def _split_url(path: str) -> tuple[str, str]:
    """".../ROOT/manifests/v0003.parquet" -> (".../ROOT", "v0003")."""
    p = str(path).rstrip("/")
    head, name = posixpath.split(p.replace("\\", "/")) if "://" in p else posixpath.split(p)
    parent, mdir = posixpath.split(head)
    if mdir != MANIFEST_DIR:
        raise ManifestError(f"{path}: a manifest version lives in <root>/{MANIFEST_DIR}/vNNNN.parquet")
    return parent or ".", version_name(name)


class Manifest:
    def __init__(self, root: str, version: str, verify_file: bool = True):
        self.store = Store(root)
        self.root = self.store.uri()
        self.version = version_name(version)
        prel, jrel = version_files(self.version)
        self.path = self.store.uri(prel)
        if not self.store.exists(jrel):
            if self.store.exists(prel):
                raise ManifestError(f"{self.store.uri(jrel)} is missing: {self.version} is incomplete (its record "
                                    "is published last)")
            have = ", ".join(list_versions(self.store)) or "none"
            raise ManifestError(f"{self.path}: no such manifest version (versions in {self.root}: {have})")
        try:
            self.meta = self.store.read_json(jrel)
        except ValueError as e:
            raise ManifestError(f"{self.store.uri(jrel)}: not valid JSON ({e})") from None
        if self.meta.get("schema") != SCHEMA_ID:
            raise ManifestError(f"{self.store.uri(jrel)}: schema {self.meta.get('schema')!r}, expected {SCHEMA_ID}")
        # pyarrow 22 can abort the interpreter at exit after reading Parquet from Python file objects or
        # in-memory buffers; it is stable reading a native local path, so remote versions are copied locally first.
        self._local = self._local_copy(prel)
        with open(self._local, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if verify_file and digest != self.meta.get("manifest_sha256"):
            raise ManifestError(f"{self.path}: its SHA-256 differs from the one in {posixpath.basename(jrel)} "
                                "(the version was modified after it was published)")
        try:  # columns added since (SOURCE_COLUMNS) are absent from older versions: they read as null
            names = set(pq.read_schema(self._local).names)
            self._table = pq.read_table(self._local, columns=[c for c in RECORD_COLUMNS
                                                              if c in names or c not in SOURCE_COLUMNS])
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise ManifestError(f"{self.path}: not a readable manifest ({e})") from None
        self._check_paths(self._table)
        self._records: list[ClipRecord] | None = None
        self._root_real = real_root(self.store)

    def _local_copy(self, rel: str) -> str:
        if self.store.is_local:
            return self.store.path(rel)
        tmp = tempfile.mkdtemp(prefix="manifest-")
        weakref.finalize(self, shutil.rmtree, tmp, True)
        dst = os.path.join(tmp, posixpath.basename(rel))
        self.store.fs.get_file(self.store.path(rel), dst)
        return dst

    # ------------------------------------------------------------------------------------------------------------
    @property
    def root_hash(self) -> str:
        return self.meta["root_hash"]

    @property
    def record_dict(self) -> dict:
        return dict(self.meta)

    def __repr__(self) -> str:
        return f"Manifest({self.path!r}, clips={self._table.num_rows}, root_hash={self.root_hash[:12]}...)"

    def __len__(self) -> int:
        return self._table.num_rows

    def _check_paths(self, t: pa.Table) -> None:
        where = self.path
        check_paths(t["rel"], f"{where} (clip folder)")
        check_paths(pc.list_flatten(t["frames"]), f"{where} (HDR frame)")
        augs = pc.list_flatten(t["augs"])
        if len(augs):
            check_paths(pc.struct_field(augs, "rel"), f"{where} (augmentation folder)")
            for col in ("frames", "over", "under"):
                check_paths(pc.list_flatten(pc.struct_field(augs, col)), f"{where} (augmentation {col})")
        bad = pc.invert(pc.is_in(t["split"], pa.array(SPLITS)))
        if pc.any(pc.fill_null(bad, True)).as_py():
            raise ManifestError(f"{where}: unknown split value(s); expected one of {SPLITS}")

    def clips(self, split: str | None = None) -> list[ClipRecord]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {SPLITS} or None")
        if self._records is None:
            cols = {name: self._table[name].to_pylist() for name in self._table.column_names}  # column-wise: fast
            self._records = [record_from_row(dict(zip(cols, vals))) for vals in zip(*cols.values())]
        return [r for r in self._records if split is None or r.split == split]

    def clip(self, key: str) -> ClipRecord:
        for r in self.clips():
            if r.key == key:
                return r
        raise KeyError(f"{key}: not in {self.version}")

    def files_table(self) -> pa.Table:
        """key, split and the per-file table (path, bytes, mtime_ns, sha256) of every clip."""
        t = pq.read_table(self._local, columns=["key", "split", "clip_hash", "files"])
        check_paths(pc.struct_field(pc.list_flatten(t["files"]), "path"), f"{self.path} (file)")
        return t

    def local_file(self, rel: str) -> str:
        """Filesystem path of a file of the dataset (local roots); refuses symlinks leaving the root."""
        return check_inside(self.store, rel, self._root_real)

    def read_bytes(self, rel: str) -> bytes:
        if self.store.is_local:
            with open(self.local_file(rel), "rb") as f:
                return f.read()
        return self.store.read_bytes(rel)

    def record(self, run_dir) -> dict:
        """Write ``run_dir/manifest.json`` naming this version (trainers and evaluation call this)."""
        rec = {"manifest": self.path, "version": self.version, "root_hash": self.root_hash, "root": self.root}
        Store(run_dir).write_json("manifest.json", rec)
        return rec


def open_manifest(path_or_root, version: str | None = None, verify_file: bool = True) -> Manifest:
    """``open_manifest("ROOT/manifests/v0003.parquet")`` or ``open_manifest(ROOT, "v3")`` (``"latest"`` works)."""
    if version is None:
        root, version = _split_url(str(path_or_root))
    else:
        root = str(path_or_root)
        if version == "latest":
            vs = list_versions(Store(root))
            if not vs:
                raise ManifestError(f"{root}: no manifest versions yet (run python -m manifests build --root ...)")
            version = vs[-1]
    return Manifest(root, version, verify_file=verify_file)
