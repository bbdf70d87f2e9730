"""``python -m augment.run --dataset ROOT``: realistic LDR video for every rendered clip (one Ray task per clip)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import yaml
from tqdm import tqdm

from augment.clip import AugTask, augment_clip
from augment.degrade import PRESETS, Preset
from hdr.cluster import RayOptions, run_tasks
from hdr.storage import Store
from render import layout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m augment.run",
        description="Degrade every rendered clip (DiffHDR §3.1.2) into 8-bit LDR frames, exposure masks and aug.json "
        "under <clip>/ldr/<aug_id>/. Rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="dataset root written by render.run (path or URL)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set sigma_s_range=[0,0.01] --set rho=0.7 (repeatable; fields: "
                   + ", ".join(f.name for f in dataclasses.fields(Preset) if f.name not in ("name", "notes")) + ")")
    p.add_argument("--per-clip", type=int, default=1, help="augmentations per clip")
    p.add_argument("--alternating", type=int, choices=(2, 3), help="alternating-exposure sequences (HDR-V-Diff)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--preview", action="store_true", help="also write preview.mp4 per augmentation (needs PyAV)")
    p.add_argument("--overwrite", action="store_true", help="redo augmentations that exist with other settings")
    p.add_argument("--no-ray", action="store_true", help="run in this process, one clip after another")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--retries", type=int, default=2, help="Ray retries of a task whose worker or node died")
    p.add_argument("--max-in-flight", type=int, default=0, help="tasks submitted at once (0: 2x cluster CPUs)")
    p.add_argument("--ray-resource", action="append", default=[], metavar="NAME",
                   help="only schedule on nodes that advertise this custom resource; repeatable")
    return p


def parse_overrides(items: list[str]) -> tuple:
    """["rho=0.7", "sigma_s_range=[0, 0.01]"] -> (("rho", 0.7), ("sigma_s_range", (0.0, 0.01))); ValueError on an
    unknown field or a malformed item."""
    fields = {f.name for f in dataclasses.fields(Preset)} - {"name", "notes"}
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        value = yaml.safe_load(text)
        out.append((key, tuple(value) if isinstance(value, list) else value))
    return tuple(out)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = Store(args.dataset)
    clips = sorted(layout.finished_clips(store))
    if not clips:
        print(f"error: no rendered clips (*/*/clip.json) in {args.dataset}", file=sys.stderr)
        return 2
    tasks = [AugTask(args.dataset, h, c, args.preset, args.per_clip, args.seed, args.alternating or 0,
                     args.overwrite, args.preview, overrides) for h, c in clips]
    counts = {"written": 0, "skipped": 0, "failed": 0}
    failures = []
    bar = tqdm(total=len(tasks), unit="clip", desc="augment", file=sys.stderr, dynamic_ncols=True)

    def on_result(task, res):
        for v in res.values():
            counts[v] += 1
        bar.update(1)

    def on_error(task, msg):
        counts["failed"] += task.per_clip
        failures.append(f"{task.hdri_id}/{task.clip_id}: {msg}")
        tqdm.write(f"failed: {task.hdri_id}/{task.clip_id}: {msg}", file=sys.stderr)
        bar.update(1)

    opts = RayOptions(address=args.address, num_cpus=1, max_retries=args.retries,
                      retry_exceptions=[OSError, MemoryError], max_in_flight=args.max_in_flight,
                      resources={r: 0.01 for r in args.ray_resource})
    started = time.time()
    try:
        run_tasks(augment_clip, tasks, use_ray=not args.no_ray, opts=opts, on_result=on_result, on_error=on_error)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: finished augmentations are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    bar.close()
    layout.write_run_record(store, "augment", started, argv, preset=args.preset, overrides=dict(overrides),
                            per_clip=args.per_clip, alternating=args.alternating, seed=args.seed, counts=counts,
                            failures=failures)
    summary = f"wrote {counts['written']} augmentations, {counts['skipped']} already done, {counts['failed']} failed"
    print(summary, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
