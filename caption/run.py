"""``python -m caption.run --dataset ROOT --model MODEL``: structured over/under captions for every rendered clip."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from tqdm import tqdm

from caption.backends import BACKENDS, DEFAULT_MODEL, BackendError, BackendSpec, resolve_device
from caption.clip import CaptionSettings, CaptionTask, caption_clips, settings_hash
from caption.frames import MASK_MODES, REINHARD_KEY
from hdr.cluster import RayOptions, run_tasks
from hdr.storage import Store
from render import layout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m caption.run",
        description="Caption every rendered clip as '[overexposed: ...]; [underexposed: ...]' (DiffHDR §3.4.2, "
        "appendix E) into <clip>/caption.json. Rerun the same command to resume: clips whose caption.json has the "
        "same backend, model and prompt hash are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="dataset root (path or URL) written by render.run/augment.run")
    p.add_argument("--backend", choices=BACKENDS, default="qwen3vl",
                   help="qwen3vl: transformers; vllm: vLLM on CUDA GPUs; stats: no model, image statistics")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Qwen3-VL checkpoint: a local folder or a hub id")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of --model")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
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
    ray = p.add_mutually_exclusive_group()
    ray.add_argument("--ray", dest="ray", action="store_true", default=None,
                     help="fan out with Ray (default: only when the device is a GPU or --address is given)")
    ray.add_argument("--no-ray", dest="ray", action="store_false", help="one process, one batch after another")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="GPUs per Ray task on a GPU device: one model per GPU worker (vllm: = --tensor-parallel)")
    p.add_argument("--tensor-parallel", type=int, default=1, help="vllm: GPUs per model")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm: share of GPU memory to use")
    p.add_argument("--retries", type=int, default=2, help="Ray retries of a task whose worker died")
    p.add_argument("--ray-resource", action="append", default=[], metavar="NAME",
                   help="only schedule on nodes that advertise this custom resource (e.g. caption); repeatable")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    store = Store(args.dataset)
    clips = sorted(layout.finished_clips(store))
    if not clips:
        print(f"error: no rendered clips (*/*/clip.json) in {args.dataset}", file=sys.stderr)
        return 2
    if args.frames < 1 or args.batch_size < 1 or args.attempts < 1:
        print("error: --frames, --batch-size and --attempts must be >= 1", file=sys.stderr)
        return 2
    spec = BackendSpec(name=args.backend, model=None if args.backend == "stats" else args.model,
                       revision=args.revision, device=args.device, dtype=args.dtype,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       tensor_parallel=args.tensor_parallel, gpu_memory_utilization=args.gpu_memory_utilization,
                       max_images=args.frames * (2 if args.masks == "separate" else 1))
    settings = CaptionSettings(frames=args.frames, mask_mode=args.masks, aug=args.aug, min_pixels=args.min_pixels,
                               max_pixels=args.max_pixels, attempts=args.attempts, key=args.reinhard_key)
    remote = bool(args.address or os.environ.get("RAY_ADDRESS"))
    on_gpu = args.backend != "stats" and (remote or resolve_device(args.device).startswith("cuda"))
    use_ray = args.ray if args.ray is not None else (on_gpu or remote)
    tasks = [CaptionTask(args.dataset, tuple(clips[i : i + args.batch_size]), spec, settings, args.overwrite,
                         args.redo_fallbacks) for i in range(0, len(clips), args.batch_size)]
    print(f"{len(clips)} clips in {store.uri()}; backend {args.backend}"
          f"{'' if args.backend == 'stats' else ' ' + args.model}; prompt hash "
          f"{settings_hash(args.backend, settings)}; {'Ray' if use_ray else 'one process'}", file=sys.stderr)

    counts = {"written": 0, "skipped": 0, "conflict": 0, "failed": 0}
    problems: list[str] = []
    bar = tqdm(total=len(clips), unit="clip", desc="caption", file=sys.stderr, dynamic_ncols=True)

    def on_result(task, res):
        for key, status in res.items():
            kind = status.split(":", 1)[0]
            counts[kind] += 1
            if kind in ("conflict", "failed"):
                problems.append(f"{key}: {status}")
                tqdm.write(f"{key}: {status}", file=sys.stderr)
        bar.update(len(task.clips))

    def on_error(task, msg):
        for h, c in task.clips:
            counts["failed"] += 1
            problems.append(f"{h}/{c}: failed: {msg}")
        tqdm.write(f"failed: {len(task.clips)} clips from {task.clips[0][0]}/{task.clips[0][1]}: {msg}",
                   file=sys.stderr)
        bar.update(len(task.clips))

    opts = RayOptions(address=args.address, num_cpus=1, max_retries=args.retries, retry_exceptions=[OSError],
                      num_gpus=(max(args.gpus_per_worker, args.tensor_parallel) if on_gpu else 0),
                      resources={r: 0.01 for r in args.ray_resource})
    try:
        if use_ray:
            run_tasks(caption_clips, tasks, use_ray=True, opts=opts, on_result=on_result, on_error=on_error)
        else:  # in-process: a setup error (no model, no vLLM) is one line, not one per batch
            for task in tasks:
                try:
                    res = caption_clips(task)
                except BackendError as e:
                    bar.close()
                    print(f"error: {e}", file=sys.stderr)
                    return 2
                except Exception as e:  # noqa: BLE001  (a failed batch is recorded; the rest go on)
                    on_error(task, " ".join(f"{type(e).__name__}: {e}".split()))
                else:
                    on_result(task, res)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: written captions are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    bar.close()

    layout.write_run_record(store, "caption", started, argv, backend=dataclasses.asdict(spec),
                            settings=dataclasses.asdict(settings), prompt_hash=settings_hash(args.backend, settings),
                            use_ray=use_ray, counts=counts, problems=problems)
    print(f"captioned {counts['written']} clips, {counts['skipped']} already done, {counts['failed']} failed, "
          f"{counts['conflict']} conflicting", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
