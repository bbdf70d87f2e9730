"""``python -m render.run``: render the paper's camera programs from a folder of equirectangular HDRIs.

The driver is thin: it finds the HDRIs, works out what is left to do, and fans one task per HDRI out to Ray
(:func:`render.job.render_hdri` does the work). Rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from hdr import cli
from hdr.cluster import ClusterError, RayOptions, fit_cpus
from hdr.dataset import layout
from hdr.io import HdrImageError, read_header
from hdr.storage import Store
from render import estimate
from render import hdri as hdri_mod
from render.engines import ENGINES
from render.job import NEGATIVE_TEXELS, HdriResult, HdriTask, InputError, RenderSettings, render_hdri
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
                   help="samples per pixel. Blender: alone, a fixed count; with --noise-threshold, the adaptive "
                   "maximum [default: adaptive sampling at a quality target, see --noise-threshold]. Direct engine: "
                   "at least this many [default: chosen per frame from the map's texels per pixel, any map size]")
    p.add_argument("--noise-threshold", type=float, default=None,
                   help="Blender: Cycles' adaptive-sampling noise threshold, a pixel stops once its noise estimate is "
                   "below it; 0 = fixed sampling [default: 0.01 with at most 4096 samples, unless --samples is given "
                   "alone]")
    p.add_argument("--min-samples", type=int, default=None,
                   help="Blender, adaptive: samples per pixel before Cycles first tests convergence (it tests at the "
                   "next multiple of 16 above) [default: 4]; 0 = Cycles' automatic minimum")
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
    p.add_argument("--compression", default="auto",
                   help="EXR compression: auto = zip, except none for the direct engine writing on the CPU (where zip "
                   "would double a frame's cost to save 4-14%% of disk); zip, zips, piz, rle, none are lossless and "
                   "read by Blender 5.0 and OpenCV "
                   "4.11 (they cannot read zstd or htj2k); docs/render.md has the measured sizes and times")
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
    g = cli.add_ray(p, cpus_per_task=None, gpus_per_task=None, tasks_per_worker=4, what="HDRI", helps={
        "--cpus-per-task": "CPUs reserved per HDRI task (also Cycles' thread count) [default: min(4, the CPUs of the "
        "largest alive node that has the task's GPUs and --ray-resource; --no-ray or a private local Ray: this "
        "machine's cores)]",
        "--gpus-per-task": "GPUs reserved per task [default: 1 when --device names a GPU (cuda, optix, hip, oneapi, "
        "metal), else 0; with --device auto on a cluster, give it to place tasks on GPU nodes]",
        "--tasks-per-worker": "recycle a worker process after this many HDRIs (bounds bpy memory growth)",
        "--ray-resource": "only schedule on nodes that advertise this custom resource (e.g. blender); repeatable"})
    g.add_argument("--ray", action="store_true",
                   help="use a private local Ray even where it adds nothing (default for the direct engine: render in "
                   "this process when this machine runs one task at a time or there is one HDRI, saving Ray's "
                   "start-up of several seconds)")
    return p


def in_process_reason(args, cpus: int, n_tasks: int, cores: int | None = None) -> str | None:
    """Why the direct engine renders in this process rather than in a private local Ray, or None (Ray as asked).

    A local Ray costs ~8 s here (start 4 s, first worker and imports 2 s, shutdown 1.5 s: issue 18) and runs the
    tasks with the same cores, so where it can run only one at a time it buys nothing. Blender keeps Ray: its workers
    are recycled (``--tasks-per-worker``) because bpy's memory grows with every map."""
    if args.no_ray or args.ray or args.engine != "direct" or cli.ray_is_remote(args):
        return None
    cores = cores or os.cpu_count() or 1
    slots = max(1, cores // max(cpus, 1))
    if min(slots, n_tasks) > 1:
        return None
    why = "one HDRI to render" if n_tasks <= 1 else f"one task at a time here ({cores} cores, {cpus} per task)"
    return f"rendering in this process: {why}, where a local Ray would add seconds of start-up (--ray to use it)"


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
    """(hdri_id, program) -> (state, detail): one listing per HDRI (:func:`hdr.dataset.layout.hdri_clip_states`; on
    an object store one recursive LIST of its prefix, plus a GET of each clip.json), HDRIs listed in parallel."""
    fp = settings.fingerprint()
    hdri_ids = list(dict.fromkeys(e.hdri_id for e in entries))
    with ThreadPoolExecutor(16) as pool:
        per_hdri = pool.map(lambda h: layout.hdri_clip_states(out, h, settings.programs, fp), hdri_ids)
        return {(h, p): st for h, states in zip(hdri_ids, per_hdri) for p, st in states.items()}


def _probe(settings: RenderSettings, hdris_url: str, in_store: Store, entries, states: dict, use_ray: bool,
           opts: RayOptions):
    """The run's jobs and the cost terms a probe measures here (:mod:`render.estimate`), or (jobs, None)."""
    texels = estimate.map_texels(in_store, [e.rel for e in entries])
    done = () if settings.overwrite else ("complete", "conflict")
    jobs = [estimate.Job(clips=sum(1 for p in settings.programs if states[(e.hdri_id, p)][0] not in done),
                         frames=settings.frames, texels=texels[e.rel]) for e in entries]
    try:
        probe = estimate.run_probe(settings, hdris_url, entries, texels, use_ray=use_ray, opts=opts)
    except RuntimeError as e:
        print(f"timing probe failed: {e}", file=sys.stderr)
        return jobs, None
    return jobs, probe


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
    if args.ray and args.no_ray:
        print("error: --ray and --no-ray contradict each other", file=sys.stderr)
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

    gpus = args.gpus_per_task
    if gpus is None:
        gpus = 1.0 if device in GPU_DEVICES or device.startswith("cuda:") else 0.0
    use_ray = not args.no_ray
    opts = cli.ray_options(args, num_gpus=gpus, unhealable=(InputError, HdrImageError))
    try:  # before the tasks are built: the CPUs per task are also Cycles' thread count
        cpus, cpus_why = fit_cpus(opts, args.cpus_per_task, use_ray=use_ray)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cpus_per_task is None and cpus != cli.default_cpus():
        print(f"--cpus-per-task {cpus}: {cpus_why} (this machine alone would give {cli.default_cpus()})",
              file=sys.stderr)
    args.cpus_per_task, opts = cpus, dataclasses.replace(opts, num_cpus=cpus)  # the dry run's estimate reads args

    w, h = args.resolution
    try:
        settings = RenderSettings(frames=args.frames, width=w, height=h, samples=args.samples, seed=args.seed,
                                  programs=programs, engine=args.engine, backend=args.backend,
                                  max_samples=args.max_samples, noise_threshold=args.noise_threshold,
                                  min_samples=args.min_samples, half=args.half, compression=args.compression,
                                  device=device, threads=args.cpus_per_task, overwrite=args.overwrite,
                                  negative_texels=args.negative_texels, shutter=args.shutter)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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

    in_process = in_process_reason(args, cpus, len(todo_entries))
    if in_process:
        use_ray = False
        print(in_process, file=sys.stderr)

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
        if not args.no_probe and todo_entries:
            jobs, probe = _probe(settings, hdris_url, in_store, todo_entries, states, use_ray, opts)
            if probe:
                for line in estimate.report(probe, estimate.estimate(probe.terms, jobs), jobs, args.cpus_per_task,
                                            use_ray):
                    print(line)
        elif not todo_entries:
            print("estimate: nothing to render")
        return 0

    conflicting = [] if args.overwrite else [
        {"hdri": hid, "clip": p, "error": f"{hid}/{p} {d}; not overwritten (use another --root, or --overwrite)"}
        for (hid, p), d in sorted(conflicts.items())]

    # The bar counts frames: each published frame moves it (hdr.cluster.progress in render.job), and a finished task
    # stands for all the frames of the clips it was given to render (rendered, failed or found conflicting).
    def on_result(task: HdriTask, res: HdriResult) -> cli.Tally:
        t = cli.Tally(units=0, say=[f"failed: {res.error}"] if res.error else [])
        for clip_id, c in res.clips.items():
            st = c["status"]
            if st == "skipped":
                continue  # already counted from the listing
            t.counts[st] = t.counts.get(st, 0) + 1
            if st in ("failed", "conflict"):
                t.problems.append({"hdri": task.hdri_rel, "clip": clip_id, "error": c.get("detail")})
            t.units += args.frames
        return t

    def on_error(task: HdriTask, message: str) -> cli.Tally:
        left = programs if args.overwrite else [p for p in programs
                                                if states[(task.hdri_id, p)][0] not in ("complete", "conflict")]
        return cli.Tally(counts={"failed": len(left)}, units=len(left) * args.frames,
                         say=[f"failed: {task.hdri_rel}: {message}"],
                         problems=[{"hdri": task.hdri_rel, "clip": None, "error": f"{task.hdri_rel}: {message}"}])

    def finish(record: dict, failures: list) -> str:
        if failures:
            out.write_json(FAILURES_FILE, {"run": record["started"], "failures": failures})
            return f" -- see {out.uri(FAILURES_FILE)}"
        if out.exists(FAILURES_FILE):
            out.remove(FAILURES_FILE)  # stale: this run completed everything it was asked for
        return ""

    sources = hdri_mod.read_sources(in_store, todo_entries)  # _sources.json (render.fetch) -> clip.json hdri.source
    run = cli.StageRun(
        stage="render", fn=render_hdri, store=out, argv=argv, total=n_todo * args.frames, unit="frame", progress=True,
        postfix=("rendered", "failed"),
        tasks=[HdriTask(hdris_url, e.rel, e.hdri_id, args.root, settings, sources.get(e.rel)) for e in todo_entries],
        counts={"rendered": 0, "skipped": n_done, "conflict": len(conflicting), "failed": 0}, problems=conflicting,
        on_result=on_result, on_error=on_error, memory_of=lambda t: estimate_task_memory(in_store, t.hdri_rel),
        record={"settings": dataclasses.asdict(settings), "hdris": hdris_url,
                "cpus_per_task": {"value": cpus, "why": cpus_why}, "source_records": len(sources),
                "execution": {"ray": use_ray, "why": in_process or ("--no-ray" if args.no_ray else "Ray")}},
        finish=finish,
        reads=(hdris_url,), writes=(args.root,),
        summary="rendered {rendered} clips, {skipped} already complete, {failed} failed, {conflict} conflicting")
    return cli.run_stage(run, use_ray=use_ray, opts=opts, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
