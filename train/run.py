"""``python -m train.run --manifest M --model diffhdr|hdrvdiff [--stage S] --config C.yaml --run RUN``

Trains a registered model (``train.MODELS``) on the train split of a manifest with the shared engine
(``train/engine.py``). Rerunning the same command continues from the newest checkpoint in RUN. Multi-GPU:
``accelerate launch --config_file train/configs/accelerate_fsdp.yaml -m train.run ...``. Old spellings kept as
aliases: ``--out`` (``--run``), ``--no-progress`` (``--quiet``). ``--export-format diffusers,diffsynth,comfyui`` (or
``export: {formats: [...]}`` in the config; the flag wins) also writes the DiffHDR LoRA in DiffSynth's and ComfyUI's
key layouts (``train.diffhdr.lora_layouts``); it changes only the exported files, so it is not part of what a resume
compares.
"""
from __future__ import annotations

import argparse
import sys

from hdr.cli import CliError, add_device, add_quiet, add_set, prog, resolve_device
from train import MODELS, model_package
from train.engine import TrainError, load_config, one_line_config_warnings, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("train.run"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest version file (ROOT/manifests/vNNNN.parquet) or URL")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="which trainer")
    p.add_argument("--stage", default=None,
                   help="training stage of a staged model (hdrvdiff: ldm, tcam, recon); without it a staged model "
                   "trains every stage in order, each into RUN/<stage>")
    p.add_argument("--config", required=True, help="run config YAML (see train/configs/)")
    p.add_argument("--run", "--out", dest="run", required=True,
                   help="run folder (created; an existing run with the same config resumes; --out: old spelling)")
    p.add_argument("--export-format", default=None, metavar="LAYOUTS",
                   help="LoRA layouts to export, comma-separated: diffusers (RUN/lora.safetensors, always), diffsynth, "
                   "comfyui (RUN/lora.<layout>.safetensors beside it; DiffHDR); default: the config's export.formats, "
                   "else diffusers")
    p.add_argument("--cache-latents", action="store_true",
                   help="cache target latents on disk (DiffHDR: HDR latents per clip/window/exposure shift/VAE)")
    add_device(p)
    add_set(p, fields="train.*, data.*, model.*, flow.* of the config, e.g. --set train.steps=100 --set "
            "data.kind=alt2")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder that holds a different config")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end this process after N optimizer steps in total (checkpointed; rerun to continue)")
    add_quiet(p)
    return p


def export_formats(section, flag: str | None):
    """The requested export layouts as given (None: the task's default; the task validates them):
    ``--export-format`` wins over the config's ``export: {formats: [...]}``."""
    if section is not None and (not isinstance(section, dict) or set(section) - {"formats"}):
        raise TrainError("config export: only the key formats (a list of diffusers, diffsynth, comfyui) is known")
    return flag if flag is not None else (section or {}).get("formats")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with one_line_config_warnings():
        return _main(args)


def _main(args) -> int:
    try:
        device = resolve_device(args.device)
        config = load_config(args.config, args.overrides)
        config["model_name"] = args.model
        config["stage"] = args.stage
        config["manifest"] = str(args.manifest)
        if args.cache_latents:
            config.setdefault("data", {})["cache_latents"] = True
        formats = export_formats(config.pop("export", None), args.export_format)
        try:
            from hdr.dataset import open_manifest
        except ImportError as e:
            raise TrainError(f"the manifests package is not available ({e})") from None
        try:
            m = open_manifest(args.manifest)
        except (OSError, ValueError, KeyError) as e:
            raise TrainError(f"{args.manifest}: cannot open manifest ({e})") from None
        try:
            pkg = model_package(args.model)
        except (KeyError, ModuleNotFoundError) as e:
            raise TrainError(str(e).strip("'\"")) from None
        if args.stage is None and hasattr(pkg, "train_all_stages"):  # a staged model without --stage: every stage
            if formats is not None:
                raise TrainError(f"model {args.model!r}: --export-format / export.formats is for LoRA exports")
            res = pkg.train_all_stages(config, m, args.run, device=device, overwrite=args.overwrite,
                                       stop_after=args.stop_after, progress=not args.quiet)
        else:
            if not hasattr(pkg, "make_task"):
                raise TrainError(f"model {args.model!r}: {pkg.__name__} has no make_task(config, manifest)")
            task = pkg.make_task(config, m)
            if formats is not None:
                if not hasattr(task, "set_export_formats"):
                    raise TrainError(f"model {args.model!r}: --export-format / export.formats is for LoRA exports")
                task.set_export_formats(formats)
            res = train(task, config, args.run, device=device, manifest=m, overwrite=args.overwrite,
                        stop_after=args.stop_after, progress=not args.quiet)
    except (TrainError, CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue from the last checkpoint", file=sys.stderr)
        return 130
    if not res.is_main:
        return 0
    done = "finished" if res.exported else "stopped (rerun to continue)"
    loss = res.last_metrics.get("loss")
    print(f"{done} at step {res.step}" + (f", loss {loss:.5f}" if loss is not None else "")
          + (f"; wrote {', '.join(res.exported)}" if res.exported else "") + f" -- run folder {res.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
