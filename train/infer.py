"""``python -m train.infer --model diffhdr|hdrvdiff --lora RUN/lora.safetensors --video in.mp4|frames/ --out DIR``

Runs a trained model on an LDR video. ``--model`` (default diffhdr) picks the model package (``train.MODELS``);
its ``infer`` module adds the model's own options (``python -m train.infer --model M --help`` lists them).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from train import MODELS, model_package


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="diffhdr", choices=sorted(MODELS))
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(prog="python -m train.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="diffhdr", choices=sorted(MODELS), help="which model (default: diffhdr)")
    try:
        pkg = model_package(known.model)
        mod = importlib.import_module(pkg.__name__ + ".infer")
    except (KeyError, ModuleNotFoundError) as e:
        print(f"error: model {known.model!r} has no inference module ({str(e).strip(chr(39))})", file=sys.stderr)
        return 2
    if not (hasattr(mod, "add_arguments") and hasattr(mod, "main")):
        print(f"error: {mod.__name__} needs add_arguments(parser) and main(args)", file=sys.stderr)
        return 2
    mod.add_arguments(p)
    args = p.parse_args(argv)
    try:
        return int(mod.main(args) or 0)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
