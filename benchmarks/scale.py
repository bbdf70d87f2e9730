"""Cost curves of the bookkeeping, measured: for n clips of tiny synthetic data (8x4 px, 3 frames, one ``paper``
augmentation and a caption per clip: 15 files) on a local folder and on an S3-API server (moto on loopback), the
time and driver peak memory of

    plan          render's driver planning: ``render.hdri.discover`` of the maps + the resume listing
                  ``render.run._states`` (library calls, what ``python -m render.run`` does before the fan-out)
    build_rehash  ``manifests.build.build(rehash=True)`` on a root without versions ("no records": hashes every file)
    build_first   ``build`` on a root without versions, writers' records trusted (reads only JSON records)
    build_noop    ``build`` again, nothing changed (no new version)
    verify        ``manifests.ops.verify`` (threads; ``verify_ray``: ``use_ray=True``, local store, largest n)
    load          ``hdr.dataset.manifest.open_manifest`` + ``hdr.dataset.loader.ClipWindowDataset`` (train split,
                  stored LDR), what a trainer does at start

and the growth exponent k of each (time ~ n^k, least squares on log-log over the sizes).

    python benchmarks/scale.py [--sizes 100,1000,5600] [--stores local,s3] [--s3-sizes 100,300,1000]
                               [--s3-read-max 300] [--json PATH] [--keep DIR] [--profile DIR]

``--sizes`` are the local store's; moto answers ~100 requests/s here, so S3 has its own, smaller sizes, and the steps
that read every file run there only up to ``--s3-read-max`` clips (requests per clip are exact at any n).

Every measurement runs in its own subprocess (imports done before the clock starts), so peaks do not mix: peak MB is
that process's peak RSS during the step (Linux ``VmHWM``, reset after the imports with ``/proc/self/clear_refs``;
elsewhere ``ru_maxrss``, imports included), ``+MB`` the part above the RSS before the step.

The data: ONE clip rendered (direct engine), augmented and captioned by the library, then cloned under other
HDRI and clip ids (``h0000/highlight_zoom_in`` ... 7 programs per HDRI) with the ids rewritten in clip.json /
aug.json / caption.json and the per-file records kept (sha256, bytes, and the mtime the clone is given, or on S3 the
uploaded object's ETag). S3: the objects are put straight into the moto server's backend (it runs in this process;
HTTP PUTs at ~70/s here would take longer than the run), the measured steps talk HTTP to it through s3fs. Moto lists a
prefix by scanning every key of the bucket (O(keys) per listing, a server artefact; S3 is indexed): unless
``--moto-stock``, the listing is served from a sorted key index (same results). S3 requests are counted with a
botocore hook on s3fs's client (``before-call.s3``).
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from render.programs import PROGRAMS  # noqa: E402

STEPS = ("plan", "build_rehash", "build_first", "build_noop", "verify", "verify_ray", "load")
TINY = dict(width=8, height=4, frames=3, samples=1, engine="direct")
MTIME_NS = 1_700_000_000_000_000_000  # every cloned data file gets this mtime, and so does its record
PAPER_CLIPS = 5600
PAPER_FRAMES = 81
PAPER_FILES_PER_CLIP = PAPER_FRAMES + 1 + PAPER_FRAMES * 3 + 1 + 1  # EXRs, clip.json, PNG+masks, aug.json, caption
BUCKET = "scale"


# the data -----------------------------------------------------------------------------------------------------------
def render_settings(programs=PROGRAMS):
    from render.job import RenderSettings

    return RenderSettings(programs=tuple(programs), threads=1, **TINY)


def make_template(work: Path) -> Path:
    """Render, augment and caption ONE tiny clip with the library; returns its folder."""
    from augment.clip import AugTask, augment_clip
    from caption.clip import caption_dataset
    from render.hdri import default_hdri_dir
    from render.job import HdriTask, render_hdri

    maps = default_hdri_dir()
    if maps is None:
        sys.exit("error: bpy is not installed, so its bundled maps cannot be used (pip install -e '.[render]')")
    root = work / "template"
    if not (root / "tpl" / PROGRAMS[0] / "caption.json").exists():
        res = render_hdri(HdriTask(str(maps), "sunrise.exr", "tpl", str(root), render_settings(PROGRAMS[:1])))
        if res.count("rendered") != 1:
            sys.exit(f"error: the template clip did not render: {res}")
        augment_clip(AugTask(str(root), "tpl", PROGRAMS[0], "paper", 1, 0))
        caption_dataset(str(root))
    return root / "tpl" / PROGRAMS[0]


def load_template(clip_dir: Path) -> dict:
    """The template's data files (bytes) and records (dicts), with a sha256 for every data file."""
    clip = json.loads((clip_dir / "clip.json").read_text())
    aug_dir = next(p for p in sorted((clip_dir / "ldr").iterdir()) if (p / "aug.json").exists())
    aug = json.loads((aug_dir / "aug.json").read_text())
    frames = {fr["file"]: (clip_dir / fr["file"]).read_bytes() for fr in clip["frames"]}
    names = aug["frames"] + [aug["masks"][k] % t for k in ("over", "under") for t in range(len(aug["frames"]))]
    ldr = {n: (aug_dir / n).read_bytes() for n in names}
    return {"clip": clip, "aug": aug, "aug_id": aug_dir.name, "caption": json.loads((clip_dir / "caption.json")
            .read_text()), "frames": frames, "ldr": ldr,
            "sha": {n: hashlib.sha256(b).hexdigest() for n, b in {**frames, **ldr}.items()}}


def clip_keys(n: int) -> list[tuple[str, str]]:
    """n (hdri_id, clip_id): 7 programs per HDRI, as render names them."""
    return [(f"h{i // len(PROGRAMS):04d}", PROGRAMS[i % len(PROGRAMS)]) for i in range(n)]


def clip_records(tpl: dict, hdri_id: str, clip_id: str, file_record) -> tuple[dict, dict, dict]:
    """clip.json, aug.json, caption.json of one clone; ``file_record(name, data)`` gives the per-file record tail
    (mtime_ns or etag)."""
    clip = json.loads(json.dumps(tpl["clip"]))
    clip.update(hdri_id=hdri_id, clip_id=clip_id, program=clip_id)
    for fr in clip["frames"]:
        data = tpl["frames"][fr["file"]]
        for k in ("mtime_ns", "etag"):
            fr.pop(k, None)
        fr.update(bytes=len(data), sha256=tpl["sha"][fr["file"]], **file_record(fr["file"], data))
    aug = json.loads(json.dumps(tpl["aug"]))
    aug.update(hdri_id=hdri_id, clip_id=clip_id)
    aug["file_records"] = {n: {"bytes": len(b), "sha256": tpl["sha"][n], **file_record(n, b)}
                           for n, b in tpl["ldr"].items()}
    cap = dict(tpl["caption"], hdri_id=hdri_id, clip_id=clip_id)
    return clip, aug, cap


def check_records(clip: dict, aug: dict, cap: dict) -> None:
    from hdr.dataset.records import AugMeta, CaptionMeta, ClipMeta

    ClipMeta.from_json(clip), AugMeta.from_json(aug), CaptionMeta.from_json(cap)


def _dump(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def clone_local(tpl: dict, base: Path, n: int) -> tuple[Path, Path]:
    """``base/data`` with n cloned clips (records with mtime_ns) and ``base/maps`` with one tiny map per HDRI."""
    root, maps = base / "data", base / "maps"
    shutil.rmtree(base, ignore_errors=True)
    maps.mkdir(parents=True)
    mtime = lambda name, data: {"mtime_ns": MTIME_NS}  # noqa: E731
    keys = clip_keys(n)
    check_records(*clip_records(tpl, *keys[0], mtime))
    map_bytes = next(iter(tpl["frames"].values()))  # any small valid EXR: planning only lists the maps
    for h in sorted({h for h, _ in keys}):
        (maps / f"{h}.exr").write_bytes(map_bytes)
    for h, c in keys:
        d = root / h / c
        a = d / "ldr" / tpl["aug_id"]
        a.mkdir(parents=True)
        for folder, files in ((d, tpl["frames"]), (a, tpl["ldr"])):
            for name, data in files.items():
                p = folder / name
                p.write_bytes(data)
                os.utime(p, ns=(MTIME_NS, MTIME_NS))
        clip, aug, cap = clip_records(tpl, h, c, mtime)
        (a / "aug.json").write_bytes(_dump(aug))
        (d / "caption.json").write_bytes(_dump(cap))
        (d / "clip.json").write_bytes(_dump(clip))  # last, as render publishes it
    return root, maps


# the S3 server --------------------------------------------------------------------------------------------------
class MotoS3:
    """moto's S3 server on loopback in this process; objects can be put straight into its backend."""

    def __init__(self, indexed_listing: bool = True):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
        os.environ.update(self.env)
        if indexed_listing:
            _index_moto_listing()

    def bucket(self, name: str):
        """Create bucket ``name`` over HTTP (as a user would) and return moto's backend and bucket objects."""
        import fsspec
        from moto.s3.models import s3_backends

        fs = fsspec.filesystem("s3", use_listings_cache=False)
        if not fs.exists(name):
            fs.mkdir(name)
        for account in list(s3_backends.keys()):
            backend = s3_backends[account]["global"]
            if name in backend.buckets:
                return backend, backend.buckets[name]
        raise RuntimeError(f"bucket {name} not found in moto's backends")

    def stop(self) -> None:
        self.server.stop()


def _index_moto_listing() -> None:
    """Serve moto's prefix listings from a sorted key index (moto scans every key of the bucket per listing)."""
    from moto.s3.models import FakeDeleteMarker, FakeKey, S3Backend

    if getattr(S3Backend, "_scale_indexed", False):
        return
    stock = S3Backend.list_objects
    cache: dict[int, tuple[int, list[str]]] = {}
    gen = [0]

    def bump(fn):
        def wrapped(self, *a, **kw):
            gen[0] += 1
            return fn(self, *a, **kw)
        return wrapped

    for name in ("put_object", "delete_object", "delete_objects", "copy_object"):
        if hasattr(S3Backend, name):
            setattr(S3Backend, name, bump(getattr(S3Backend, name)))

    def list_objects(self, bucket, prefix, delimiter, marker, max_keys):
        if not prefix or type(bucket).__name__ != "FakeBucket":
            return stock(self, bucket, prefix, delimiter, marker, max_keys)
        hit = cache.get(id(bucket))
        if hit is None or hit[0] != gen[0]:
            hit = cache[id(bucket)] = (gen[0], sorted(bucket.keys.keys()))
        names = hit[1]
        keys, folders = [], set()
        for i in range(bisect.bisect_left(names, prefix), len(names)):
            name = names[i]
            if not name.startswith(prefix):
                break
            rest = name[len(prefix):]
            if delimiter and delimiter in rest:
                folders.add(f"{prefix}{rest.split(delimiter)[0]}{delimiter}")
                continue
            key = bucket.keys.get(name)
            if isinstance(key, FakeKey) and not isinstance(key, FakeDeleteMarker):
                keys.append(key)
        folders = sorted(folders)
        if marker:
            keys = self._get_results_from_token(keys, self._pagination_tokens.get(marker) or marker)
        if max_keys is not None:
            keys, truncated, next_marker = self._truncate_result(keys, max_keys)
        else:
            truncated, next_marker = False, None
        return keys, folders, truncated, next_marker

    S3Backend.list_objects = list_objects
    S3Backend._scale_indexed = True


def seed_s3(moto: MotoS3, tpl: dict, n: int, bucket: str) -> tuple[str, str]:
    """The local clone's layout on ``s3://bucket/{data,maps}``, put into moto's backend; records carry the ETags."""
    backend, _ = moto.bucket(bucket)
    put = lambda key, data: backend.put_object(bucket, key, data)  # noqa: E731
    keys = clip_keys(n)
    map_bytes = next(iter(tpl["frames"].values()))
    for h in sorted({h for h, _ in keys}):
        put(f"maps/{h}.exr", map_bytes)
    for h, c in keys:
        etags = {}
        for prefix, files in ((f"data/{h}/{c}", tpl["frames"]), (f"data/{h}/{c}/ldr/{tpl['aug_id']}", tpl["ldr"])):
            for name, data in files.items():
                etags[name] = put(f"{prefix}/{name}", data).etag.strip('"')
        clip, aug, cap = clip_records(tpl, h, c, lambda name, data: {"etag": etags[name]})
        put(f"data/{h}/{c}/ldr/{tpl['aug_id']}/aug.json", _dump(aug))
        put(f"data/{h}/{c}/caption.json", _dump(cap))
        put(f"data/{h}/{c}/clip.json", _dump(clip))
    return f"s3://{bucket}/data", f"s3://{bucket}/maps"


def drop_versions(root: str) -> None:
    """Remove ``root/manifests`` (between the rehash build and the trusted first build)."""
    if "://" not in root:
        d = Path(root) / "manifests"
        if d.exists():
            for p in d.iterdir():
                os.chmod(p, 0o644)
            shutil.rmtree(d)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, use_listings_cache=False)
    if fs.exists(f"{path}/manifests"):
        fs.rm(f"{path}/manifests", recursive=True)


# one measurement (in a child process) ---------------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(step: str, root: str, maps: str, n: int) -> dict:
    """Run one step in this process: seconds, ru_maxrss, S3 requests, and a check of what it did."""
    from hdr.storage import Store

    if step == "plan":
        from render import hdri as hdri_mod
        from render.run import _states
    elif step.startswith("build"):
        from manifests.build import build
    elif step.startswith("verify"):
        from hdr.cluster import RayOptions
        from hdr.dataset.manifest import open_manifest
        from manifests.ops import verify
    elif step == "load":
        from hdr.dataset.loader import ClipWindowDataset
        from hdr.dataset.manifest import open_manifest
    else:
        raise ValueError(f"unknown step {step!r}")
    ops = Counter()
    store = Store(root)
    if not store.is_local:
        store.fs.connect()
        store.fs.s3.meta.events.register("before-call.s3", lambda model, **kw: ops.update([model.name]))
    settings = render_settings() if step == "plan" else None
    base_rss = _status_mb("VmRSS") or 0.0
    prof = None
    if os.environ.get("SCALE_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    reset = _reset_peak()
    t0 = time.perf_counter()
    if step == "plan":
        entries, _ = hdri_mod.discover(Store(maps))
        states = _states(Store(root), entries, settings)
        check = {"hdris": len(entries), "complete": sum(1 for s, _ in states.values() if s == "complete")}
    elif step.startswith("build"):
        res = build(root, rehash=step == "build_rehash", progress=False)
        check = {"version": res.version, "clips": res.record["counts"]["clips"],
                 "files": res.record["counts"]["files"], **res.record["hashing"]}
    elif step.startswith("verify"):
        opts = RayOptions(num_cpus=1) if step == "verify_ray" else None
        problems = verify(open_manifest(root, "v0001"), progress=False, use_ray=step == "verify_ray", opts=opts)
        check = {"problems": len(problems), "first": problems[0] if problems else None}
    elif step == "load":
        m = open_manifest(root, "v0001")
        ds = ClipWindowDataset(m, "train", window=TINY["frames"], ldr="stored", preset="paper", kind="single")
        check = {"clips": len(m), "train": len(ds)}
    seconds = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["SCALE_PROFILE"])
    hwm = _status_mb("VmHWM") if reset else None
    peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux
    return {"seconds": seconds, "peak_mb": peak, "delta_mb": max(0.0, peak - base_rss), "requests": dict(ops),
            "peak_source": "VmHWM" if hwm is not None else "ru_maxrss", "check": check}


def run_child(step: str, root: str, maps: str, n: int, env: dict, profile: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", step, root, maps, str(n)]
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update(env, PYTHONPATH=str(REPO))
    if profile:
        full["SCALE_PROFILE"] = profile
    r = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{step} on {root} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def expected(step: str, store: str, n: int, files: int, check: dict) -> str | None:
    """What a step must have done; a problem line, or None."""
    want = {
        "plan": check.get("complete") == n,
        "build_rehash": check.get("version") == "v0001" and check.get("hashed") == files,
        "build_first": check.get("version") == "v0001" and check.get("recorded_by_writers", 0) > 0
        and check.get("hashed", files) == 0,
        "build_noop": check.get("version") is None,
        "verify": check.get("problems") == 0,
        "verify_ray": check.get("problems") == 0,
        "load": check.get("clips") == n and check.get("train", 0) > 0,
    }[step]
    return None if want else f"{step} on {store} n={n}: unexpected result {check}"


# fitting and reporting ----------------------------------------------------------------------------------------------
def fit_k(ns, ts) -> float | None:
    """Slope of log t over log n (least squares); None with fewer than two sizes."""
    pts = [(math.log(n), math.log(max(t, 1e-6))) for n, t in zip(ns, ts)]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def summarize(rows: list[dict], files_per_clip: int) -> dict:
    """k per (step, store) and the extrapolation to the paper's dataset."""
    out = {}
    for step in STEPS:
        for store in ("local", "s3"):
            pts = sorted((r["n"], r["seconds"]) for r in rows if r["step"] == step and r["store"] == store)
            if not pts:
                continue
            ns, ts = [p[0] for p in pts], [p[1] for p in pts]
            k = fit_k(ns, ts)
            n_max, t_max = pts[-1]
            scale_n = (PAPER_CLIPS / n_max) ** max(k if k is not None else 1.0, 1.0)
            ratio = PAPER_FILES_PER_CLIP / files_per_clip
            out[f"{step}/{store}"] = {"step": step, "store": store, "k": k, "n": ns, "seconds": ts,
                                      "paper_seconds": t_max * scale_n * ratio}
    return out


def print_report(rows: list[dict], fits: dict, files_per_clip: int, meta: dict) -> None:
    print(f"{'step':13s} {'store':5s} {'n':>6s} {'seconds':>9s} {'peak MB':>8s} {'+MB':>7s} {'requests':>9s} "
          f"{'GET/clip':>8s}")
    for r in rows:
        req = sum(r["requests"].values())
        gets = r["requests"].get("GetObject", 0)
        s3 = r["store"] == "s3"
        per = f"{gets / r['n']:.2f}" if s3 else "-"
        print(f"{r['step']:13s} {r['store']:5s} {r['n']:6d} {r['seconds']:9.3f} {r['peak_mb']:8.1f} "
              f"{r['delta_mb']:7.1f} {req if s3 else '-':>9} {per:>8}")
    s3 = [r for r in rows if r["store"] == "s3"]
    if s3:
        print("\nS3 requests per clip by operation (each step at its largest n):")
        for step in STEPS:
            mine = [r for r in s3 if r["step"] == step]
            if mine:
                r = max(mine, key=lambda r: r["n"])
                ops = ", ".join(f"{op} {c / r['n']:.2f}" for op, c in sorted(r["requests"].items()))
                print(f"  {step:13s} n={r['n']:<5d} {ops}")
    print()
    print("growth exponent k (time ~ n^k, least squares on log-log over each step's sizes); paper extrapolation: "
          "t(n_max) x (5600 / n_max)^max(k, 1) x "
          f"({PAPER_FILES_PER_CLIP} / {files_per_clip}) files per clip")
    for key, f in fits.items():
        k = "  -  " if f["k"] is None else f"{f['k']:5.2f}"
        flag = "  <-- worse than linear" if f["k"] is not None and f["k"] > 1.15 else ""
        print(f"  {f['step']:13s} {f['store']:5s} k = {k}   paper ~ {f['paper_seconds'] / 60:8.1f} min{flag}")
    print()
    print(f"extrapolation assumes every per-clip cost grows with its file count ({files_per_clip} files per clip here, "
          f"{PAPER_FILES_PER_CLIP} in the paper: {PAPER_FRAMES} EXR + {PAPER_FRAMES * 3} PNG/masks + 3 JSON, "
          f"~{PAPER_CLIPS * PAPER_FILES_PER_CLIP / 1e6:.1f} M files), an upper bound for JSON-only work; it excludes "
          "byte throughput (these files are tiny): build_rehash and verify also read 4.4 TB (see "
          "benchmarks/manifests.py for MB/s), build_first / build_noop / plan / load read no frame.")
    print(f"machine: {meta['cpus']} CPUs, load average {meta['load']} at start (shared: timings are noisy); "
          f"moto listing {'stock (O(bucket keys) per listing)' if meta['moto_stock'] else 'indexed'}")


# main ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        step, root, maps, n = argv[1:5]
        print(json.dumps(measure(step, root, maps, int(n))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="100,1000,5600", help="comma list of clip counts")
    p.add_argument("--stores", default="local,s3", help="comma list: local, s3")
    p.add_argument("--steps", default=",".join(STEPS), help="comma list of steps")
    p.add_argument("--ray-at", choices=("largest", "all", "none"), default="largest",
                   help="sizes at which verify_ray runs (local store only)")
    p.add_argument("--s3-sizes", default="100,300,1000",
                   help="clip counts on the S3 server (moto serves ~100-200 requests/s here: 5,600 clips would take "
                   "hours)")
    p.add_argument("--s3-read-max", type=int, default=300,
                   help="on S3, the steps that read every file (build_rehash, verify) run only up to this many clips")
    p.add_argument("--profile", help="write a cProfile of every measurement to this folder (slows them down)")
    p.add_argument("--moto-stock", action="store_true", help="moto's own O(keys) listing (no key index)")
    p.add_argument("--json", help="write the rows and fits to this file")
    p.add_argument("--keep", help="make the data under this folder and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    s3_sizes = sorted(int(s) for s in args.s3_sizes.split(","))
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    for s in stores:
        if s not in ("local", "s3"):
            p.error(f"--stores: unknown store {s!r} (local, s3)")
    for s in steps:
        if s not in STEPS:
            p.error(f"--steps: unknown step {s!r} ({', '.join(STEPS)})")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "moto_stock": bool(args.moto_stock), "sizes": sizes, "s3_sizes": s3_sizes, "stores": stores,
            "s3_read_max": args.s3_read_max}
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    moto = None
    rows: list[dict] = []
    try:
        t = time.perf_counter()
        tpl = load_template(make_template(work))
        files_per_clip = len(tpl["frames"]) + len(tpl["ldr"]) + 3
        print(f"template clip: {time.perf_counter() - t:.1f} s, {files_per_clip} files per clip", file=sys.stderr)
        if "s3" in stores:
            moto = MotoS3(indexed_listing=not args.moto_stock)
        for n in sorted(set(sizes) | (set(s3_sizes) if "s3" in stores else set())):
            t = time.perf_counter()
            places = {}
            if "local" in stores and n in sizes:
                places["local"] = tuple(map(str, clone_local(tpl, work / f"local-{n}", n)))
            if "s3" in stores and n in s3_sizes:
                places["s3"] = seed_s3(moto, tpl, n, f"{BUCKET}-{n}")
            print(f"n={n}: data made in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for store, (root, maps) in places.items():
                env = moto.env if store == "s3" else {}
                for step in steps:
                    if step == "verify_ray" and (store != "local" or args.ray_at == "none"
                                                 or (args.ray_at == "largest" and n != sizes[-1])):
                        continue
                    if store == "s3" and step in ("build_rehash", "verify") and n > args.s3_read_max:
                        continue
                    if step == "build_first":
                        drop_versions(root)
                    prof = str(Path(args.profile) / f"{step}-{store}-{n}.prof") if args.profile else None
                    r = run_child(step, root, maps, n, env, prof)
                    problem = expected(step, store, n, n * files_per_clip, r["check"])
                    if problem:
                        raise RuntimeError(problem)
                    rows.append({"step": step, "store": store, "n": n, **r})
                    print(f"  {step:13s} {store:5s} n={n:5d} {r['seconds']:8.3f} s", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(work / f"local-{n}", ignore_errors=True)
    finally:
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    order = {s: i for i, s in enumerate(STEPS)}
    rows.sort(key=lambda r: (order[r["step"]], r["store"], r["n"]))
    fits = summarize(rows, files_per_clip)
    print_report(rows, fits, files_per_clip, meta)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "files_per_clip": files_per_clip, "rows": rows,
                                               "fits": fits}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
