"""``python -m render.run``: render the paper's camera programs from a folder of equirectangular HDRIs.

The driver is thin: it finds the HDRIs, works out what is left to do, and fans one task per HDRI out to Ray
(:func:`render.job.render_hdri` does the work). Rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from hdr import cli
from hdr.cluster import RayOptions, run_tasks
from hdr.dataset import layout
from hdr.io import read_header
from hdr.storage import Store, human_bytes
from render import hdri as hdri_mod
from render.engines import ENGINES
from render.job import NEGATIVE_TEXELS, HdriResult, HdriTask, RenderSettings, render_hdri
from render.programs import GROUPS, PROGRAMS, parse_programs

FAILURES_FILE = layout.FAILURES_FILE


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 1280x720, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {text!r}")
    return w, h


GPU_DEVICES = ("cuda", "optix", "hip", "oneapi", "metal")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=cli.prog("render.run"),
        description="Render short HDR camera sequences (DiffHDR §3.1.1) from equirectangular HDRIs with Blender "
        "Cycles, one Ray task per HDRI. Output: ROOT/<hdri_id>/<clip_id>/frame_0000.exr ... + clip.json. "
        "Rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--hdris", help="folder or URL (s3://, gs://) searched recursively for .exr/.hdr maps "
                   "[default: the 8 CC0 PolyHaven maps inside the bpy wheel]")
    cli.add_root(p, default="renders", aliases=("--out",), help="dataset root written: local folder or URL")
    p.add_argument("--programs", default="all",
                   help=f"comma list of programs ({', '.join(PROGRAMS)}) or groups ({', '.join(GROUPS)})")
    p.add_argument("--frames", type=int, default=81, help="frames per clip")
    p.add_argument("--resolution", type=parse_resolution, default=(1280, 720), help="WIDTHxHEIGHT")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per pixel: Cycles' count [default: the Blender engine's]; direct engine: at least "
                   "this many [default: chosen per frame from the map's texels per pixel, any map size]")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; every clip's draws derive from it")
    p.add_argument("--engine", choices=ENGINES, default="blender",
                   help="blender (Cycles) or direct (the same frames as a re-projection; validated against Cycles)")
    p.add_argument("--backend", choices=("auto", "numpy", "torch"), default="auto",
                   help="array library of the direct engine: auto = torch when it is installed (several times "
                   "faster; on --device cuda when there is a GPU), else numpy")
    p.add_argument("--max-samples", type=int, default=256,
                   help="direct engine: cap of its adaptive per-pixel sample grid; above it the map is mip-prefiltered "
                   "(faster on 16k maps, ~1-3%% less accurate next to small suns)")
    cli.add_device(p, help="auto (a GPU when Blender/torch on the worker sees one, else the CPU), cpu; blender also "
                   "cuda, optix, hip, oneapi, metal; direct+torch also cuda, cuda:N")
    p.add_argument("--shutter", type=float, default=0.0,
                   help="motion blur: the shutter is open for this fraction of the frame interval, centred on the "
                   "frame (0 = none, 0.5 = a 180 degree shutter); the camera's own motion is integrated in HDR "
                   "(Cycles' camera motion blur; the direct engine averages sub-frame poses)")
    p.add_argument("--half", action="store_true",
                   help="write half-float EXR (7.6x smaller); radiance above 65504 is clamped and the clamp recorded")
    p.add_argument("--compression", default="zip", help="EXR compression: zip, piz, zips, none, ...")
    p.add_argument("--negative-texels", choices=NEGATIVE_TEXELS, default="signed",
                   help="the map's negative texels (lossy DWAA/DWAB ringing): signed = render the decoded map as it "
                   "is, clamp each filtered pixel at 0 (default); redistribute = fill them from positive neighbours "
                   "first, keeping the energy on the sphere; clamp = set them to 0 first (the old policy)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-render clips that are complete or were made with other settings (their folders are "
                   "replaced, including any augmentations/captions inside)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, disk and core-hour estimates; render nothing")
    p.add_argument("--no-probe", action="store_true", help="with --dry-run: skip the one-clip timing probe")
    cli.add_quiet(p)
    cli.add_ray(p, cpus_per_task=cli.default_cpus(), gpus_per_task=None, tasks_per_worker=4, what="HDRI", helps={
        "--cpus-per-task": "CPUs reserved per HDRI task (also Cycles' thread count)",
        "--gpus-per-task": "GPUs reserved per task [default: 1 when --device names a GPU (cuda, optix, hip, oneapi, "
        "metal), else 0; with --device auto on a cluster, give it to place tasks on GPU nodes]",
        "--tasks-per-worker": "recycle a worker process after this many HDRIs (bounds bpy memory growth)",
        "--ray-resource": "only schedule on nodes that advertise this custom resource (e.g. blender); repeatable"})
    return p


def estimate_task_memory(store: Store, rel: str) -> int:
    """Bytes a render task needs for this map: bpy itself, our float32 copy, Blender's RGBA float copy."""
    try:
        with store.open(rel) as f:
            h = read_header(f, name=rel)
        texels = h.width * h.height
    except Exception:  # noqa: BLE001  (the worker reports unreadable files properly)
        texels = 0
    return 800 * 1024**2 + texels * (12 + 16)


def _states(out: Store, entries, settings: RenderSettings) -> dict:
    """(hdri_id, program) -> (state, detail), listed in parallel (object stores pay a round trip per clip)."""
    keys = [(e.hdri_id, p) for e in entries for p in settings.programs]
    fp = settings.fingerprint()
    with ThreadPoolExecutor(16) as pool:
        states = pool.map(lambda k: layout.clip_state(out, k[0], k[1], fp), keys)
        return dict(zip(keys, states))


def _probe(settings: RenderSettings, hdris_url: str, entry, use_ray: bool, opts: RayOptions) -> dict | None:
    """Render 3 frames of one clip into a temporary root: seconds per frame and bytes per frame."""
    tmp = tempfile.mkdtemp(prefix="render-probe-")
    program = settings.programs[0]
    s = dataclasses.replace(settings, frames=3, programs=(program,), overwrite=False)
    task = HdriTask(hdris_url, entry.rel, entry.hdri_id, tmp, s)
    box = {}
    run_tasks(render_hdri, [task], use_ray=use_ray, opts=opts,
              on_result=lambda _t, r: box.update(result=r), on_error=lambda _t, m: box.update(error=m))
    try:
        meta = Store(tmp).read_json(f"{entry.hdri_id}/{program}/{layout.CLIP_JSON}")
    except (OSError, ValueError):
        print(f"timing probe failed: {box.get('error') or box.get('result')}", file=sys.stderr)
        return None
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "seconds_per_frame": meta["timing"]["seconds_per_frame"],
        "bytes_per_frame": sum(f["bytes"] for f in meta["frames"]) / len(meta["frames"]),
        "threads": settings.threads,
    }


def resolve_render_device(args) -> str:
    """``auto`` stays ``auto`` (each worker's engine picks its GPU or the CPU); the Cycles backends are taken as
    given; ``cuda:N`` is checked against this machine's GPUs, or only spelled right when a cluster renders."""
    device = cli.check_device(args.device, extra=GPU_DEVICES)
    if device == "auto" or cli.ray_is_remote(args):
        return device
    return cli.resolve_device(device, extra=GPU_DEVICES)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        programs = parse_programs(args.programs)
        device = resolve_render_device(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.frames < 1:
        print("error: --frames must be at least 1", file=sys.stderr)
        return 2

    hdris_url = args.hdris
    if hdris_url is None:
        default = hdri_mod.default_hdri_dir()
        if default is None:
            print("error: no --hdris given and bpy is not installed, so its bundled HDRIs cannot be used "
                  "(pip install -e '.[render]')", file=sys.stderr)
            return 2
        hdris_url = str(default)
    in_store = Store(hdris_url)
    if not in_store.fs.isdir(in_store.path()):
        print(f"error: --hdris {hdris_url}: no such folder", file=sys.stderr)
        return 2
    entries, skipped = hdri_mod.discover(in_store)
    for rel, why in skipped:
        print(f"skipping {in_store.uri(rel)}: {why}", file=sys.stderr)
    if not entries:
        print(f"error: no .exr or .hdr files found in {hdris_url}", file=sys.stderr)
        return 2

    w, h = args.resolution
    settings = RenderSettings(frames=args.frames, width=w, height=h, samples=args.samples, seed=args.seed,
                              programs=programs, engine=args.engine, backend=args.backend,
                              max_samples=args.max_samples, half=args.half, compression=args.compression,
                              device=device, threads=args.cpus_per_task, overwrite=args.overwrite,
                              negative_texels=args.negative_texels, shutter=args.shutter)
    out = Store(args.root)
    states = _states(out, entries, settings)
    todo_entries = [e for e in entries
                    if any(states[(e.hdri_id, p)][0] != "complete" for p in programs)
                    and (args.overwrite or any(states[(e.hdri_id, p)][0] != "conflict" for p in programs))]
    n_clips = len(entries) * len(programs)
    n_done = sum(1 for s, _ in states.values() if s == "complete")
    conflicts = {k: d for k, (s, d) in states.items() if s == "conflict"}
    n_todo = n_clips - n_done - (0 if args.overwrite else len(conflicts))
    if args.overwrite:
        n_todo = n_clips

    gpus = args.gpus_per_task
    if gpus is None:
        gpus = 1.0 if device in GPU_DEVICES or device.startswith("cuda:") else 0.0
    opts = cli.ray_options(args, num_gpus=gpus)
    use_ray = not args.no_ray

    print(f"{len(entries)} HDRIs in {hdris_url}; {len(programs)} programs x {args.frames} frames at {w}x{h}, "
          f"{args.samples or 'default'} samples, engine {args.engine} -> {out.uri()}", file=sys.stderr)
    print(f"clips: {n_clips} planned, {n_done} already complete, {len(conflicts)} made with other settings, "
          f"{n_todo} to render ({n_todo * args.frames} frames)", file=sys.stderr)

    if args.dry_run:
        for e in entries:
            left = [p for p in programs if states[(e.hdri_id, p)][0] != "complete"]
            print(f"  {e.hdri_id:32s} {in_store.uri(e.rel)}  to render: {', '.join(left) or '-'}")
        for (hid, p), d in sorted(conflicts.items()):
            print(f"  conflict: {hid}/{p} {d}")
        probe = None if args.no_probe else _probe(settings, hdris_url, entries[0], use_ray, opts)
        if probe:
            frames = n_todo * args.frames
            cores = args.cpus_per_task
            print(f"probe ({entries[0].hdri_id}, 3 frames): {probe['seconds_per_frame']:.2f} s/frame on "
                  f"{cores} cores, {human_bytes(probe['bytes_per_frame'])}/frame")
            print(f"estimate: {human_bytes(probe['bytes_per_frame'] * frames)} of EXR, "
                  f"{probe['seconds_per_frame'] * frames * cores / 3600:.2f} core-hours "
                  f"({probe['seconds_per_frame'] * frames / 3600:.2f} h wall on one {cores}-core task slot)")
        return 0

    conflicting = [] if args.overwrite else [
        {"hdri": hid, "clip": p, "error": f"{hid}/{p} {d}; not overwritten (use another --root, or --overwrite)"}
        for (hid, p), d in sorted(conflicts.items())]

    def on_result(task: HdriTask, res: HdriResult) -> cli.Tally:
        t = cli.Tally(units=0, say=[f"failed: {res.error}"] if res.error else [])
        for clip_id, c in res.clips.items():
            st = c["status"]
            if st == "skipped":
                continue  # already counted from the listing
            t.counts[st] = t.counts.get(st, 0) + 1
            if st in ("failed", "conflict"):
                t.problems.append({"hdri": task.hdri_rel, "clip": clip_id, "error": c.get("detail")})
            t.units += 1
        return t

    def on_error(task: HdriTask, message: str) -> cli.Tally:
        left = [p for p in programs if states[(task.hdri_id, p)][0] != "complete"]
        return cli.Tally(counts={"failed": len(left)}, units=len(left), say=[f"failed: {task.hdri_rel}: {message}"],
                         problems=[{"hdri": task.hdri_rel, "clip": None, "error": f"{task.hdri_rel}: {message}"}])

    def finish(record: dict, failures: list) -> str:
        if failures:
            out.write_json(FAILURES_FILE, {"run": record["started"], "failures": failures})
            return f" -- see {out.uri(FAILURES_FILE)}"
        if out.exists(FAILURES_FILE):
            out.remove(FAILURES_FILE)  # stale: this run completed everything it was asked for
        return ""

    run = cli.StageRun(
        stage="render", fn=render_hdri, store=out, argv=argv, total=n_todo,
        tasks=[HdriTask(hdris_url, e.rel, e.hdri_id, args.root, settings) for e in todo_entries],
        counts={"rendered": 0, "skipped": n_done, "conflict": len(conflicting), "failed": 0}, problems=conflicting,
        on_result=on_result, on_error=on_error, memory_of=lambda t: estimate_task_memory(in_store, t.hdri_rel),
        record={"settings": dataclasses.asdict(settings), "hdris": hdris_url}, finish=finish,
        summary="rendered {rendered} clips, {skipped} already complete, {failed} failed, {conflict} conflicting")
    return cli.run_stage(run, use_ray=use_ray, opts=opts, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
