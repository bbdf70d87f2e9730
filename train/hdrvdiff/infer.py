"""``python -m train.infer --model hdrvdiff --run RUN --input SEQ --out OUT``: alternating-exposure LDR frames ->
HDR OpenEXR frames with a trained HDR-V-Diff (RUN: the folder of ``python -m train.run ... --model hdrvdiff``
without --stage, or the run folder of stage recon).

SEQ is an augmentation folder (``<root>/<hdri>/<clip>/ldr/alt3_00``: frame_NNNN.png + aug.json, whose
``alternating.exposure`` gives e_k) or any folder of frame_*.png / *.png with ``--exposures`` (cycled over the
frames, e.g. ``--exposures 0.25 1 4``). Frames are 8-bit gamma-2.2 PNGs. Writes OUT/frame_NNNN.exr (float32,
linear, in units of the EV-0 frame) and OUT/hdrvdiff_infer.json; existing outputs are a conflict unless --overwrite.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from hdr.dataset.layout import AUG_JSON, LDR_FRAME_GLOB
from hdr.dataset.records import AugMeta, RecordError
from hdr.storage import Store


def add_arguments(p: argparse.ArgumentParser) -> None:
    from train.infer import add_common_arguments

    add_common_arguments(
        p, steps_default=None, steps_aliases=("--ddim-steps",),
        run="trained run folder (all stages, or the recon stage's)",
        input="folder of alternating-exposure PNG frames (an ldr/altN_NN folder)",
        out="output folder for frame_NNNN.exr", frames="only the first N frames",
        steps="DDIM steps (default: the run's, 10 in the paper; --ddim-steps: old spelling)",
        seed="seed of the DDIM starting noise", half="write half-float EXRs (default float32)")
    p.add_argument("--exposures", type=float, nargs="+", default=None,
                   help="relative exposures e_k cycled over the frames (default: aug.json's alternating.exposure)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest for tiny models)")


def read_sequence(folder: str | Path, exposures=None, frames: int | None = None):
    """(uint8 frames (T, H, W, 3), exposures (T,), names) from an augmentation folder or a folder of PNGs."""
    from hdr.io import LdrImageError, read_ldr
    from train.engine import TrainError

    folder = Path(folder)
    if not folder.is_dir():
        raise TrainError(f"{folder}: input folder not found")
    rec = None
    if (folder / AUG_JSON).is_file():
        try:
            rec = AugMeta.read(Store(str(folder)), AUG_JSON)
        except RecordError as e:
            raise TrainError(str(e)) from None
    names = list((rec.frames if rec else None) or sorted(p.name for p in folder.glob(LDR_FRAME_GLOB))
                 or sorted(p.name for p in folder.glob("*.png")))
    if not names:
        raise TrainError(f"{folder}: no PNG frames")
    names = names[:frames] if frames else names
    if exposures is None:
        alt = rec.alternating if rec else None
        if not alt:
            raise TrainError(f"{folder}: no aug.json with 'alternating' exposures; pass --exposures")
        exp = [float(v) for v in alt["exposure"][: len(names)]]
    else:
        exp = [float(exposures[i % len(exposures)]) for i in range(len(names))]
    imgs = []
    for n in names:
        try:
            imgs.append(read_ldr(folder / n, color=True))
        except LdrImageError as e:
            raise TrainError(str(e)) from None
    shapes = {i.shape for i in imgs}
    if len(shapes) != 1:
        raise TrainError(f"{folder}: frames differ in size ({sorted(shapes)})")
    return np.stack(imgs), exp, names


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from hdr.cli import CliError, resolve_device
    from hdr.io import write_exr
    from hdr.storage import atomic_path, atomic_write_text
    from train.engine import TrainError
    from train.hdrvdiff.pipeline import HDRVDiffPipeline

    try:
        device = resolve_device(args.device)
        out = Path(args.out)
        ldr8, exposures, names = read_sequence(args.input, args.exposures, args.frames)
        targets = [out / (Path(n).stem + ".exr") for n in names]
        clash = [p for p in targets if p.exists()]
        if clash and not args.overwrite:
            raise TrainError(f"{clash[0]}: exists ({len(clash)} output frame(s)); use --overwrite or another --out")
        if args.threads:
            torch.set_num_threads(args.threads)
        pipe = HDRVDiffPipeline.from_run(args.run, device, args.steps)
        ldr = torch.from_numpy(np.ascontiguousarray(ldr8.transpose(0, 3, 1, 2))).float() / 255.0
        hdr = pipe(ldr, exposures, seed=args.seed,
                   progress=lambda it: tqdm(it, desc="hdrvdiff", unit="frame", disable=args.quiet))
        out.mkdir(parents=True, exist_ok=True)
        for path, img in zip(targets, hdr):
            with atomic_path(path) as tmp:
                write_exr(tmp, img.permute(1, 2, 0).numpy(), half=args.half)
        record = {"schema": "hdr-toolkit/hdrvdiff-infer/1", "run": str(Path(args.run).resolve()),
                  "input": str(Path(args.input).resolve()), "frames": [p.name for p in targets],
                  "exposures": exposures, "seed": args.seed, "ddim_steps": pipe.stage.ddim_steps,
                  "units": "linear radiance relative to the EV-0 frame (I^2.2 / e_k)",
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(out / "hdrvdiff_infer.json", json.dumps(record, indent=2))
    except (TrainError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(targets)} EXR frame(s) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.hdrvdiff.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
