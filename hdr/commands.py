"""``hdrvid <stage> [args]``: one command for every stage, the same as ``python -m <module>`` of that stage.

    hdrvid render --hdris polyhaven/ --root data      = python -m render.run --hdris polyhaven/ --root data
    hdrvid manifests build --root data                = python -m manifests build --root data

A stage's module is imported only when it is chosen (``hdr`` itself never imports the stages).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hdr import cli

# stage -> (module whose main(argv) runs it, one-line description)
STAGES: dict[str, tuple[str, str]] = {
    "fetch": ("render.fetch", "download the Poly Haven HDRI library (verified, resumable, with source records)"),
    "render": ("render.run", "render HDR camera clips from equirectangular HDRIs (Blender Cycles or the direct "
               "engine)"),
    "augment": ("augment.run", "degrade every rendered clip into realistic LDR video with exposure masks"),
    "caption": ("caption.run", "caption every clip's over- and underexposed regions (Qwen3-VL, vLLM or image "
                "statistics)"),
    "manifests": ("manifests.__main__", "versioned, content-hashed records of a dataset: build, list, show, diff, "
                  "verify, export, report"),
    "train": ("train.run", "train a model (DiffHDR, HDR-V-Diff) on the train split of a manifest"),
    "infer": ("train.infer", "run a trained model on an LDR video"),
    "evaluate": ("evaluate.run", "score predicted HDR clips against the ground truth"),
}


def _module_prog(module: str) -> str:
    """The name the stage's parser asks :func:`hdr.cli.prog` for (``manifests`` for ``manifests.__main__``)."""
    return module[: -len(".__main__")] if module.endswith(".__main__") else module


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, STAGES))
    table = "\n".join(f"  {name:{width}s}  {desc}" for name, (_, desc) in STAGES.items())
    p = argparse.ArgumentParser(
        prog="hdrvid",
        description="The HDR/LDR video data toolkit: render -> augment -> caption -> manifests -> train/infer -> "
        "evaluate. Every stage takes the same vocabulary (--root, --device, --quiet, --set, --kind, the Ray flags).",
        epilog=f"stages:\n{table}\n\n'hdrvid STAGE --help' shows a stage's own options; 'hdrvid STAGE ...' is the "
        "same as 'python -m MODULE ...' of that stage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="the stage to run (listed below)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="...", help="the stage's own arguments")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help(sys.stderr)
        return 2
    build_parser().parse_args(argv[:1])  # the stage (or --help); everything after it belongs to the stage
    stage, rest = argv[0], argv[1:]
    module = STAGES[stage][0]
    cli.invoked_as(_module_prog(module), f"hdrvid {stage}")
    return int(importlib.import_module(module).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
