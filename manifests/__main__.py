"""``python -m manifests <build|list|show|diff|verify|export|report> --root ROOT ...`` (thin CLI over the library)."""
from __future__ import annotations

import argparse
import json
import sys

from hdr import cli
from hdr.io import HdrImageError
from hdr.storage import Store, UnsafePathError, human_bytes
from hdr.dataset.layout import ManifestError, list_versions


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog=cli.prog("manifests"), formatter_class=fmt,
                                description="Versioned, content-hashed records of a dataset made by render/augment/"
                                "caption. Versions live in ROOT/manifests/vNNNN.parquet + vNNNN.json and are never "
                                "rewritten.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)
        cli.add_root(sp, help="dataset root (path or fsspec URL)")
        return sp

    b = cmd("build", "scan clips/augmentations/captions, hash every file and write a new version (if anything "
                     "changed)")
    b.add_argument("--seed", type=int, default=0, help="split seed")
    b.add_argument("--test", default="50", help="test set size: clips (50 = the paper's held-out set) or a ratio "
                                                 "(0.01); whole HDRIs are held out")
    b.add_argument("--val", default="0", help="validation set size: clips or a ratio")
    b.add_argument("--stratify", choices=("none", "category"), default="none",
                   help="category: split each HDRI category (hdri_category: night, studio, indoor, outdoor, else "
                   "the map's first category) on its own with the same fractions, so each has test/val HDRIs")
    b.add_argument("--rehash", action="store_true", help="hash every file even if its size and mtime match the "
                                                        "parent version")
    b.add_argument("--threads", type=int, default=None, help="hashing threads (default: 2 x cores, at most 8)")
    cli.add_quiet(b)

    cmd("list", "list the versions")

    s = cmd("show", "print a version's record")
    s.add_argument("version", nargs="?", default="latest", help="e.g. v3 or v0003 (default: the latest)")
    s.add_argument("--clips", action="store_true", help="also list every clip")
    s.add_argument("--json", action="store_true", help="print the version record as JSON")

    d = cmd("diff", "clips added, removed and changed between two versions, and why")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--limit", type=int, default=5, help="reasons shown per changed clip")

    v = cmd("verify", "re-hash every file of a version; exit 1 naming every missing or changed file")
    v.add_argument("version", nargs="?", default="latest")
    v.add_argument("--quick", action="store_true", help="compare sizes and mtimes only (no hashing)")
    v.add_argument("--threads", type=int, default=None, help="hashing threads (default: 2 x cores, at most 8)")
    cli.add_quiet(v)
    cli.add_ray(v, what="HDRI", helps={
        "--no-ray": "check the files here with threads (the default unless --address or RAY_ADDRESS names a cluster; "
        "with one, every HDRI's files are checked by one Ray task: the root must be readable by the workers)"})

    e = cmd("export", "export a version for other trainers and tools")
    e.add_argument("version")
    e.add_argument("--format", required=True, choices=("diffhdr-csv", "hf", "webdataset"))
    e.add_argument("--out", help="output folder [default: ROOT/_exports/<version>/<format>]")
    e.add_argument("--shard-size", default="1GB", help="webdataset: target tar shard size (e.g. 1GB, 200MB)")
    cli.add_kind(e, aliases=("--aug-kind",), help="webdataset: which kind of stored augmentations to pack with "
                 "each clip (single, or HDR-V-Diff's alternating alt2/alt3)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    cli.add_quiet(e)

    r = cmd("report", "write a static HTML page with thumbnails, histograms and totals")
    r.add_argument("version", nargs="?", default="latest")
    r.add_argument("--out", help="output folder (default: ROOT/_reports/<version>; required for an object-store root)")
    r.add_argument("--thumb-width", type=int, default=160)
    r.add_argument("--split", choices=("train", "val", "test"), help="show only this split's HDRIs")
    r.add_argument("--max-hdris", type=int, help="show only the first N HDRIs (by name); totals stay complete")
    cli.add_quiet(r)
    return p


def _open(root: str, version: str):
    from hdr.dataset.manifest import open_manifest

    return open_manifest(root, version)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args, argv)
    except (ManifestError, UnsafePathError, HdrImageError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args, argv) -> int:
    if args.cmd == "build":
        from manifests.build import build

        res = build(args.root, seed=args.seed, test=args.test, val=args.val, rehash=args.rehash,
                    threads=args.threads, progress=not args.quiet,
                    stratify=None if args.stratify == "none" else args.stratify,
                    command=["python", "-m", "manifests", *(argv if argv is not None else sys.argv[1:])])
        for line in res.record.get("skipped", []) + res.record.get("problems", []) if res.version else []:
            print(f"note: {line}", file=sys.stderr)
        for w in res.record.get("split", {}).get("warnings", []) if res.version else []:
            print(f"warning: {w}", file=sys.stderr)
        print(res.message)
        return 0

    if args.cmd == "list":
        store = Store(args.root)
        versions = list_versions(store)
        if not versions:
            print(f"no versions in {store.uri('manifests')}")
        for v in versions:
            rec = store.read_json(f"manifests/{v}.json")
            c, sp = rec["counts"], rec["split"]["clips"]
            print(f"{v}  {rec['created']}  {c['clips']:6d} clips (train {sp['train']}, val {sp['val']}, test "
                  f"{sp['test']})  {human_bytes(rec['bytes']['total']):>9}  root {rec['root_hash'][:12]}  "
                  f"parent {rec['parent'] or '-'}")
        return 0

    if args.cmd == "show":
        m = _open(args.root, args.version)
        rec = m.record_dict
        if args.json:
            print(json.dumps(rec, indent=1))
        else:
            c = rec["counts"]
            git = rec.get("git") or {}
            print(f"{m.version} of {m.root}  (parent {rec['parent'] or '-'}, created {rec['created']})")
            print(f"  toolkit {rec['toolkit_version']}, git {git.get('commit') or 'unknown'}"
                  f"{' (dirty)' if git.get('dirty') else ''}")
            print(f"  root hash {rec['root_hash']}")
            print(f"  {c['hdris']} HDRIs, {c['clips']} clips, {c['frames']} HDR frames, {c['augmentations']} "
                  f"augmentations ({c['ldr_frames']} LDR frames), {c['captions']} captions, {c['files']} files, "
                  f"{human_bytes(rec['bytes']['total'])}")
            sp = rec["split"]
            print(f"  split {sp['settings']}: clips {sp['clips']}, HDRIs {sp['hdris']}"
                  f"{', inherited from ' + sp['inherited_from'] if sp['inherited_from'] else ''}")
            for stage in ("render", "augment", "caption"):
                for s in rec["settings"][stage]:
                    print(f"  {stage} settings ({s['count']}x): {json.dumps(s['settings'], sort_keys=True)[:300]}")
            for line in rec.get("skipped", []) + rec.get("problems", []):
                print(f"  note: {line}")
            if args.clips:
                for r in m.clips():
                    print(f"  {r.key:50s} {r.split:5s} {r.n_frames:3d}f {r.width}x{r.height} augs "
                          f"{','.join(a.aug_id for a in r.augs) or '-'}  caption {'yes' if r.caption else 'no'}")
        return 0

    if args.cmd == "diff":
        from manifests.ops import diff

        d = diff(_open(args.root, args.a), _open(args.root, args.b))
        print("\n".join(d.lines(args.limit)))
        return 0

    if args.cmd == "verify":
        from manifests.ops import verify

        m = _open(args.root, args.version)
        from hdr.cluster import ClusterError

        try:
            problems = verify(m, quick=args.quick, threads=args.threads, progress=not args.quiet,
                              use_ray=cli.ray_is_remote(args), opts=cli.ray_options(args, retry_exceptions=False))
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for line in problems:
            print(line)
        n = int(m.record_dict["counts"]["files"])
        if problems:
            print(f"{m.version}: {len(problems)} of {n} files missing or changed", file=sys.stderr)
            return 1
        print(f"{m.version}: all {n} files present and {'unchanged in size and mtime' if args.quick else 'identical'}"
              f" (root hash {m.root_hash[:16]}...)")
        return 0

    if args.cmd == "export":
        from manifests.export import export

        out = export(_open(args.root, args.version), args.format, out=args.out, shard_size=args.shard_size,
                     aug_kind=args.kind, overwrite=args.overwrite, progress=not args.quiet)
        print(f"wrote {out}")
        return 0

    if args.cmd == "report":
        from manifests.report import write_report

        out = write_report(_open(args.root, args.version), out=args.out, thumb_width=args.thumb_width,
                           progress=not args.quiet, split=args.split, max_hdris=args.max_hdris)
        print(f"wrote {out}")
        return 0
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
