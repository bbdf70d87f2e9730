"""``python -m train.infer --model diffhdr|hdrvdiff --run RUN --input LDR --out DIR``

Runs a trained model on an LDR video. ``--model`` (default diffhdr) picks the model package (``train.MODELS``);
its ``infer`` module adds the model's own options (``python -m train.infer --model M --help`` lists them). Every
model names the shared things the same way (:func:`add_common_arguments`): ``--run`` (the trained run folder),
``--input`` (the LDR input), ``--out`` (the prediction folder), ``--steps``, ``--seed``, ``--frames``, ``--device``,
``--quiet``, ``--half``, ``--overwrite``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hdr.cli import add_device, add_quiet, prog
from train import MODELS, model_package

COMMON_HELP = {
    "run": "trained run folder (written by python -m train.run)",
    "input": "LDR input",
    "out": "output folder for the predicted frame_NNNN.exr",
    "steps": "denoising steps",
    "seed": "seed of the starting noise",
    "frames": "convert only this many frames (default: all)",
    "half": "write half-float EXR (clamped at 65504) instead of float32",
    "overwrite": "replace existing output frames",
}


def add_common_arguments(p, *, steps_default: int | None, run_group=None, input_group=None,
                         input_aliases: tuple[str, ...] = (), steps_aliases: tuple[str, ...] = (), **help: str) -> None:
    """The flags every model's inference shares, one spelling each: ``--run --input --out --steps --seed --frames
    --device --quiet --half --overwrite``. ``help`` overrides the texts of :data:`COMMON_HELP` by flag name;
    ``run_group`` (e.g. a required mutually exclusive group) takes ``--run`` (then not required by itself), and
    ``input_group`` likewise ``--input`` (DiffHDR: ``--input`` or ``--manifest``); the
    aliases are a model's old spellings (DiffHDR's ``--video``, HDR-V-Diff's ``--ddim-steps``)."""
    unknown = sorted(set(help) - set(COMMON_HELP))
    if unknown:
        raise TypeError(f"add_common_arguments: no shared flag {', '.join(unknown)}")
    h = {**COMMON_HELP, **help}
    if run_group is None:
        p.add_argument("--run", required=True, help=h["run"])
    else:
        run_group.add_argument("--run", help=h["run"])
    if input_group is None:
        p.add_argument("--input", *input_aliases, dest="input", required=True, help=h["input"])
    else:
        input_group.add_argument("--input", *input_aliases, dest="input", help=h["input"])
    p.add_argument("--out", required=True, help=h["out"])
    p.add_argument("--steps", *steps_aliases, dest="steps", type=int, default=steps_default, help=h["steps"])
    p.add_argument("--seed", type=int, default=0, help=h["seed"])
    p.add_argument("--frames", type=int, default=None, help=h["frames"])
    add_device(p)
    add_quiet(p)
    p.add_argument("--half", action="store_true", help=h["half"])
    p.add_argument("--overwrite", action="store_true", help=h["overwrite"])


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="diffhdr", choices=sorted(MODELS))
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(prog=prog("train.infer"), description=__doc__,
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
    from train.engine import one_line_config_warnings

    try:
        with one_line_config_warnings():
            return int(mod.main(args) or 0)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
