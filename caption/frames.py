"""What the captioner looks at: K uniformly sampled frames of a clip, Reinhard-tonemapped from the HDR EXRs (DiffHDR
appendix E), and the over/under-exposure masks of the clip's LDR augmentation at the same frames.

The pictures are the tonemapped HDR frames, not the LDR frames: inside a clipped LDR region the LDR frame is flat
white or black, while the tonemapped HDR frame still shows what is there (the sky around the sun, a lamp, a shadowed
wall) -- which is what the caption has to name. The masks say where the LDR video loses it.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field

import cv2
import numpy as np

from hdr.color import REINHARD_KEY, reinhard_display, srgb_oetf
from hdr.dataset import layout
from hdr.dataset.records import AugMeta, ClipMeta, RecordError
from hdr.degrade.masks import exposure_masks_paper
from hdr.io import LdrImageError, decode_ldr, read_image
from hdr.storage import Store

OVER_COLOUR = (255, 0, 255)  # magenta outline: over-exposed in the LDR video
UNDER_COLOUR = (0, 255, 255)  # cyan outline: under-exposed in the LDR video
MASK_MODES = ("contour", "separate", "none")


class ClipInputError(ValueError):
    """A clip cannot be captioned (missing/corrupt files, unknown augmentation); the message names the file."""


@dataclass
class ClipFrames:
    hdri_id: str
    clip_id: str
    indices: list[int]
    hdr: np.ndarray  # (K, H, W, 3) float32 linear radiance
    display: np.ndarray  # (K, H, W, 3) uint8 Reinhard-tonemapped sRGB
    over: np.ndarray  # (K, H, W) float32 in [0, 1], masks of the LDR video
    under: np.ndarray
    aug_id: str | None
    mask_source: str
    tonemap: dict = field(default_factory=dict)
    program: str = ""

    @property
    def key(self) -> str:
        return f"{self.hdri_id}/{self.clip_id}"


def sample_indices(n_frames: int, k: int) -> list[int]:
    """K frame indices spread uniformly over the clip, first and last included (fewer if the clip is shorter)."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    k = max(1, min(int(k), n_frames))
    if k == 1:
        return [n_frames // 2]
    return sorted({int(round(i * (n_frames - 1) / (k - 1))) for i in range(k)})


def list_augs(store: Store, crel: str) -> list[tuple[str, AugMeta]]:
    """(aug_id, record) of the finished augmentations of a clip, sorted by id."""
    hdri_id, clip_id = crel.split("/")
    out = []
    for aid in layout.finished_augs(store, hdri_id, clip_id):
        try:
            out.append((aid, AugMeta.read(store, f"{layout.aug_rel(hdri_id, clip_id, aid)}/{layout.AUG_JSON}")))
        except (RecordError, OSError):
            continue  # unfinished or corrupt: not an augmentation to read masks from
    return out


def choose_aug(store: Store, crel: str, wanted: str | None) -> tuple[str | None, AugMeta | None]:
    """The augmentation whose masks are shown: ``wanted`` (an aug id; error if absent), else the first
    single-exposure one; (None, None) if the clip has none (or ``wanted == "none"``)."""
    augs = list_augs(store, crel)
    if wanted == "none":
        return None, None
    if wanted:
        for aid, meta in augs:
            if aid == wanted:
                return aid, meta
        have = ", ".join(a for a, _ in augs) or "none"
        raise ClipInputError(f"{crel}/{layout.LDR_DIR}/{wanted}/{layout.AUG_JSON}: no such finished augmentation "
                             f"(this clip has: {have})")
    for aid, meta in augs:
        if meta.kind == "single":
            return aid, meta
    return None, None


def _read_mask(store: Store, rel: str) -> np.ndarray:
    try:
        img = decode_ldr(store.read_bytes(rel), rel)
    except LdrImageError as e:
        raise ClipInputError(str(e)) from None
    if img.ndim == 3:
        img = img[..., 0]
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def load_clip_frames(store: Store, hdri_id: str, clip_id: str, k: int = 4, aug: str | None = None,
                     key: float = REINHARD_KEY) -> ClipFrames:
    """Read the K sampled frames of a clip and the masks at those frames."""
    crel = layout.clip_rel(hdri_id, clip_id)
    try:
        meta = ClipMeta.read(store, f"{crel}/{layout.CLIP_JSON}")
        names = meta.files
    except FileNotFoundError:
        raise ClipInputError(f"{crel}/{layout.CLIP_JSON}: missing (the clip is not rendered)") from None
    except RecordError as e:
        raise ClipInputError(str(e)) from None
    if not names:
        raise ClipInputError(f"{crel}/{layout.CLIP_JSON}: lists no frames")
    idx = sample_indices(len(names), k)
    frames = []
    with tempfile.TemporaryDirectory(prefix="caption-") as tmp:  # downloads from object stores land here
        for i in idx:
            rel = f"{crel}/{names[i]}"
            if not store.exists(rel):
                raise ClipInputError(f"{rel}: missing frame")
            with store.local_copy(rel, tmp) as p:
                frames.append(read_image(p, name=rel))
    hdr = np.stack(frames).astype(np.float32, copy=False)
    display, scale = reinhard_display(hdr, key)
    aug_id, aug_meta = choose_aug(store, crel, aug)
    if aug_id is not None:
        base = f"{crel}/{layout.LDR_DIR}/{aug_id}"
        try:
            over = np.stack([_read_mask(store, f"{base}/{aug_meta.over[i]}") for i in idx])
            under = np.stack([_read_mask(store, f"{base}/{aug_meta.under[i]}") for i in idx])
        except FileNotFoundError as e:
            raise ClipInputError(f"{base}: mask file missing ({e})") from None
        if over.shape[1:] != hdr.shape[1:3]:
            raise ClipInputError(f"{base}: masks are {over.shape[2]}x{over.shape[1]}, "
                                 f"frames {hdr.shape[2]}x{hdr.shape[1]}")
        source = f"aug:{aug_id} (DiffHDR eq. 6 masks of the LDR video, EMA over all frames)"
    else:
        # no LDR video yet: the masks of the HDR frames shown at exposure 0 (clip at 1.0, sRGB, 8-bit), per frame
        ldr = np.round(srgb_oetf(np.clip(hdr, 0.0, 1.0)) * 255.0).astype(np.uint8)
        over, under = exposure_masks_paper(ldr, alpha=1.0)
        source = "hdr-exposure-0 (no augmentation: the HDR frames clipped at 1.0, per-frame masks, no EMA)"
    return ClipFrames(hdri_id, clip_id, idx, hdr, display, over.astype(np.float32), under.astype(np.float32),
                      aug_id, source, {"operator": "reinhard", "per_channel": True, "key": key, "scale": scale,
                                       "then": "sRGB OETF, 8-bit"}, meta.program or clip_id)


def vlm_size(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 32) -> tuple[int, int]:
    """The size Qwen-VL models see an image at (a multiple of patch x merge = 32, pixel count in range): computed
    here so the outlines are drawn at that size and never resampled."""
    from qwen_vl_utils import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _outline(img: np.ndarray, mask: np.ndarray, colour, thickness: int, min_area: float = 0.002) -> None:
    """Draw the outlines of a region on ``img``. Speckle (noise-level masks of dark areas, single clipped pixels)
    would cover the picture in marks: the region is opened and closed with a disc of ~1/60 of the image side
    first, and outlines enclosing less than ``min_area`` of the frame are dropped (holes, e.g. a tree inside a
    clipped sky, are kept)."""
    binary = (mask >= 0.5).astype(np.uint8)
    if not binary.any():
        return
    k = max(3, int(round(min(binary.shape) / 60)) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    binary = cv2.morphologyEx(cv2.morphologyEx(binary, cv2.MORPH_OPEN, disc), cv2.MORPH_CLOSE, disc)
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    keep = [c for c in contours if cv2.contourArea(c) >= min_area * binary.size]
    cv2.drawContours(img, keep, -1, colour, thickness, lineType=cv2.LINE_8)


def vlm_images(clip: ClipFrames, mask_mode: str = "contour", min_pixels: int = 64 * 64,
               max_pixels: int = 448 * 448, factor: int = 32) -> list[np.ndarray]:
    """The uint8 RGB images given to the VLM, in order: per frame the tonemapped frame with the region outlines drawn
    on it (``contour``), or the frame followed by a mask image (``separate``: magenta = over, cyan = under, black
    elsewhere), or the frame only (``none``). All at the VLM's own input size."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask mode {mask_mode!r}: expected one of {', '.join(MASK_MODES)}")
    h, w = clip.display.shape[1:3]
    th, tw = vlm_size(h, w, min_pixels, max_pixels, factor)
    thickness = max(1, int(math.ceil(min(th, tw) / 160)))
    out = []
    for t in range(len(clip.indices)):
        frame = cv2.resize(clip.display[t], (tw, th), interpolation=cv2.INTER_AREA if th < h else cv2.INTER_LINEAR)
        over = cv2.resize(clip.over[t], (tw, th), interpolation=cv2.INTER_NEAREST)
        under = cv2.resize(clip.under[t], (tw, th), interpolation=cv2.INTER_NEAREST)
        if mask_mode == "contour":
            frame = np.ascontiguousarray(frame)
            _outline(frame, over, OVER_COLOUR, thickness)
            _outline(frame, under, UNDER_COLOUR, thickness)
            out.append(frame)
        elif mask_mode == "separate":
            m = np.zeros_like(frame)
            m[over >= 0.5] = OVER_COLOUR
            m[under >= 0.5] = UNDER_COLOUR
            out += [frame, m]
        else:
            out.append(frame)
    return out

