"""``python -m train.run --manifest M --model diffhdr|hdrvdiff [--stage S] --config C.yaml --out RUN``

Trains a registered model (``train.MODELS``) on the train split of a manifest with the shared engine
(``train/engine.py``). Rerunning the same command continues from the newest checkpoint in RUN. Multi-GPU:
``accelerate launch --config_file train/configs/accelerate_fsdp.yaml -m train.run ...``.
"""
from __future__ import annotations

import argparse
import sys

from train import MODELS, model_package
from train.engine import TrainError, load_config, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest version file (ROOT/manifests/vNNNN.parquet) or URL")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="which trainer")
    p.add_argument("--stage", default=None,
                   help="training stage of a staged model (hdrvdiff: ldm, tcam, recon); without it a staged model "
                   "trains every stage in order, each into RUN/<stage>")
    p.add_argument("--config", required=True, help="run config YAML (see train/configs/)")
    p.add_argument("--out", required=True, help="run folder (created; an existing run with the same config resumes)")
    p.add_argument("--cache-latents", action="store_true",
                   help="cache target latents on disk (DiffHDR: HDR latents per clip/window/exposure shift/VAE)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder that holds a different config")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end this process after N optimizer steps in total (checkpointed; rerun to continue)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        config["model_name"] = args.model
        config["stage"] = args.stage
        config["manifest"] = str(args.manifest)
        if args.cache_latents:
            config.setdefault("data", {})["cache_latents"] = True
        try:
            from manifests import open_manifest
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
            res = pkg.train_all_stages(config, m, args.out, device=args.device, overwrite=args.overwrite,
                                       stop_after=args.stop_after, progress=not args.no_progress)
        else:
            if not hasattr(pkg, "make_task"):
                raise TrainError(f"model {args.model!r}: {pkg.__name__} has no make_task(config, manifest)")
            task = pkg.make_task(config, m)
            res = train(task, config, args.out, device=args.device, manifest=m, overwrite=args.overwrite,
                        stop_after=args.stop_after, progress=not args.no_progress)
    except TrainError as e:
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
