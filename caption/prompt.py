"""The captioning prompt (DiffHDR §3.4.2, appendix E) and its hash.

The model sees the sampled frames tonemapped from HDR (so it can see what is inside regions the LDR video clips), with
the LDR video's over/under-exposed regions marked, and is asked for a JSON object with one description per region
kind plus an optional scene sentence. The measured area and location of each region kind are stated in the text as
well, so the answer is grounded twice (outline in the picture, numbers in the words).

``prompt_hash`` covers everything that shapes the question (templates, mask mode, number of frames, tonemap, image
size limits) but not the per-clip numbers filled into it; a caption.json with the same model and prompt hash is
up to date.
"""
from __future__ import annotations

import hashlib
import json

from PIL import Image

PROMPT_VERSION = "caption-prompt/1"

SYSTEM = ("You caption training data for an HDR video reconstruction model. You describe, precisely and briefly, "
          "what is visible in the parts of a video that an LDR camera loses: highlights that clip to white and "
          "shadows that crush to black.")

MARKS = {
    "contour": ("In each frame, regions outlined in MAGENTA are overexposed (clipped to white) in the LDR version of "
                "this clip, and regions outlined in CYAN are underexposed (crushed to black). The outlines are "
                "annotations, not part of the scene."),
    "separate": ("Each frame is followed by a mask image of the same view: MAGENTA marks the regions that are "
                 "overexposed (clipped to white) in the LDR version of this clip, CYAN the regions that are "
                 "underexposed (crushed to black)."),
    "none": "",
}

USER = """These {n_frames} images are frames {frame_list} of one video clip (camera {program}), in time order, \
tone-mapped from HDR so that detail inside very bright and very dark areas is still visible.
{marks}
Measured in the LDR video: overexposed: {over_hint}; underexposed: {under_hint}.

Describe the content inside the overexposed regions and, separately, inside the underexposed regions: the objects, \
materials, light sources and colours there, i.e. what an HDR reconstruction has to restore (one phrase each, at most \
25 words; do not mention the outlines or masks). If a kind of region is absent, write "none". Also describe the whole \
scene in one short sentence.

Answer with only this JSON object and nothing else:
{{"overexposed": "<description>", "underexposed": "<description>", "scene": "<one sentence>"}}"""

RETRY = """Your previous answer could not be used: {error}.
Reply again with ONLY one JSON object: exactly the keys "overexposed", "underexposed" and "scene", each a non-empty \
string in double quotes; no markdown, no code fences, no text before or after the object."""


def prompt_hash(mask_mode: str, n_frames: int, tonemap: dict, min_pixels: int, max_pixels: int) -> str:
    spec = {"version": PROMPT_VERSION, "system": SYSTEM, "user": USER, "retry": RETRY, "marks": MARKS[mask_mode],
            "mask_mode": mask_mode, "n_frames": int(n_frames), "tonemap": tonemap, "min_pixels": int(min_pixels),
            "max_pixels": int(max_pixels)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def user_text(n_frames: int, frame_indices: list[int], program: str, mask_mode: str, over_hint: str,
              under_hint: str) -> str:
    return USER.format(n_frames=n_frames, frame_list=", ".join(map(str, frame_indices)), program=program,
                       marks=MARKS[mask_mode], over_hint=over_hint, under_hint=under_hint)


def build_messages(images, text: str, history: list[tuple[str, str]] = ()) -> list[dict]:
    """A chat in the Qwen-VL message format: system, the user turn with the images then the text, and for a retry
    the previous answer and the stricter instruction (``history`` = [(assistant_reply, user_retry_text), ...])."""
    # min_pixels = max_pixels = the image's own size: qwen_vl_utils keeps it exactly (it is already a multiple of 32)
    content = [{"type": "image", "image": Image.fromarray(im), "min_pixels": im.shape[0] * im.shape[1],
                "max_pixels": im.shape[0] * im.shape[1]} for im in images]
    content.append({"type": "text", "text": text})
    msgs = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}, {"role": "user", "content": content}]
    for reply, retry in history:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": reply[:800]}]})
        msgs.append({"role": "user", "content": [{"type": "text", "text": retry}]})
    return msgs


def retry_text(error: str) -> str:
    return RETRY.format(error=error)
