"""``python -m augment.run --root ROOT``: realistic LDR video for every rendered clip (one Ray task per clip)."""
from __future__ import annotations

import argparse
import sys
import textwrap

from augment.clip import AugTask, augment_clip
from hdr import cli
from hdr.dataset import layout
from hdr.dataset.ldr import n_exposures
from hdr.degrade.presets import PRESETS, apply_overrides, check_overrides, check_preset, load_preset, override_fields
from hdr.storage import Store


class _AlternatingAction(argparse.Action):
    """``--alternating N`` (the old spelling) sets ``--kind altN``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, f"alt{values}")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help; the description and the preset list keep their lines."""


def presets_epilog() -> str:
    """One line per preset: its name and its ordered pipeline (:meth:`hdr.degrade.presets.Preset.pipeline`)."""
    w = max(map(len, PRESETS))
    return "presets (--preset NAME), each an ordered pipeline of a single-exposure clip:\n" + "\n".join(
        f"  {name:<{w}}  {' -> '.join(preset.pipeline())}" for name, preset in PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=cli.prog("augment.run"),
        description=textwrap.fill("Degrade every rendered clip (DiffHDR §3.1.2) into 8-bit LDR frames, exposure masks "
                                  "and aug.json under <clip>/ldr/<aug_id>/. Rerun the same command to resume.", 79),
        epilog=presets_epilog(),
        formatter_class=_Formatter,
    )
    cli.add_root(p, aliases=("--dataset",), help="dataset root written by render.run (path or URL)")
    p.add_argument("--preset", default="paper", metavar="NAME|FILE.yaml",
                   help="degradation preset (pipelines below): "
                   + "; ".join(f"{k}: {v.notes.split(':')[0].split(' (')[0]}" for k, v in PRESETS.items())
                   + "; or a YAML file of preset fields and steps (docs/augment.md)")
    cli.add_set(p, fields=", ".join(override_fields()) + ", or step.NAME.FIELD for a field of one of the preset's "
                "steps (e.g. --set sigma_s_range=[0,0.01] --set rho=0.7 --set step.video.crf=[18,24])")
    p.add_argument("--per-clip", type=int, default=1, help="augmentations per clip")
    cli.add_kind(p)
    p.add_argument("--alternating", type=int, choices=(2, 3), dest="kind", action=_AlternatingAction,
                   default=argparse.SUPPRESS, metavar="N", help="deprecated spelling of --kind altN")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--preview", action="store_true", help="also write preview.mp4 per augmentation (needs PyAV)")
    p.add_argument("--overwrite", action="store_true", help="redo augmentations that exist with other settings")
    cli.add_quiet(p)
    cli.add_ray(p, cpus_per_task=1, what="clip")
    return p


def parse_overrides(items: list[str]) -> tuple:
    """["rho=0.7", "sigma_s_range=[0, 0.01]"] -> (("rho", 0.7), ("sigma_s_range", (0.0, 0.01))); ValueError
    (one line) on a malformed item (:func:`hdr.cli.parse_set`) or an unknown field (the presets' check)."""
    return check_overrides(cli.parse_set(items))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        preset = apply_overrides(load_preset(args.preset), overrides)
        check_preset(preset)  # a step that cannot run (a curve file missing, a codec not built) fails here, once
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = Store(args.root)
    clips = sorted(layout.finished_clips(store))
    if not clips:
        print(f"error: no rendered clips (*/*/clip.json) in {args.root}", file=sys.stderr)
        return 2
    alternating = n_exposures(args.kind)
    tasks = [AugTask(args.root, h, c, preset.name, args.per_clip, args.seed, alternating, args.overwrite,
                     args.preview, overrides, preset.to_json()) for h, c in clips]

    def on_result(task: AugTask, res: dict) -> cli.Tally:
        counts: dict[str, int] = {}
        for status in res.values():
            counts[status] = counts.get(status, 0) + 1
        return cli.Tally(counts=counts)

    def on_error(task: AugTask, message: str) -> cli.Tally:
        line = f"{task.hdri_id}/{task.clip_id}: {message}"
        return cli.Tally(counts={"failed": task.per_clip}, problems=[line], say=[f"failed: {line}"])

    run = cli.StageRun(
        stage="augment", fn=augment_clip, tasks=tasks, store=store, argv=argv, on_result=on_result, on_error=on_error,
        counts={"written": 0, "skipped": 0, "failed": 0},
        record={"preset": preset.name, "preset_source": args.preset, "overrides": dict(overrides),
                "per_clip": args.per_clip, "kind": args.kind, "alternating": alternating or None, "seed": args.seed},
        summary="wrote {written} augmentations, {skipped} already done, {failed} failed",
        reads=(args.root,), writes=(args.root,))  # probed on every node before the fan-out (Ray only)
    opts = cli.ray_options(args, retry_exceptions=[OSError, MemoryError])
    return cli.run_stage(run, use_ray=not args.no_ray, opts=opts, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
