"""``python -m caption.run --root ROOT --weights WEIGHTS``: structured over/under captions for every rendered clip."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from caption.backends import BACKENDS, DEFAULT_MODEL, BackendError, BackendSpec
from caption.clip import CaptionSettings, CaptionTask, caption_clips, settings_hash
from caption.frames import MASK_MODES, REINHARD_KEY
from hdr import cli
from hdr.cluster import fit_cpus
from hdr.dataset import layout
from hdr.storage import Store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=cli.prog("caption.run"),
        description="Caption every rendered clip as '[overexposed: ...]; [underexposed: ...]' (DiffHDR §3.4.2, "
        "appendix E) into <clip>/caption.json. Rerun the same command to resume: clips whose caption.json has the "
        "same backend, model and prompt hash are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_root(p, aliases=("--dataset",), help="dataset root (path or URL) written by render.run/augment.run")
    p.add_argument("--backend", choices=BACKENDS, default="qwen3vl",
                   help="qwen3vl: transformers; vllm: vLLM on CUDA GPUs; stats: no model, image statistics")
    p.add_argument("--weights", "--model", dest="weights", default=DEFAULT_MODEL,
                   help="Qwen3-VL checkpoint: a local folder or a hub id")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of --weights")
    cli.add_device(p)
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32")
    p.add_argument("--frames", type=int, default=4, help="frames sampled uniformly per clip")
    p.add_argument("--masks", choices=MASK_MODES, default="contour",
                   help="how the LDR video's over/under regions are shown: outlines drawn on the frames, a separate "
                   "mask image after each frame, or not at all (text only)")
    p.add_argument("--aug", help="augmentation id whose masks are used (default: the first single-exposure one; "
                   "'none': masks of the HDR frames clipped at exposure 0)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4, help="clips per generate() call and per Ray task")
    p.add_argument("--attempts", type=int, default=3,
                   help="tries per clip (the prompt, then stricter retries) before the image-statistics fallback")
    p.add_argument("--min-pixels", type=int, default=64 * 64, help="smallest image (pixels) given to the VLM")
    p.add_argument("--max-pixels", type=int, default=448 * 448, help="largest image (pixels) given to the VLM")
    p.add_argument("--reinhard-key", type=float, default=REINHARD_KEY, help="key value of the Reinhard tonemap")
    p.add_argument("--overwrite", action="store_true", help="redo clips captioned with another model or prompt")
    p.add_argument("--redo-fallbacks", action="store_true",
                   help="also redo clips whose caption.json records a fallback to image statistics")
    cli.add_quiet(p)
    g = cli.add_ray(p, cpus_per_task=None, gpus_per_task=None, what="batch", aliases={
        "--gpus-per-task": ("--gpus-per-worker",)}, helps={
        "--cpus-per-task": "CPUs each Ray task asks for [default: 1 on a GPU device and for --backend stats; on the "
        "CPU all of this machine's cores, so that one model is loaded at a time]",
        "--gpus-per-task": "GPUs each Ray task asks for [default: on a GPU device 1 (one model per GPU worker; vllm: "
        "--tensor-parallel), else 0]",
        "--ray-resource": "only schedule on nodes that advertise this custom resource (e.g. caption); repeatable"})
    g.add_argument("--ray", dest="no_ray", action="store_false", default=argparse.SUPPRESS,
                   help="fan out with Ray: the default, accepted for old scripts")
    p.add_argument("--tensor-parallel", type=int, default=1, help="vllm: GPUs per model")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm: share of GPU memory to use")
    return p


def caption_ray_options(args, device: str):
    """RayOptions of a caption run: a GPU device asks for GPUs (>= --tensor-parallel) and 1 CPU per task; a model on
    the CPU asks for all of this machine's CPUs (on a cluster joined by address: the largest node's), one model in
    memory at a time; image statistics for 1 CPU."""
    on_gpu = args.backend != "stats" and (device.startswith("cuda") or (device == "auto" and cli.ray_is_remote(args)))
    gpus = args.gpus_per_task
    if gpus is None:
        gpus = float(args.tensor_parallel) if on_gpu else 0.0
    elif on_gpu:
        gpus = max(gpus, float(args.tensor_parallel))
    cpus = args.cpus_per_task
    opts = cli.ray_options(args, num_gpus=gpus, retry_exceptions=[OSError])
    if cpus is None:
        if on_gpu or args.backend == "stats":
            cpus = 1
        elif cli.ray_is_remote(args):  # not the driver's cores: they may exceed every node's
            cpus = fit_cpus(opts, None, use_ray=True, cap=1 << 16)[0]
        else:
            cpus = os.cpu_count() or 1
    return dataclasses.replace(opts, num_cpus=cpus)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    use_ray = not args.no_ray
    try:  # a cluster's driver may have no GPU: there the spelling is checked, each worker resolves the device
        device = (cli.check_device(args.device) if args.backend == "stats" or cli.ray_is_remote(args)
                  else cli.resolve_device(args.device))
    except cli.CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = Store(args.root)
    clips = sorted(layout.finished_clips(store))
    if not clips:
        print(f"error: no rendered clips (*/*/clip.json) in {args.root}", file=sys.stderr)
        return 2
    if args.frames < 1 or args.batch_size < 1 or args.attempts < 1:
        print("error: --frames, --batch-size and --attempts must be >= 1", file=sys.stderr)
        return 2
    spec = BackendSpec(name=args.backend, model=None if args.backend == "stats" else args.weights,
                       revision=args.revision, device=device, dtype=args.dtype,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       tensor_parallel=args.tensor_parallel, gpu_memory_utilization=args.gpu_memory_utilization,
                       max_images=args.frames * (2 if args.masks == "separate" else 1))
    settings = CaptionSettings(frames=args.frames, mask_mode=args.masks, aug=args.aug, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, attempts=args.attempts, key=args.reinhard_key)
    tasks = [CaptionTask(args.root, tuple(clips[i : i + args.batch_size]), spec, settings, args.overwrite,
                         args.redo_fallbacks) for i in range(0, len(clips), args.batch_size)]
    print(f"{len(clips)} clips in {store.uri()}; backend {args.backend}"
          f"{'' if args.backend == 'stats' else ' ' + args.weights}; prompt hash "
          f"{settings_hash(args.backend, settings)}; {'Ray' if use_ray else 'one process'}", file=sys.stderr)

    def on_result(task: CaptionTask, res: dict) -> cli.Tally:
        t = cli.Tally(units=len(task.clips))
        for key, status in res.items():
            kind = status.split(":", 1)[0]
            t.counts[kind] = t.counts.get(kind, 0) + 1
            if kind in ("conflict", "failed"):
                t.problems.append(f"{key}: {status}")
                t.say.append(f"{key}: {status}")
        return t

    def on_error(task: CaptionTask, message: str) -> cli.Tally:
        (h0, c0), n = task.clips[0], len(task.clips)
        return cli.Tally(counts={"failed": n}, units=n, problems=[f"{h}/{c}: failed: {message}" for h, c in task.clips],
                         say=[f"failed: {n} clips from {h0}/{c0}: {message}"])

    run = cli.StageRun(
        stage="caption", fn=caption_clips, tasks=tasks, store=store, argv=argv, total=len(clips), started=started,
        on_result=on_result, on_error=on_error, counts={"written": 0, "skipped": 0, "conflict": 0, "failed": 0},
        problems_field="problems", fatal=(BackendError,),  # a setup error (no model, no vLLM): one line, exit 2
        record={"backend": dataclasses.asdict(spec), "settings": dataclasses.asdict(settings),
                "prompt_hash": settings_hash(args.backend, settings), "use_ray": use_ray},
        summary="captioned {written} clips, {skipped} already done, {failed} failed, {conflict} conflicting",
        reads=(args.root,), writes=(args.root,))  # probed on every node before the fan-out (Ray only)
    opts = caption_ray_options(args, device)
    run.record["cpus_per_task"] = opts.num_cpus
    return cli.run_stage(run, use_ray=use_ray, opts=opts, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
