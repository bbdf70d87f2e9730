"""DiffHDR inference: LDR video (MP4 or a folder of PNG/JPEG frames) of any length -> HDR EXR frames.

    python -m train.infer --run RUN --input in.mp4 --out pred/ [--alpha-over 1 --alpha-under 1]

    python -m train.infer --lora released.safetensors --config released.yaml --manifest M --split test \
        --out pred/

``--run RUN`` takes RUN/lora.safetensors (``--lora FILE``: a LoRA file given directly, in the diffusers, DiffSynth or
ComfyUI key layout, converted by ``train.diffhdr.lora_layouts``, which says on stderr which it found; ``--video`` is the
old spelling of ``--input``). The backbone is rebuilt from the run's ``config.yaml`` (beside the LoRA file, or
``--config``: a released LoRA needs one with ``model.pretrained``), wrapped in diffusers' ``WanVACEPipeline``, and the
converted LoRA is loaded with ``load_lora_weights``. ``--manifest M --split S`` (instead of ``--input``) converts every
clip of the split into ``OUT/<hdri_id>/<clip_id>/`` (what ``evaluate.run --predictions`` reads) with one pipeline.
Every window of LDR frames gets the same treatment as a training window, by the same functions (``task.window_masks``:
the recipe's exposure masks with the EMA of eq. 6 starting at the window's first frame, as in training and in the
public long-video inference;
``task.control_video``: gray painting, linearise, Log-Gamma, the soft VACE mask) and goes in as the VACE context and
mask; the pipeline's ``prepare_video_latents`` + ``prepare_masks`` then build what the trainer's
``conditioning.control_latents`` builds (tested). The video is converted in windows of the model's frame count
(``--window``, 4k+1, default the run's ``data.window``) that overlap by ``--overlap`` frames, the last window aligned to
the last frame (``train.windows``); a video shorter than a window is padded with its last frame and the padding dropped.
Per window the pipeline denoises (flow matching, Euler) and the fp32 VAE decodes; overlapping frames are cross-faded
linearly in the model's Log-Gamma output space (``--blend-space``), Log-Gamma is inverted
(``hdr.color.log_gamma_inverse``) and every frame is written once as float32 EXR (``hdr.io.write_exr``, atomically) as
soon as no later window touches it. ``infer.json`` records the settings and the window plan; rerunning the same command
after an interruption resumes at the first missing frame (bit-identical to an uninterrupted run: window seeds depend
only on the window's first input frame).
Context-focused cross-attention (DiffHDR eq. 7-8) is on when ``--alpha-over``/``--alpha-under`` are not 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hdr.cli import CliError, load_yaml_mapping, resolve_device
from hdr.color import log_gamma_inverse
from hdr.dataset.layout import HDR_FRAME_GLOB, frame_name
from hdr.io import LdrImageError, read_ldr
from hdr.seeding import derive_seed
from hdr.storage import atomic_path, atomic_write_json, sha256_file
from train.diffhdr import conditioning as C
from train.diffhdr.cfa import OVER_PROMPT, UNDER_PROMPT, CFAState, install_cfa, token_mask
from train.diffhdr.lora_layouts import LoraInfo, LoraLayoutError, check_modules, read_lora, to_diffusers
from train.diffhdr.model import ModelError, load_backbone
from train.diffhdr.task import (LORA_FILE, RECIPES, DiffHDRModel, control_video, mask_mode_of, resolve_data_config,
                                 window_masks)
from train.engine import TrainError
from train.windows import WindowBlender, WindowPlanError, pad_frames, plan_windows, resume_window

IMAGE_EXT = (".png", ".jpg", ".jpeg")
PATH_KEYS = ("lora", "config", "video", "reference")   # recorded, but files are compared by their hashes
DEFAULT_OVERLAP = 8
# Default: cross-fade in Log-Gamma, the space the model predicts in and its errors are roughly uniform in, so where
# two windows disagree on a highlight the fade moves in roughly even steps of stops instead of the brighter window
# dominating from the first frame of the overlap (a linear-radiance fade of 1 vs 1000 is already at 112 after 1/9 of
# it).
BLEND_SPACES = ("log-gamma", "linear")


class InferError(RuntimeError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    from train.infer import add_common_arguments

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--lora", help=f"a LoRA safetensors file instead of --run: RUN/{LORA_FILE} or a released "
                        "LoRA in the diffusers, DiffSynth or ComfyUI layout (converted; needs --config without a "
                        "config.yaml beside it)")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--manifest", default=None,
                        help="instead of --input: every clip of a manifest split (--split) into "
                        "--out/<hdri_id>/<clip_id>/, the layout evaluate.run --predictions reads")
    add_common_arguments(
        p, steps_default=50, run_group=source, input_group=inputs, input_aliases=("--video",),
        run=f"trained run folder (written by train.run): its {LORA_FILE} and config.yaml",
        input="input LDR video: an .mp4 file or a folder of PNG/JPEG frames (--video: old spelling)",
        out="output folder for frame_0000.exr ...", steps="denoising steps (public code: 50)",
        frames="convert only this many frames from --start (any number; default: to the end)",
        half="write half-float EXR (clamped at 65504, recorded)",
        overwrite="replace existing frames in --out (frames of an earlier, longer conversion are removed)")
    p.add_argument("--config", default=None, help="run config (default: config.yaml beside the LoRA; a released LoRA: "
                   "a YAML with at least model.pretrained)")
    p.add_argument("--split", default="test", help="with --manifest: the split to convert (default: test)")
    p.add_argument("--aug", default=None, help="with --manifest: the aug_id or preset of the LDR to convert (default: "
                   "each clip's first single-exposure augmentation)")
    p.add_argument("--start", type=int, default=0, help="first input frame to convert (output frame_0000)")
    p.add_argument("--window", type=int, default=None,
                   help="frames per model call, 4k+1 (default: the run's data.window, 33 in the paper)")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"frames shared by consecutive windows, cross-faded (default: {DEFAULT_OVERLAP}, at most "
                        "half the window)")
    p.add_argument("--blend-space", default="log-gamma", choices=BLEND_SPACES,
                   help="where overlapping windows are cross-faded: the model's Log-Gamma output (default) or linear "
                        "radiance")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (public code: 1.0)")
    p.add_argument("--shift", type=float, default=None, help="scheduler shift (default: the run's flow.shift)")
    p.add_argument("--prompt", default="", help="base prompt c (eq. 7); the public code uses the empty prompt")
    p.add_argument("--negative-prompt", default="", help="used only with --guidance > 1")
    p.add_argument("--over-prompt", default=OVER_PROMPT, help="c_over of CFA (eq. 7)")
    p.add_argument("--under-prompt", default=UNDER_PROMPT, help="c_under of CFA (eq. 7)")
    p.add_argument("--alpha-over", type=float, default=0.0, help="CFA strength in over-exposed regions (eq. 8)")
    p.add_argument("--alpha-under", type=float, default=0.0, help="CFA strength in under-exposed regions (eq. 8)")
    p.add_argument("--cfa-branches", default="both", choices=["both", "main", "vace"],
                   help="cross-attention layers that get CFA (paper: both)")
    p.add_argument("--reference", default=None, help="optional reference image (LDR, sRGB) for VACE conditioning")
    p.add_argument("--reference-ev", type=float, default=None,
                   help="exposure boost (stops) of the reference after linearising (default: 5 with the log_gamma "
                        "mapping, as the public inference; 0 with linear)")
    p.add_argument("--reference-mapping", default=None, choices=["linear", "log_gamma"],
                   help="how the reference enters the VAE (default: the run's data.reference_mapping, what the LoRA "
                        "was trained with): linear radiance clipped to [0, 1], or Log-Gamma")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="mask/gray treatment of the LDR (default: the run's data.recipe)")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """(T, H, W, 3) uint8 sRGB frames from an MP4 (PyAV) or a folder of PNG/JPEG files (sorted by name; names
    starting with over_/under_ are masks and skipped)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT
                       and not f.name.startswith(("over_", "under_")))
        if not files:
            raise InferError(f"{p}: no PNG/JPEG frames in this folder")
        frames = []
        for f in files:
            try:
                frames.append(read_ldr(f, color=True))
            except LdrImageError as e:
                raise InferError(str(e)) from None
        if len({fr.shape for fr in frames}) != 1:
            raise InferError(f"{p}: frames have different sizes")
        return np.stack(frames)
    if not p.is_file():
        raise InferError(f"{p}: no such file or folder")
    try:
        import av

        with av.open(str(p)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    except Exception as e:  # noqa: BLE001 -- PyAV raises many types
        raise InferError(f"{p}: cannot decode video ({type(e).__name__}: {e})") from None
    if not frames:
        raise InferError(f"{p}: no video frames")
    return np.stack(frames)


def _resolve_device(name: str) -> torch.device:
    """The shared resolver (``hdr.cli.resolve_device``: auto|cpu|cuda|cuda:N|mps) as a torch device."""
    try:
        return torch.device(resolve_device(name))
    except CliError as e:
        raise InferError(str(e)) from None


def lora_path(args) -> Path:
    """The LoRA file: RUN/lora.safetensors for ``--run RUN``, else ``--lora FILE``."""
    if getattr(args, "run", None):
        run = Path(args.run)
        if not run.is_dir():
            raise InferError(f"{run}: run folder not found")
        lora = run / LORA_FILE
        if not lora.is_file():
            raise InferError(f"{lora}: no LoRA in this run folder (is the run finished? rerun train.run to complete "
                             "it)")
        return lora
    lora = Path(args.lora)
    if not lora.is_file():
        raise InferError(f"{lora}: LoRA file not found")
    return lora


def select_range(n_video: int, start: int, frames: int | None, video: str) -> tuple[int, int]:
    """(start, count) of the input frames to convert: ``--start``/``--frames``, default to the end of the video."""
    if start < 0 or start >= n_video:
        raise InferError(f"{video}: --start {start} is outside the video's {n_video} frames")
    if frames is None:
        return start, n_video - start
    if frames < 1 or start + frames > n_video:
        raise InferError(f"{video}: --start {start} --frames {frames} asks for frames past the end of its "
                         f"{n_video} frames")
    return start, frames


def window_settings(window: int | None, overlap: int | None, run_window: int) -> tuple[int, int]:
    """(window, overlap): the window is 4k+1 frames (the Wan VAE's temporal stride 4), the overlap defaults to
    DEFAULT_OVERLAP frames, at most half the window, and must leave a stride of at least one frame."""
    w = int(run_window if window is None else window)
    if w < 1 or w % 4 != 1:
        raise InferError(f"--window {w}: the window must be 4k+1 frames (5, 9, ..., 33, ...)")
    o = min(DEFAULT_OVERLAP, (w - 1) // 2) if overlap is None else int(overlap)
    if not 0 <= o < w:
        raise InferError(f"--overlap {o}: must be between 0 and the window minus one ({w - 1})")
    return w, o


def window_seed(seed: int, start: int) -> int:
    """Seed of the starting noise of the window that begins at input frame ``start`` (counted in the input video,
    not in the converted range): a window's output depends neither on the other windows nor on --start, so
    ``--start s --frames W`` reproduces that window of a whole-video conversion."""
    return derive_seed(seed, "diffhdr-infer", "window", start)


def convert_windows(pipe, frames8: np.ndarray, over: np.ndarray, under: np.ndarray, dcfg: dict, *, window: int,
                    starts: list[int], seed: int, call: dict, emit, blend_space: str = "log-gamma",
                    cfa: tuple | None = None, device="cpu", progress: bool = True, offset: int = 0,
                    done: int = 0) -> list[dict]:
    """Run ``pipe`` (a WanVACEPipeline, or anything called like one) on each window of ``frames8`` (N, H, W, 3)
    uint8 with its exposure masks ``over``/``under`` (N, H, W) -- or, when they are None (what ``main`` does), the
    masks of each window computed by ``task.window_masks`` as in training --, blend the overlaps and hand every frame to
    ``emit(index, radiance (H, W, 3) float32)`` exactly once, in order. ``call`` holds the pipeline arguments that
    are the same for every window (prompt embeddings, size, steps, guidance, reference). ``cfa`` = (CFAState, patch
    size, reference frames) updates the CFA token masks per window. ``offset`` is the input-video index of
    ``frames8[0]`` (for the window seeds). ``done`` > 0 resumes: frames [0, done) are finished and not emitted,
    and only the windows that touch a later frame run. Returns one record per window run."""
    from tqdm.auto import tqdm

    n = len(frames8)
    if blend_space not in BLEND_SPACES:
        raise InferError(f"blend space {blend_space!r}: one of {', '.join(BLEND_SPACES)}")
    g_, m_ = float(dcfg["log_gamma_g"]), float(dcfg["log_gamma_m"])
    first = resume_window(starts, window, done)
    if first == len(starts):
        return []
    blender = WindowBlender(starts, window, n, first=first)
    padded = max(n, window)
    per_window = over is None or under is None
    frames8 = pad_frames(frames8, padded)
    if not per_window:
        over, under = pad_frames(over, padded), pad_frames(under, padded)
    records = []
    bar = tqdm(range(first, len(starts)), desc="windows", unit="window", initial=first, total=len(starts),
               disable=not progress or len(starts) < 2)
    for i in bar:
        s = starts[i]
        ldr = torch.from_numpy(np.ascontiguousarray(frames8[s:s + window])).permute(0, 3, 1, 2).float() / 255.0
        if per_window:
            item = {"ldr": ldr, **window_masks(ldr, dcfg)}
        else:
            item = {"ldr": ldr, "over": torch.as_tensor(np.asarray(over[s:s + window], np.float32))[:, None],
                    "under": torch.as_tensor(np.asarray(under[s:s + window], np.float32))[:, None]}
        control, mask = control_video(item, dcfg, gray_over=False, text_to_hdr=False)
        if cfa is not None:
            state, patch, nref = cfa
            state.over_mask = token_mask(item["over"][:, 0], patch, nref).to(device)
            state.under_mask = token_mask(item["under"][:, 0], patch, nref).to(device)
        wseed = window_seed(seed, offset + s)
        g = torch.Generator(device="cpu").manual_seed(wseed)
        result = pipe(video=control[None], mask=mask[None, :, None].expand(-1, -1, 3, -1, -1), num_frames=window,
                      generator=g, output_type="pt", **call)
        video = result.frames[0].float().clamp(0, 1)                    # (T, 3, H, W) Log-Gamma in [0, 1]
        if video.shape[0] != window:
            raise InferError(f"the pipeline returned {video.shape[0]} frames for a window of {window}")
        y = video.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        if blend_space == "linear":
            y = log_gamma_inverse(y, g=g_, m=m_)
        for t, frame in blender.add(i, y):
            if t < done:
                continue
            hdr = frame if blend_space == "linear" else log_gamma_inverse(frame, g=g_, m=m_)
            emit(t, np.ascontiguousarray(hdr, np.float32))
        records.append({"start": s, "seed": wseed})
    if not blender.finished:
        raise InferError("internal: the window plan left frames unwritten")
    return records


def window_plan(n: int, window: int, overlap: int, blend_space: str, starts: list[int] | None = None) -> dict:
    """What infer.json records about the windows."""
    starts = plan_windows(n, window, overlap) if starts is None else starts
    return {"window": window, "overlap": overlap, "starts": starts,
            "overlaps": [a + window - b for a, b in zip(starts, starts[1:])],
            "padded": max(0, window - n), "blend": f"linear cross-fade in {blend_space} space (train.windows)"}


def read_config(args, lora: Path) -> tuple[Path, dict]:
    """(path, dict) of the run config: ``--config``, else config.yaml beside the LoRA. A released LoRA comes without
    one: then ``--config`` with at least ``model.pretrained`` (docs/train-diffhdr.md, "Released LoRAs")."""
    cfg_path = Path(args.config) if args.config else lora.parent / "config.yaml"
    if not cfg_path.is_file():
        if args.config:
            raise InferError(f"{cfg_path}: --config file not found")
        raise InferError(f"{lora}: no config.yaml beside this LoRA (a released LoRA comes without one): pass "
                         "--config with at least model.pretrained (docs/train-diffhdr.md, Released LoRAs)")
    return cfg_path, load_yaml_mapping(cfg_path, error=InferError, what="a run config (model:, data:, flow:)")


def read_lora_any_layout(lora: Path, quiet: bool = False) -> tuple[dict, LoraInfo]:
    """The LoRA file in any layout (``lora_layouts``) as diffusers tensors; says on stderr which layout it found."""
    try:
        tensors, header = read_lora(lora)
        sd, info = to_diffusers(tensors, header, where=str(lora))
    except LoraLayoutError as e:
        raise InferError(str(e)) from None
    if not quiet:
        print(f"LoRA layout: {info.describe()}", file=sys.stderr)
    return sd, info


def main(args) -> int:
    device = _resolve_device(args.device)
    lora = lora_path(args)
    cfg_path, cfg = read_config(args, lora)
    lora_sd, lora_info = read_lora_any_layout(lora, args.quiet)
    ctx = {"device": device, "lora": lora, "lora_sd": lora_sd, "lora_info": lora_info, "cfg_path": cfg_path,
           "cfg": cfg}
    if getattr(args, "manifest", None):
        return convert_split(args, ctx)
    return convert_video(args, args.input, Path(args.out), ctx)


def convert_video(args, input_path, out: Path, ctx: dict) -> int:
    """Convert one LDR video (``input_path``) into ``out``; ``ctx`` holds the config, the LoRA and (after the first
    call) the pipeline, which later calls reuse."""
    from hdr.io import write_exr

    device, lora, cfg_path, cfg = ctx["device"], ctx["lora"], ctx["cfg_path"], ctx["cfg"]
    dcfg = resolve_data_config({**(cfg.get("data") or {}), **({"recipe": args.recipe} if args.recipe else {})})
    if args.recipe:
        dcfg.update({k: v for k, v in RECIPES[args.recipe].items()})
    ref_mapping = args.reference_mapping or dcfg["reference_mapping"]
    ref_ev = args.reference_ev if args.reference_ev is not None else (5.0 if ref_mapping == "log_gamma" else 0.0)
    window, overlap = window_settings(args.window, args.overlap, int(dcfg["window"]))

    frames8 = read_video(input_path)
    start, n = select_range(len(frames8), args.start, args.frames, str(input_path))
    frames8 = frames8[start:start + n]
    h, w = frames8.shape[1] // 16 * 16, frames8.shape[2] // 16 * 16
    if h == 0 or w == 0:
        raise InferError(f"{input_path}: frames of {frames8.shape[2]}x{frames8.shape[1]} are smaller than 16x16")
    top, left = (frames8.shape[1] - h) // 2, (frames8.shape[2] - w) // 2
    frames8 = np.ascontiguousarray(frames8[:, top:top + h, left:left + w])
    try:
        starts = plan_windows(n, window, overlap)
    except WindowPlanError as e:
        raise InferError(str(e)) from None
    shift = args.shift if args.shift is not None else float((cfg.get("flow") or {}).get("shift", 5.0))
    mode = mask_mode_of(dcfg)
    if args.reference and not Path(args.reference).is_file():
        raise InferError(f"{args.reference}: reference image not found")
    cfa_on = bool(args.alpha_over or args.alpha_under)
    # everything the frames depend on: a rerun with the same settings resumes or finds the work done
    settings = json.loads(json.dumps({
        "lora": str(lora), "lora_sha256": sha256_file(lora), "config": str(cfg_path),
        "config_sha256": sha256_file(cfg_path), "video": str(input_path),
        "input_sha256": hashlib.sha256(memoryview(frames8).cast("B")).hexdigest(), "start": start, "frames": n,
        "size": [w, h], "crop": [left, top], "window": window, "overlap": overlap, "blend_space": args.blend_space,
        "steps": args.steps, "seed": args.seed, "guidance": args.guidance, "shift": shift, "prompt": args.prompt,
        "negative_prompt": args.negative_prompt, "recipe": dcfg["recipe"], "mask_mode": mode,
        "masks": {"mode": mode, "ema_alpha": float(dcfg["mask_ema_alpha"]), "values": dcfg["mask_values"],
                  "computed": "per window, EMA from the window's first frame (task.window_masks, as in training)"},
        "cfa": {"alpha_over": args.alpha_over, "alpha_under": args.alpha_under, "branches": args.cfa_branches,
                "over_prompt": args.over_prompt, "under_prompt": args.under_prompt} if cfa_on else None,
        "reference": args.reference, "reference_sha256": sha256_file(args.reference) if args.reference else None,
        "reference_ev": ref_ev if args.reference else None,
        "reference_mapping": ref_mapping if args.reference else None, "device": str(device), "half": args.half}))
    names = [frame_name(t) for t in range(n)]
    existing = sorted(p.name for p in out.glob(HDR_FRAME_GLOB)) if out.is_dir() else []
    done = 0
    if existing and not args.overwrite:
        try:
            old = json.loads((out / "infer.json").read_text())
        except (OSError, ValueError):
            old = {}
        if not isinstance(old, dict) or any(old.get(k) != v for k, v in settings.items() if k not in PATH_KEYS):
            raise InferError(f"{out}: already holds EXR frames; use --overwrite or another --out (rerunning the "
                             "same command resumes an unfinished conversion)")
        if old.get("status") == "complete" and set(names) <= set(existing):
            print(f"{out}: already complete ({n} EXR frames); nothing to do")
            return 0
        while done < n and (out / names[done]).is_file():
            done += 1
    stale = [name for name in existing if name not in set(names)] if args.overwrite else []

    if "pipe" not in ctx:
        ctx["pipe"] = build_pipeline(cfg, device, shift, ctx["lora_sd"], lora, args.quiet)
    pipe = ctx["pipe"]

    reference = None
    if args.reference:
        import cv2
        from PIL import Image

        from hdr.color import srgb_eotf

        try:
            img = read_ldr(args.reference, color=True)
        except LdrImageError as e:
            raise InferError(str(e)) from None
        ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        # sRGB -> linear x 2^ev -> the run's reference mapping (public inference: Log-Gamma at +5 EV); the pipeline
        # takes PIL images, so the mapped reference is 8-bit and a linear one is clipped to [0, 1]
        lin = torch.from_numpy(srgb_eotf(ref) * 2.0 ** ref_ev)
        unit = (lin.clamp(0.0, 1.0) if ref_mapping == "linear" else C.hdr_to_unit(lin)).numpy()
        reference = Image.fromarray(np.round(unit * 255.0).astype(np.uint8))

    cfa = None
    if cfa_on:
        if "cfa_state" not in ctx:
            emb_over, _ = pipe.encode_prompt(args.over_prompt, do_classifier_free_guidance=False, device=device)
            emb_under, _ = pipe.encode_prompt(args.under_prompt, do_classifier_free_guidance=False, device=device)
            ctx["cfa_state"] = CFAState(alpha_over=args.alpha_over, alpha_under=args.alpha_under,
                                        over_embeds=emb_over, under_embeds=emb_under)
            install_cfa(pipe.transformer, ctx["cfa_state"], args.cfa_branches)
        cfa = (ctx["cfa_state"], pipe.transformer.config.patch_size, 1 if reference is not None else 0)

    # the prompts are the same for every window (and every video): encode them once
    max_len = int(dcfg["max_sequence_length"])
    if "prompts" not in ctx:
        ctx["prompts"] = pipe.encode_prompt(
            args.prompt, negative_prompt=args.negative_prompt, do_classifier_free_guidance=args.guidance > 1.0,
            max_sequence_length=max_len, device=device)
    prompt_embeds, negative_embeds = ctx["prompts"]
    call = dict(reference_images=reference, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                height=h, width=w, num_inference_steps=args.steps, guidance_scale=args.guidance,
                max_sequence_length=max_len)

    plan = window_plan(n, window, overlap, args.blend_space, starts)
    plan["seeds"] = [window_seed(args.seed, start + st) for st in starts]
    meta = {**settings, "status": "running", "windows": plan,
            "seed_derivation": "derive_seed(seed, 'diffhdr-infer', 'window', input frame of the window start)",
            "lora_layout": ctx["lora_info"].to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite:                     # the folder holds only this conversion's frames from here on
        for name in existing:
            (out / name).unlink(missing_ok=True)
    _write_json(out / "infer.json", meta)
    written = []

    def emit(t: int, frame: np.ndarray) -> None:
        with atomic_path(out / names[t]) as tmp:
            write_exr(tmp, frame, half=args.half)
        written.append(names[t])

    t0 = time.time()
    records = convert_windows(pipe, frames8, None, None, dcfg, window=window, starts=starts, seed=args.seed,
                              call=call, emit=emit, blend_space=args.blend_space, cfa=cfa, device=device,
                              progress=not args.quiet, offset=start, done=done)
    if done + len(written) != n:
        raise InferError(f"internal: {done} + {len(written)} frames written, expected {n}")
    meta.update(status="complete", seconds=round(time.time() - t0, 2), resumed_from=done or None,
                windows_run=[r["start"] for r in records], frames_written=names, stale_removed=stale)
    _write_json(out / "infer.json", meta)
    resumed = f", resumed at frame {done}" if done else ""
    print(f"wrote {len(written)} EXR frames ({w}x{h}) to {out} in {meta['seconds']} s "
          f"({len(records)} of {len(starts)} window(s) of {window}, overlap {overlap}{resumed})")
    return 0




def build_pipeline(cfg: dict, device, shift: float, lora_sd: dict, lora: Path, quiet: bool = False):
    """The backbone of the config's ``model:`` section in a ``WanVACEPipeline``, with the (converted) LoRA loaded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        transformer, vae, text_encoder, tokenizer = load_backbone(DiffHDRModel.from_dict(cfg.get("model"))
                                                                  .backbone_config(), device, dtype)
        check_modules(lora_sd, transformer, where=str(lora))
    except (ModelError, TrainError, LoraLayoutError) as e:
        raise InferError(str(e)) from None
    pipe = WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(desc="denoise", leave=False, disable=quiet)
    try:
        pipe.load_lora_weights(dict(lora_sd))
    except Exception as e:  # noqa: BLE001 -- name the file
        raise InferError(f"{lora}: cannot load as a WanVACE LoRA ({type(e).__name__}: {e})") from None
    return pipe


def split_inputs(manifest, split: str, out: Path, aug: str | None = None) -> list[tuple[str, Path, Path]]:
    """(clip key, LDR frame folder, prediction folder ``out/<hdri_id>/<clip_id>``) of every clip of a manifest split,
    the layout ``evaluate.run --predictions`` reads. The LDR is the clip's first single-exposure augmentation, or the
    one whose aug_id or preset is ``aug``."""
    try:
        clips = manifest.clips(split)
    except ValueError as e:
        raise InferError(f"{manifest.path}: {e}") from None
    if not clips:
        raise InferError(f"{manifest.path}: the {split} split is empty")
    if not manifest.store.is_local:
        raise InferError(f"{manifest.path}: --manifest needs a local dataset root (the LDR frames are read from disk)")
    rows = []
    for c in clips:
        augs = [a for a in c.aug("single") if aug is None or aug in (a.aug_id, a.preset)]
        if not augs:
            have = ", ".join(a.aug_id for a in c.augs) or "none"
            raise InferError(f"{manifest.path}: clip {c.key} has no single-exposure augmentation"
                             f"{f' {aug!r}' if aug else ''} (it has: {have})")
        rows.append((c.key, Path(manifest.local_file(augs[0].rel)), out / c.hdri_id / c.clip_id))
    return rows


def convert_split(args, ctx: dict) -> int:
    """``--manifest M --split S --out DIR``: every clip of the split into DIR/<hdri_id>/<clip_id>/ (one pipeline for
    all of them); DIR/infer_split.json lists them. Rerunning resumes clip by clip."""
    from hdr.dataset import open_manifest

    try:
        m = open_manifest(args.manifest)
    except (OSError, ValueError, KeyError) as e:
        raise InferError(f"{args.manifest}: cannot open manifest ({e})") from None
    out = Path(args.out)
    rows = split_inputs(m, args.split, out, args.aug)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i, (key, src, dst) in enumerate(rows):
        if not args.quiet:
            print(f"[{i + 1}/{len(rows)}] {key}", file=sys.stderr)
        convert_video(args, src, dst, ctx)
    _write_json(out / "infer_split.json", {
        "manifest": m.path, "version": m.version, "root_hash": m.root_hash, "split": args.split,
        "lora": str(ctx["lora"]), "lora_layout": ctx["lora_info"].to_dict(), "clips": [k for k, _, _ in rows],
        "inputs": {k: str(s) for k, s, _ in rows}, "seconds": round(time.time() - t0, 2)})
    print(f"converted the {len(rows)} {args.split} clips of {m.version} into {out} (evaluate: python -m evaluate.run "
          f"--manifest {args.manifest} --split {args.split} --predictions {out} --out EVAL)")
    return 0


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj, indent=2)
