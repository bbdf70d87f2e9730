"""``python -m evaluate.run``: score predicted HDR clips against ground truth.

    python -m evaluate.run --manifest ROOT/manifests/v0003.parquet --split test --predictions PRED --out OUT
    python -m evaluate.run --reference GT_ROOT --predictions PRED --out OUT

Writes ``OUT/metrics.json`` (per clip and mean; the mean PSNR_T also under the top-level key ``psnr_t``),
``OUT/metrics.md`` (a markdown table), ``OUT/per_clip.png`` and ``OUT/vs_dynamic_range.png``, one
``OUT/clips/<hdri_id>/<clip_id>.json`` per clip as it finishes (a rerun resumes from them), and with ``--manifest``
``OUT/manifest.json`` (manifest version and root hash). See :mod:`evaluate.metrics` for the definitions.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from evaluate import metrics as M
from evaluate.clips import ClipPair, clips_from_manifest, clips_from_reference, pair_predictions, read_clip
from evaluate.perceptual import ClipIqa, Lpips, MetricUnavailable, Musiq
from evaluate.vdp import DEFAULT_DISPLAY, DEFAULT_FPS, MODES, PHOTOMETRIES, VideoVDP
from hdr import cli
from hdr.cli import resolve_device
from hdr.color import MU_LAW_MU
from hdr.io import HdrImageError
from hdr.storage import Store

SCHEMA = "hdr-toolkit/evaluate/1"
DEFAULT_METRICS = M.CORE_METRICS + ("pu21_piqe", "fvvdp", "cvvdp")
VDP_KINDS = ("fvvdp", "cvvdp")
PIQE_ANCHORS = ("prediction", "reference")  # prediction: the public code (PU21-PIQE is a no-reference metric)
CHUNK = 8  # frames per LPIPS / CLIP-IQA batch


class EvalConflict(RuntimeError):
    """OUT already holds a finished evaluation (and --overwrite was not given)."""


@dataclass
class EvalSettings:
    metrics: tuple[str, ...] = DEFAULT_METRICS
    mu: float = MU_LAW_MU
    peak_nits: float = M.DEFAULT_PEAK_NITS
    anchor_percentile: float = M.DEFAULT_ANCHOR_PERCENTILE
    anchor: str = M.DEFAULT_ANCHOR  # per-frame (public DiffHDR evaluation) | clip
    nits_per_unit: float | None = None
    iqa_tonemap: str = M.DEFAULT_IQA_TONEMAP  # public | per-channel (CLIP-IQA, MUSIQ input)
    piqe_anchor: str = "prediction"  # prediction (public) | reference: whose anchor maps PU21-PIQE's input to cd/m^2
    vdp_photometry: str = "absolute"  # absolute (public: FovVideoVDP clamps at peak_nits) | display
    vdp_mode: str = "video"  # video (the paper; the public code's intent) | framewise (what the public code computes)
    display: str = DEFAULT_DISPLAY
    fps: float = DEFAULT_FPS
    device: str = "cpu"
    lpips_weights: str | None = None
    clipiqa_model: str | None = None
    musiq_weights: str | None = None

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in M.METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(M.METRICS)}")
        for name, value, allowed in (("anchor", self.anchor, M.ANCHORS), ("iqa_tonemap", self.iqa_tonemap,
                                     M.IQA_TONEMAPS), ("piqe_anchor", self.piqe_anchor, PIQE_ANCHORS),
                                     ("vdp_photometry", self.vdp_photometry, PHOTOMETRIES),
                                     ("vdp_mode", self.vdp_mode, MODES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")

    def describe(self) -> dict:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["psnr_cap_db"] = M.PSNR_CAP_DB
        d["normalisation"] = ("per frame, GT / max(GT) and prediction / the same factor, clipped to [0, 1]; "
                              "mu-law mu=%g for PSNR_T/SSIM_T; one factor per clip (GT clip max) for temporal_t"
                              % self.mu)
        how = ("the mean over frames of each frame's" if self.anchor == "per-frame" else "the clip-wide")
        d["luminance_mapping"] = (f"{self.nits_per_unit:g} cd/m^2 per radiance unit" if self.nits_per_unit else
                                  f"per clip, {how} P{self.anchor_percentile:g} of GT Rec.709 luminance -> "
                                  f"{self.peak_nits:g} cd/m^2, prediction scaled by the same factor "
                                  f"(anchor={self.anchor})")
        d["iqa_tonemap_rule"] = ("per frame: rescale by 1/P99.9(Y) if 0 < P99.9(Y) < 1, else luminance Reinhard "
                                 "Y/(1+Y); clip [0, 1]; sRGB OETF" if self.iqa_tonemap == "public" else
                                 "x/(1+x) per channel on raw radiance; clip [0, 1]; sRGB OETF")
        d["pu21_piqe_rule"] = (f"prediction x k (k from the {self.piqe_anchor}'s anchor, as above), Rec.709 "
                               f"luminance, PU21 banding_glare, max(., 0) / {M.PU21_PIQE_DIVISOR:g} clipped to [0, 1], "
                               "PIQE (pypiqe); mean over frames")
        return d


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


class Evaluator:
    """Holds the metric objects (VDP, LPIPS, CLIP-IQA) once and scores one clip at a time."""

    def __init__(self, settings: EvalSettings):
        self.s = settings
        self.unavailable: dict[str, str] = {}
        self.vdp: dict[str, VideoVDP] = {k: VideoVDP(k, settings.display, settings.device, settings.vdp_photometry,
                                                     settings.peak_nits, settings.vdp_mode)
                                         for k in VDP_KINDS if k in settings.metrics}
        self.piqe = self._optional("pu21_piqe", _piqe_source)
        self.lpips = self._optional("lpips", lambda: Lpips(settings.lpips_weights, settings.device))
        self.clipiqa = self._optional("clipiqa", lambda: ClipIqa(settings.clipiqa_model, settings.device))
        self.musiq = self._optional("musiq", lambda: Musiq(settings.musiq_weights, settings.device))
        self.core = tuple(m for m in settings.metrics if m in M.CORE_METRICS)

    def _optional(self, name, make):
        if name not in self.s.metrics:
            return None
        try:
            return make()
        except MetricUnavailable as e:
            self.unavailable[name] = str(e)
            print(f"warning: {e}", file=sys.stderr)
            return None

    def describe(self) -> dict:
        d = self.s.describe()
        d["vdp"] = {k: v.describe() for k, v in self.vdp.items()}
        if self.lpips:
            d["lpips_source"] = self.lpips.source
        if self.clipiqa:
            d["clipiqa_source"] = self.clipiqa.source
        if self.musiq:
            d["musiq_source"] = self.musiq.source
        if self.piqe:
            d["pu21_piqe_source"] = self.piqe
        return d

    def score(self, pred: np.ndarray, gt: np.ndarray) -> dict:
        """All selected metrics of one clip ``(T, H, W, 3)``: {"metrics", "nits_scale", "dynamic_range_stops"}."""
        s = self.s
        vals = M.clip_metrics(pred, gt, self.core, mu=s.mu, peak_nits=s.peak_nits, percentile=s.anchor_percentile,
                              nits_per_unit=s.nits_per_unit, anchor=s.anchor)
        k = M.nits_scale(gt, s.peak_nits, s.anchor_percentile, s.nits_per_unit, anchor=s.anchor)
        extra = {}
        if self.piqe is not None:  # no reference: by default the prediction's own anchor (the public code)
            kp = k if s.piqe_anchor == "reference" else M.nits_scale(pred, s.peak_nits, s.anchor_percentile,
                                                                     s.nits_per_unit, anchor=s.anchor)
            vals["pu21_piqe"] = M.pu21_piqe(pred, kp)
            extra["pu21_piqe_nits_scale"] = kp
        for kind, vdp in self.vdp.items():
            vals[kind] = vdp.score(pred * np.float32(k), gt * np.float32(k), s.fps)
        if self.lpips is not None:  # frame-weighted mean over chunks (memory stays one chunk)
            parts = []
            for i in range(0, len(pred), CHUNK):
                tm = [M.tonemap_pair(p, g, s.mu) for p, g in zip(pred[i:i + CHUNK], gt[i:i + CHUNK])]
                parts.append((len(tm), self.lpips.score(np.stack([a for a, _ in tm]), np.stack([b for _, b in tm]))))
            vals["lpips"] = sum(n * v for n, v in parts) / len(pred)
        for name, metric in (("clipiqa", self.clipiqa), ("musiq", self.musiq)):  # no reference: the prediction
            if metric is not None:
                parts = [(len(c), metric.score(np.stack([M.iqa_tonemap(f, s.iqa_tonemap) for f in c])))
                         for c in (pred[i:i + CHUNK] for i in range(0, len(pred), CHUNK))]
                vals[name] = sum(n * v for n, v in parts) / len(pred)
        ordered = {m: _finite(vals[m]) for m in s.metrics if m in vals}
        return {"metrics": ordered, "nits_scale": k, **extra,
                "dynamic_range_stops": _finite(M.dynamic_range_stops(gt))}


def _piqe_source() -> str:
    """pypiqe's name and version, or :class:`MetricUnavailable` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import pypiqe  # noqa: F401
        return f"pypiqe {version('pypiqe')}"
    except (ImportError, PackageNotFoundError):
        raise MetricUnavailable("pu21_piqe: not computed -- pypiqe is not installed "
                                "(pip install 'hdr-video-toolkit[evaluate]')") from None


def _fingerprint(settings: dict, pair: ClipPair) -> str:
    blob = json.dumps({"settings": settings, "gt": pair.gt_frames, "pred": pair.pred_frames}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _score_pair(pair: ClipPair, ev: Evaluator, gt: Store, pred: Store, out: Store, desc: dict, scratch: str,
                overwrite: bool, failures: list) -> dict | None:
    """One clip's record (reused from OUT/clips/ when its fingerprint matches), or None after a recorded failure."""
    rel = f"clips/{pair.job.rel}.json"
    fp = _fingerprint(desc, pair)
    if not overwrite and out.exists(rel):
        try:
            old = out.read_json(rel)
        except (ValueError, OSError):
            old = {}
        if old.get("fingerprint") == fp:
            return old
    t0 = time.time()
    try:
        g = read_clip(gt, pair.gt_frames, scratch)
        p = read_clip(pred, pair.pred_frames, scratch)
        if p.shape != g.shape:
            raise HdrImageError(pred.uri(pair.pred_frames[0]), f"size {p.shape[2]}x{p.shape[1]} differs from "
                                f"the ground truth's {g.shape[2]}x{g.shape[1]}")
        res = ev.score(p, g)
    except (HdrImageError, ValueError, OSError) as e:
        failures.append({"key": pair.job.key, "error": str(e)})
        tqdm.write(f"failed: {pair.job.key}: {e}", file=sys.stderr)
        return None
    rec = {"key": pair.job.key, "rel": pair.job.rel, "n_frames": len(pair.pred_frames),
           "n_gt_frames": pair.n_gt_frames, "frames": [f.rsplit("/", 1)[-1] for f in pair.pred_frames],
           **res, "seconds": round(time.time() - t0, 3), "fingerprint": fp}
    out.write_json(rel, rec)
    return rec


def _notes(clips: list[dict], settings: EvalSettings) -> list[str]:
    """Caveats a reader of the numbers must know (see README "How to read the VDP JODs")."""
    notes = []
    if not any(k in settings.metrics for k in VDP_KINDS):
        return notes
    one = [c["key"] for c in clips if c["n_frames"] == 1]
    short = [c["key"] for c in clips if 1 < c["n_frames"] < settings.fps]
    if one:
        notes.append(f"{len(one)} clip(s) have one frame: ColorVideoVDP scores them with its milder image model; do "
                     "not compare or average them with multi-frame scores: " + ", ".join(one[:10]))
    if short:
        notes.append(f"{len(short)} clip(s) are shorter than 1 s at {settings.fps:g} fps: the VDPs weight their "
                     "first frames more (temporal filter padding): " + ", ".join(short[:10]))
    return notes


def evaluate(pairs: list[ClipPair], gt: Store, pred: Store, out: Store, settings: EvalSettings, source: dict, *,
             missing: list[str] = (), overwrite: bool = False, plots: bool = True, progress: bool = True) -> dict:
    """Score every pair, write the per-clip records, metrics.json, metrics.md and the plots into ``out``; returns
    the metrics.json content. Clips already scored with the same settings and frames (an interrupted run) are
    reused unless ``overwrite``."""
    if out.exists("metrics.json") and not overwrite:
        raise EvalConflict(f"{out.uri('metrics.json')} already exists (use --overwrite, or another --out)")
    ev = Evaluator(settings)
    desc = ev.describe()
    if overwrite:
        out.remove("clips")  # no stale per-clip records of an earlier run
    clips, failures = [], []
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:  # downloads of remote frames
        for pair in tqdm(pairs, unit="clip", desc="evaluate", file=sys.stderr, dynamic_ncols=True,
                         disable=not progress):
            rec = _score_pair(pair, ev, gt, pred, out, desc, scratch, overwrite, failures)
            if rec is not None:
                clips.append(rec)

    names = list(settings.metrics)
    mean = {n: _mean(c["metrics"].get(n) for c in clips) for n in names}
    result = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "predictions": pred.uri(),
        "n_clips": len(clips),
        "psnr_t": mean.get("psnr_t"),
        "mean": mean,
        "metrics": [n for n in names if n not in ev.unavailable],
        "metric_info": {n: asdict(M.METRICS[n]) for n in names},
        "unavailable": ev.unavailable,
        "settings": desc,
        "clips": clips,
        "missing": list(missing),
        "failures": failures,
        "notes": _notes(clips, settings),
    }
    from evaluate import report

    out.write_bytes("metrics.md", report.markdown(result).encode("utf-8"))
    if plots and clips:
        tmp = out.scratch_dir("plots-")
        for name in report.plots(result, tmp):
            out.publish(tmp / name, name)
        shutil.rmtree(tmp, ignore_errors=True)
        if out.is_local:
            with contextlib.suppress(OSError):
                tmp.parent.rmdir()  # OUT/.tmp, if nothing else uses it
    out.write_json("metrics.json", result)  # last: its presence means the evaluation is complete
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=cli.prog("evaluate.run"),
        description="Score predicted HDR clips (<predictions>/<hdri_id>/<clip_id>/frame_NNNN.exr) against the "
        "ground truth of a manifest split or of a reference tree: PSNR_T, SSIM_T, PSNR-L, PU21-PSNR, temporal "
        "stability, PU21-PIQE, FovVideoVDP, ColorVideoVDP (and LPIPS / CLIP-IQA / MUSIQ from local weights). "
        "Writes metrics.json, metrics.md and PNG plots into --out; rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest version file (ROOT/manifests/vNNNN.parquet), path or URL")
    src.add_argument("--reference", help="ground-truth tree in the dataset layout, path or URL")
    p.add_argument("--split", default="test", help="manifest split to evaluate (train, val, test; 'all' = every clip)")
    p.add_argument("--predictions", required=True, help="predicted HDR tree in the dataset layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated, from: {', '.join(M.METRICS)}. lpips/clipiqa are added when their "
                   "weights are given")
    p.add_argument("--display", default=DEFAULT_DISPLAY, help="VDP display model (pyfvvdp/pycvvdp name)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate the VDP metrics assume")
    p.add_argument("--peak-nits", type=float, default=M.DEFAULT_PEAK_NITS,
                   help="cd/m^2 that the GT clip's anchor percentile luminance is mapped to (PU21, VDP)")
    p.add_argument("--anchor-percentile", type=float, default=M.DEFAULT_ANCHOR_PERCENTILE)
    p.add_argument("--anchor", choices=M.ANCHORS, default=M.DEFAULT_ANCHOR,
                   help="per-frame: mean of each frame's percentile (the public DiffHDR evaluation); clip: one "
                   "percentile over the whole clip")
    p.add_argument("--nits-per-unit", type=float, help="fixed cd/m^2 per radiance unit instead of the anchor")
    p.add_argument("--iqa-tonemap", choices=M.IQA_TONEMAPS, default=M.DEFAULT_IQA_TONEMAP,
                   help="CLIP-IQA/MUSIQ input. public: rescale when P99.9(Y) < 1, else luminance Reinhard (the public "
                   "DiffHDR evaluation); per-channel: x/(1+x) per channel on raw radiance")
    p.add_argument("--piqe-anchor", choices=PIQE_ANCHORS, default="prediction",
                   help="whose anchor maps PU21-PIQE's input to cd/m^2 (prediction: the public code, no reference)")
    p.add_argument("--vdp-photometry", choices=PHOTOMETRIES, default="absolute",
                   help="FovVideoVDP photometry. absolute: cd/m^2 clamped to [0.005, --peak-nits] (the public "
                   "DiffHDR evaluation); display: the --display model's own (peak, black level, ambient light)")
    p.add_argument("--vdp-mode", choices=MODES, default="video",
                   help="video: the VDPs' temporal model at --fps; framewise: each frame as an image, JODs averaged "
                   "(what the public DiffHDR evaluation code computes in effect)")
    p.add_argument("--lpips-weights", help="local torchvision AlexNet checkpoint (alexnet-owt-7be5be79.pth) for LPIPS")
    p.add_argument("--clipiqa-weights", "--clipiqa-model", dest="clipiqa_weights",
                   help="local Hugging Face CLIP folder for CLIP-IQA")
    p.add_argument("--musiq-weights", help="local pyiqa MUSIQ checkpoint (MUSIQ needs pyiqa, which you install "
                   "yourself: it is not a dependency)")
    cli.add_device(p, help="torch device of VDP/LPIPS/CLIP-IQA/MUSIQ: " + cli.DEVICE_HELP)
    p.add_argument("--no-plots", action="store_true")
    cli.add_quiet(p)
    p.add_argument("--overwrite", action="store_true", help="recompute everything even if OUT holds results")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for flag, name in ((args.lpips_weights, "lpips"), (args.clipiqa_weights, "clipiqa"),
                       (args.musiq_weights, "musiq")):
        if flag and name not in names:
            names.append(name)
    try:
        settings = EvalSettings(metrics=tuple(names), peak_nits=args.peak_nits,
                                anchor_percentile=args.anchor_percentile, anchor=args.anchor,
                                nits_per_unit=args.nits_per_unit, iqa_tonemap=args.iqa_tonemap,
                                piqe_anchor=args.piqe_anchor, vdp_photometry=args.vdp_photometry,
                                vdp_mode=args.vdp_mode,
                                display=args.display, fps=args.fps, device=resolve_device(args.device),
                                lpips_weights=args.lpips_weights, clipiqa_model=args.clipiqa_weights,
                                musiq_weights=args.musiq_weights)
        pred, out = Store(args.predictions), Store(args.out)
        if not pred.fs.isdir(pred.path()):
            raise FileNotFoundError(f"{args.predictions}: no such predictions folder")
        manifest = None
        if args.manifest:
            from hdr.dataset import open_manifest

            manifest = open_manifest(args.manifest)
            split = None if args.split == "all" else args.split
            jobs = clips_from_manifest(manifest, split)
            gt = manifest.store
            source = {"manifest": str(args.manifest), "version": manifest.version, "root_hash": manifest.root_hash,
                      "root": str(manifest.root), "split": args.split}
            if not jobs:
                raise ValueError(f"{args.manifest}: split {args.split!r} has no clips")
        else:
            gt = Store(args.reference)
            jobs = clips_from_reference(gt)
            source = {"reference": gt.uri()}
            if not jobs:
                raise ValueError(f"{args.reference}: no clips (<hdri_id>/<clip_id>/frame_*.exr) found")
        pairs, missing = pair_predictions(jobs, pred)
        if missing:
            print(f"warning: {len(missing)} of {len(jobs)} clips have no predicted frames: "
                  + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""), file=sys.stderr)
        if not pairs:
            raise ValueError(f"{args.predictions}: no predicted frames match any ground-truth clip")
        if manifest is not None:
            if out.is_local:
                out.local_path().mkdir(parents=True, exist_ok=True)
            if not out.exists("metrics.json") or args.overwrite:
                manifest.record(args.out)
        res = evaluate(pairs, gt, pred, out, settings, source, missing=missing, overwrite=args.overwrite,
                       plots=not args.no_plots, progress=not args.quiet)
    except (EvalConflict, HdrImageError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = {k: round(v, 4) for k, v in res["mean"].items() if v is not None}
    print(f"{res['n_clips']} clips -> {out.uri('metrics.json')}: {shown}")
    if res["failures"]:
        print(f"{len(res['failures'])} clips failed (listed in metrics.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
