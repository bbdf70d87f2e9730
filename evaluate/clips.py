"""Which clips to evaluate, and reading their frames: a ground-truth tree (``--reference``) or a manifest split
(``--manifest``), paired with a predictions tree laid out like the dataset::

    <predictions>/<hdri_id>/<clip_id>/frame_0000.exr ...

Frames are paired by file name. A clip is evaluated on the ground-truth frames its prediction has (a model that
predicts a 33-frame window of an 81-frame clip is scored on those 33 frames; the counts are recorded); a clip
with no predicted frame at all is reported as missing.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np

from hdr.io import HdrImageError, read_image
from hdr.storage import Store
from hdr.dataset.layout import HDR_FRAME_GLOB, is_hdri_name, list_files

FRAME_GLOB = f"*/*/{HDR_FRAME_GLOB}"


@dataclass(frozen=True)
class ClipJob:
    """One ground-truth clip: ``key`` "<hdri_id>/<clip_id>", its folder ``rel`` (the same relative path in the
    predictions tree) and its frames (paths relative to the ground-truth root, in order)."""

    key: str
    rel: str
    frames: tuple[str, ...]


@dataclass(frozen=True)
class ClipPair:
    job: ClipJob
    gt_frames: tuple[str, ...]  # relative to the ground-truth root
    pred_frames: tuple[str, ...]  # relative to the predictions root, same order
    n_gt_frames: int


def clips_from_reference(store: Store) -> list[ClipJob]:
    """Every ``<hdri_id>/<clip_id>`` folder with ``frame_*.exr`` files (top-level names starting with "." or "_" and
    the ``manifests`` folder are not HDRIs)."""
    by_clip: dict[str, list[str]] = {}
    for rel in store.glob(FRAME_GLOB):
        hdri_id, clip_id, _ = rel.split("/")
        if not is_hdri_name(hdri_id):
            continue
        by_clip.setdefault(f"{hdri_id}/{clip_id}", []).append(rel)
    return [ClipJob(key, key, tuple(sorted(frames))) for key, frames in sorted(by_clip.items())]


def clips_from_manifest(manifest, split: str | None) -> list[ClipJob]:
    """The clips of a manifest split (``manifests`` loader API: ``m.clips(split)`` -> ClipRecord)."""
    return [ClipJob(r.key, r.rel, tuple(r.frames)) for r in manifest.clips(split)]


def pair_predictions(jobs: list[ClipJob], pred: Store) -> tuple[list[ClipPair], list[str]]:
    """(clips with at least one predicted frame, keys of clips with none)."""
    pairs, missing = [], []
    for job in jobs:
        have = list_files(pred, job.rel)
        gt, pr = [], []
        for f in job.frames:
            name = posixpath.basename(f)
            if name in have:
                gt.append(f)
                pr.append(f"{job.rel}/{name}")
        if pr:
            pairs.append(ClipPair(job, tuple(gt), tuple(pr), len(job.frames)))
        else:
            missing.append(job.key)
    return pairs, missing


def read_clip(store: Store, rels, scratch) -> np.ndarray:
    """``(T, H, W, 3)`` float32 radiance of frames on a store (downloaded to ``scratch`` when remote). Raises
    :class:`hdr.io.HdrImageError` (message starting with the file) for unreadable files or a size change."""
    frames = []
    for rel in rels:
        with store.local_copy(rel, scratch) as path:
            img = read_image(path, name=store.uri(rel))
        if frames and img.shape != frames[0].shape:
            raise HdrImageError(store.uri(rel), f"frame size {img.shape[1]}x{img.shape[0]} differs from the clip's "
                                f"first frame ({frames[0].shape[1]}x{frames[0].shape[0]})")
        frames.append(img)
    return np.stack(frames)
