"""DiffHDR inference: LDR video (MP4 or a folder of PNG/JPEG frames) -> HDR EXR frames.

    python -m train.infer --lora RUN/lora.safetensors --video in.mp4 --out pred/ [--alpha-over 1 --alpha-under 1]

The backbone is rebuilt from the run's ``config.yaml`` (beside the LoRA file, or ``--config``), wrapped in diffusers'
``WanVACEPipeline``, and the LoRA is loaded with ``load_lora_weights``. The LDR frames get the same treatment as in
training (exposure masks of the recipe's preset, gray painting of the recipe, linearise, Log-Gamma) and go in as the
VACE context and mask; the pipeline denoises (flow matching, Euler), the fp32 VAE decodes, Log-Gamma is inverted
(``hdr.color.log_gamma_inverse``) and every frame is written as float32 EXR (``hdr.io.write_exr``).
Context-focused cross-attention (DiffHDR eq. 7-8) is on when ``--alpha-over``/``--alpha-under`` are not 0.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from hdr.color import log_gamma_inverse
from train.diffhdr import conditioning as C
from train.diffhdr.cfa import OVER_PROMPT, UNDER_PROMPT, CFAState, install_cfa, token_mask
from train.diffhdr.model import ModelError, load_backbone
from train.diffhdr.task import RECIPES, control_video, resolve_data_config

IMAGE_EXT = (".png", ".jpg", ".jpeg")


class InferError(RuntimeError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", required=True, help="LoRA safetensors written by train.run (RUN/lora.safetensors)")
    p.add_argument("--video", required=True, help="input LDR video: an .mp4 file or a folder of PNG/JPEG frames")
    p.add_argument("--out", required=True, help="output folder for frame_0000.exr ...")
    p.add_argument("--config", default=None, help="run config (default: config.yaml beside the LoRA)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames to convert, 4k+1 (default: the training window, at most the input length)")
    p.add_argument("--start", type=int, default=0, help="first input frame")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (public code: 50)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--reference-ev", type=float, default=5.0,
                   help="exposure boost (stops) of the reference before Log-Gamma (public code: 5)")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="mask/gray treatment of the LDR (default: the run's data.recipe)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--half", action="store_true", help="write half-float EXR (clamped at 65504, recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace existing frames in --out")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """(T, H, W, 3) uint8 sRGB frames from an MP4 (PyAV) or a folder of PNG/JPEG files (sorted by name; names
    starting with over_/under_ are masks and skipped)."""
    p = Path(path)
    if p.is_dir():
        import cv2

        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT
                       and not f.name.startswith(("over_", "under_")))
        if not files:
            raise InferError(f"{p}: no PNG/JPEG frames in this folder")
        frames = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise InferError(f"{f}: not a readable image")
            frames.append(img[..., ::-1])
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InferError("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def main(args) -> int:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    from augment.masks import exposure_masks
    from hdr.io import write_exr

    lora = Path(args.lora)
    if not lora.is_file():
        raise InferError(f"{lora}: LoRA file not found")
    cfg_path = Path(args.config) if args.config else lora.parent / "config.yaml"
    if not cfg_path.is_file():
        raise InferError(f"{cfg_path}: run config not found (pass --config)")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    dcfg = resolve_data_config({**(cfg.get("data") or {}), **({"recipe": args.recipe} if args.recipe else {})})
    if args.recipe:
        dcfg.update({k: v for k, v in RECIPES[args.recipe].items()})
    out = Path(args.out)
    if out.exists() and any(out.glob("frame_*.exr")) and not args.overwrite:
        raise InferError(f"{out}: already holds EXR frames; use --overwrite or another --out")

    frames8 = read_video(args.video)[args.start:]
    n = args.frames or min(int(dcfg["window"]), len(frames8))
    n = min(n, len(frames8))
    n = (n - 1) // 4 * 4 + 1
    if n < 1 or (args.frames and args.frames % 4 != 1):
        raise InferError(f"--frames must be 4k+1 and at most the {len(frames8)} input frames")
    frames8 = frames8[:n]
    h, w = frames8.shape[1] // 16 * 16, frames8.shape[2] // 16 * 16
    if h == 0 or w == 0:
        raise InferError(f"{args.video}: frames of {frames8.shape[2]}x{frames8.shape[1]} are smaller than 16x16")
    top, left = (frames8.shape[1] - h) // 2, (frames8.shape[2] - w) // 2
    frames8 = np.ascontiguousarray(frames8[:, top:top + h, left:left + w])

    device = _resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        transformer, vae, text_encoder, tokenizer = load_backbone(cfg.get("model") or {}, device, dtype)
    except ModelError as e:
        raise InferError(str(e)) from None
    shift = args.shift if args.shift is not None else float((cfg.get("flow") or {}).get("shift", 5.0))
    pipe = WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(desc="denoise")
    try:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    except Exception as e:  # noqa: BLE001 -- name the file
        raise InferError(f"{lora}: cannot load as a WanVACE LoRA ({type(e).__name__}: {e})") from None

    # the LDR as in training: masks of the recipe's preset, gray painting, linearise, Log-Gamma
    from augment.degrade import PRESETS

    mode = dcfg["mask_mode"] if dcfg["mask_mode"] != "dataset" else PRESETS[dcfg["preset"]].mask_mode
    over, under = exposure_masks(frames8, mode=mode)
    item = {"ldr": torch.from_numpy(frames8).permute(0, 3, 1, 2).float() / 255.0,
            "over": torch.as_tensor(np.asarray(over, np.float32))[:, None],
            "under": torch.as_tensor(np.asarray(under, np.float32))[:, None]}
    control, mask = control_video(item, dcfg, gray_over=False, text_to_hdr=False)

    reference = None
    if args.reference:
        import cv2
        from PIL import Image

        from hdr.color import srgb_eotf

        img = cv2.imread(args.reference, cv2.IMREAD_COLOR)
        if img is None:
            raise InferError(f"{args.reference}: not a readable image")
        ref = cv2.resize(img[..., ::-1], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        # public code: sRGB -> linear x 2^ev -> Log-Gamma; the pipeline takes PIL images (8-bit in Log-Gamma space)
        unit = C.hdr_to_unit(torch.from_numpy(srgb_eotf(ref) * 2.0 ** args.reference_ev)).numpy()
        reference = Image.fromarray(np.round(unit * 255.0).astype(np.uint8))

    state = None
    if args.alpha_over or args.alpha_under:
        emb_over, _ = pipe.encode_prompt(args.over_prompt, do_classifier_free_guidance=False, device=device)
        emb_under, _ = pipe.encode_prompt(args.under_prompt, do_classifier_free_guidance=False, device=device)
        nref = 1 if reference is not None else 0
        patch = transformer.config.patch_size
        state = CFAState(alpha_over=args.alpha_over, alpha_under=args.alpha_under, over_embeds=emb_over,
                         under_embeds=emb_under,
                         over_mask=token_mask(torch.as_tensor(np.asarray(over, np.float32)), patch, nref).to(device),
                         under_mask=token_mask(torch.as_tensor(np.asarray(under, np.float32)), patch, nref).to(device))
        install_cfa(transformer, state, args.cfa_branches)

    t0 = time.time()
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(video=control[None], mask=mask[None, :, None].expand(-1, -1, 3, -1, -1), reference_images=reference,
                  prompt=args.prompt, negative_prompt=args.negative_prompt, height=h, width=w, num_frames=n,
                  num_inference_steps=args.steps, guidance_scale=args.guidance, generator=g, output_type="pt",
                  max_sequence_length=int(dcfg["max_sequence_length"]))
    video = result.frames[0].float()                                   # (T, 3, H, W) Log-Gamma in [0, 1]
    hdr = log_gamma_inverse(video.clamp(0, 1), g=float(dcfg["log_gamma_g"]), m=float(dcfg["log_gamma_m"]))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, frame in enumerate(hdr.permute(0, 2, 3, 1).cpu().numpy()):
        path = out / f"frame_{i:04d}.exr"
        tmp = out / f".frame_{i:04d}.tmp.exr"
        write_exr(tmp, np.ascontiguousarray(frame, np.float32), half=args.half)
        os.replace(tmp, path)
        written.append(path.name)
    meta = {"lora": str(lora), "config": str(cfg_path), "video": str(args.video), "start": args.start, "frames": n,
            "size": [w, h], "crop": [left, top], "steps": args.steps, "seed": args.seed, "guidance": args.guidance,
            "shift": shift, "prompt": args.prompt, "recipe": dcfg["recipe"],
            "cfa": {"alpha_over": args.alpha_over, "alpha_under": args.alpha_under, "branches": args.cfa_branches,
                    "over_prompt": args.over_prompt, "under_prompt": args.under_prompt} if state else None,
            "reference": args.reference, "reference_ev": args.reference_ev if args.reference else None,
            "seconds": round(time.time() - t0, 2), "device": str(device), "half": args.half, "frames_written": written}
    (out / "infer.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {n} EXR frames ({w}x{h}) to {out} in {meta['seconds']} s")
    return 0
