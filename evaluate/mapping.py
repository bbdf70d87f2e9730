"""DiffHDR Table 4: how well an LDR-trained VAE round-trips HDR frames under four colour mappings.

    python -m evaluate.mapping --manifest ROOT/manifests/v0003.parquet --vae /models/Wan2.1-VACE-14B-diffusers/vae
    python -m evaluate.mapping --reference GT_ROOT --vae PATH --out OUT

Each HDR clip x (scene-linear) is mapped to y = f(x), fed to the VAE as 2y - 1, encoded (the posterior mode, no
sampling), decoded, mapped back with f^-1 and compared with x in sRGB (DiffHDR §4.2.3: "reconstructed HDR outputs
are converted to sRGB space and compared against the ground-truth sRGB images using PSNR, SSIM, and LPIPS").
sRGB here is ``hdr.color.srgb_oetf(clip(x * 2^ev, 0, 1))`` (``--ev`` 0 by default). PSNR_T (mu-law, as in
:mod:`evaluate.metrics`) is reported as well because sRGB clipping hides every error above 1.0.

The four mappings (DiffHDR §4.2.3; M = 65536 as in the public DiffHDR code):

* ``linear``: f(x) = x, fed as-is (values above 1 exceed the VAE's range, as the paper's "directly encoding linear
  HDR values" does);
* ``log``: "a pure logarithmic mapping (Log) used in LEDiff's finetuning". The paper gives no formula; we use the
  pure log of radiance over a fixed range symmetric in stops, f(x) = (ln max(x, 1/M) + ln M) / (2 ln M), i.e.
  [1/M, M] -> [0, 1] (an interpretation; radiance below 1/M is floored);
* ``log_nogamma``: T'(x) = log(1 + x) / log(1 + M) -- exactly ``hdr.color.log_gamma`` with g = 1;
* ``log_gamma``: DiffHDR eq. 3, ``hdr.color.log_gamma`` (g = 2.2, M = 65536).

The VAE is loaded from a local diffusers folder: ``AutoencoderKLWan`` (Wan 2.1's video VAE, DiffHDR's; clips are
cut to 1 + 4k frames) or ``AutoencoderKL`` (image VAE, frame by frame), chosen from ``config.json``'s
``_class_name``. Any other round trip can be measured through :func:`mapping_table` with a ``codec`` callable.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from evaluate import metrics as M
from evaluate.clips import ClipJob, clips_from_manifest, clips_from_reference, read_clip
from evaluate.perceptual import Lpips, MetricUnavailable
from hdr.color import LOG_GAMMA_M, log_gamma, log_gamma_inverse, srgb_oetf
from hdr.io import HdrImageError
from hdr.storage import Store

SCHEMA = "hdr-toolkit/evaluate-mapping/1"
MAPPINGS = ("linear", "log", "log_nogamma", "log_gamma")
LABELS = {"linear": "Linear", "log": "Log", "log_nogamma": "Log w/o gamma", "log_gamma": "Log-Gamma (ours)"}
_LN_M = math.log(LOG_GAMMA_M)


def forward(name: str, x: np.ndarray) -> np.ndarray:
    """Linear radiance -> the VAE's [0, 1] domain under mapping ``name`` (see the module docstring)."""
    if name == "linear":
        return x
    if name == "log":
        return (np.log(np.maximum(x, 1.0 / LOG_GAMMA_M)) + _LN_M) / (2.0 * _LN_M)
    if name == "log_nogamma":
        return log_gamma(x, g=1.0)
    if name == "log_gamma":
        return log_gamma(x)
    raise ValueError(f"unknown mapping {name!r} (one of {', '.join(MAPPINGS)})")


def inverse(name: str, y: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`forward` on its range (``log``: radiance below 1/M comes back as 1/M)."""
    if name == "linear":
        return np.clip(y, 0.0, None)
    if name == "log":
        return np.exp(np.clip(y, 0.0, 1.0) * 2.0 * _LN_M - _LN_M)
    if name == "log_nogamma":
        return log_gamma_inverse(y, g=1.0)
    if name == "log_gamma":
        return log_gamma_inverse(y)
    raise ValueError(f"unknown mapping {name!r} (one of {', '.join(MAPPINGS)})")


def to_srgb(x: np.ndarray, ev: float = 0.0) -> np.ndarray:
    return srgb_oetf(np.clip(x * 2.0**ev, 0.0, 1.0))


# ------------------------------------------------------------------------------------------------------------- VAE
@dataclass
class VaeCodec:
    """A diffusers VAE as a codec on ``(T, H, W, 3)`` arrays in the VAE's [0, 1] domain (fed as 2y - 1)."""

    vae: object
    kind: str  # "wan" (video, 5-D) | "kl" (image)
    spatial: int
    temporal: int
    device: str
    dtype: object
    source: str

    def __call__(self, y: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).permute(0, 3, 1, 2)  # T,3,H,W
        x = (2.0 * x - 1.0).to(self.device, self.dtype)
        with torch.no_grad():
            if self.kind == "wan":
                v = x.permute(1, 0, 2, 3)[None]  # 1,3,T,H,W
                z = self.vae.encode(v).latent_dist.mode()
                out = self.vae.decode(z).sample[0].permute(1, 0, 2, 3)
            else:
                outs = []
                for i in range(x.shape[0]):
                    z = self.vae.encode(x[i:i + 1]).latent_dist.mode()
                    outs.append(self.vae.decode(z).sample)
                out = torch.cat(outs)
        out = (out.float().cpu() + 1.0) / 2.0
        return out.permute(0, 2, 3, 1).numpy().astype(np.float64)

    def fit(self, clip: np.ndarray) -> np.ndarray:
        """Crop a clip to what the VAE reproduces one to one: H, W multiples of the spatial factor, and for the
        video VAE 1 + k * temporal frames."""
        t, h, w, _ = clip.shape
        h2, w2 = h - h % self.spatial, w - w % self.spatial
        if h2 == 0 or w2 == 0:
            raise ValueError(f"frames of {w}x{h} are smaller than the VAE's {self.spatial}-pixel grid")
        t2 = 1 + (t - 1) // self.temporal * self.temporal if self.kind == "wan" else t
        return clip[:t2, :h2, :w2]

    def describe(self) -> dict:
        return {"path": self.source, "class": type(self.vae).__name__, "kind": self.kind, "dtype": str(self.dtype),
                "spatial_factor": self.spatial, "temporal_factor": self.temporal}


def load_vae(path: str | Path, device: str = "cpu", dtype: str = "float32") -> VaeCodec:
    """A diffusers ``AutoencoderKLWan`` or ``AutoencoderKL`` from a local folder (class from its config.json)."""
    import torch

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a local diffusers VAE folder, e.g. <model>/vae)")
    cfg = json.loads(cfg_file.read_text())
    cls_name = cfg.get("_class_name")
    import diffusers

    if cls_name == "AutoencoderKLWan":
        cls, kind = diffusers.AutoencoderKLWan, "wan"
        spatial = int(cfg.get("scale_factor_spatial") or 8)
        down = cfg.get("temperal_downsample", [False, True, True])
        temporal = int(cfg.get("scale_factor_temporal") or 2 ** sum(down))
    elif cls_name == "AutoencoderKL":
        cls, kind = diffusers.AutoencoderKL, "kl"
        spatial, temporal = 2 ** (len(cfg.get("block_out_channels", [0])) - 1), 1
    else:
        raise ValueError(f"{cfg_file}: _class_name {cls_name!r} is not AutoencoderKLWan or AutoencoderKL")
    torch_dtype = getattr(torch, dtype)
    vae = cls.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True).to(device).eval()
    return VaeCodec(vae, kind, spatial, temporal, device, torch_dtype, str(path))


# ------------------------------------------------------------------------------------------------------- the table
def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def roundtrip_scores(clip: np.ndarray, codec: Callable[[np.ndarray], np.ndarray], mapping: str, ev: float = 0.0,
                     lpips: Lpips | None = None) -> dict:
    """Scores of one clip ``(T, H, W, 3)`` through ``codec`` under ``mapping``: PSNR/SSIM (/LPIPS) in sRGB and
    PSNR_T, frame averages."""
    rec = inverse(mapping, codec(forward(mapping, clip)))
    if rec.shape != clip.shape:
        raise ValueError(f"the codec returned shape {rec.shape} for input {clip.shape}")
    a, b = to_srgb(rec, ev), to_srgb(clip, ev)
    out = {"psnr": float(np.mean([M.psnr(x, y) for x, y in zip(a, b)])),
           "ssim": float(np.mean([_ssim(x, y) for x, y in zip(a, b)])),
           "psnr_t": float(np.mean([M.psnr_t_frame(x, y) for x, y in zip(rec, clip)]))}
    if lpips is not None:
        out["lpips"] = lpips.score(a, b)
    return out


def mapping_table(clips: Iterable[tuple[str, np.ndarray]], codec: Callable[[np.ndarray], np.ndarray],
                  mappings=MAPPINGS, ev: float = 0.0, lpips: Lpips | None = None, progress: bool = True,
                  total: int | None = None) -> dict:
    """{"per_clip": {key: {mapping: scores}}, "mean": {mapping: scores}} over ``(key, clip)`` pairs (any iterable:
    a generator keeps one clip in memory at a time)."""
    per_clip: dict[str, dict] = {}
    for key, clip in tqdm(clips, desc="mapping", unit="clip", file=sys.stderr, disable=not progress, total=total):
        per_clip[key] = {m: roundtrip_scores(clip, codec, m, ev, lpips) for m in mappings}
    mean = {m: {k: float(np.mean([c[m][k] for c in per_clip.values()])) for k in next(iter(per_clip.values()))[m]}
            for m in mappings} if per_clip else {}
    return {"per_clip": per_clip, "mean": mean}


def markdown(result: dict) -> str:
    cols = list(next(iter(result["mean"].values())).keys()) if result["mean"] else []
    arrows = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "psnr_t": "PSNR_T ↑"}
    lines = ["| mapping | " + " | ".join(arrows.get(c, c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, s in result["mean"].items():
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(f"{s[c]:.4f}" if c in ("ssim", "lpips") else
                                                             f"{s[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluate.mapping",
        description="DiffHDR Table 4: round-trip HDR clips through a VAE under Linear, Log, Log without gamma and "
        "Log-Gamma mappings; PSNR/SSIM (and LPIPS with --lpips-weights) in sRGB, plus PSNR_T.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest version file (ROOT/manifests/vNNNN.parquet)")
    src.add_argument("--reference", help="an HDR tree in the dataset layout instead of a manifest")
    p.add_argument("--split", default="test", help="manifest split ('all' = every clip)")
    p.add_argument("--vae", required=True, help="local diffusers VAE folder (AutoencoderKLWan or AutoencoderKL)")
    p.add_argument("--out", help="write mapping.json and mapping.md here (default: print only)")
    p.add_argument("--max-clips", type=int, help="evaluate at most this many clips (in order)")
    p.add_argument("--frames", type=int, default=17, help="frames per clip (cut to 1 + 4k for the video VAE)")
    p.add_argument("--ev", type=float, default=0.0, help="exposure (stops) applied before the sRGB conversion")
    p.add_argument("--mappings", default=",".join(MAPPINGS))
    p.add_argument("--lpips-weights", help="local torchvision AlexNet checkpoint for LPIPS")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="VAE precision (DiffHDR runs its VAE in float32: bf16 bands HDR)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from hdr.cli import resolve_device

    try:
        args.device = resolve_device(args.device)
        mappings = tuple(m.strip() for m in args.mappings.split(",") if m.strip())
        for m in mappings:
            forward(m, np.zeros(1))
        out = Store(args.out) if args.out else None
        if out is not None and out.exists("mapping.json") and not args.overwrite:
            raise FileExistsError(f"{out.uri('mapping.json')} already exists (use --overwrite, or another --out)")
        if args.manifest:
            from hdr.dataset import open_manifest

            man = open_manifest(args.manifest)
            jobs: list[ClipJob] = clips_from_manifest(man, None if args.split == "all" else args.split)
            store = man.store
            source = {"manifest": str(args.manifest), "version": man.version, "root_hash": man.root_hash,
                      "split": args.split}
        else:
            man, store = None, Store(args.reference)
            jobs = clips_from_reference(store)
            source = {"reference": store.uri()}
        if not jobs:
            raise ValueError(f"{args.manifest or args.reference}: no clips to evaluate")
        jobs = jobs[: args.max_clips] if args.max_clips else jobs
        lpips = None
        if args.lpips_weights:
            lpips = Lpips(args.lpips_weights, args.device)
        else:
            print("note: LPIPS not computed (pass --lpips-weights PATH; nothing is downloaded)", file=sys.stderr)
        codec = load_vae(args.vae, args.device, args.dtype)
        shapes = []

        def clips(scratch):  # one clip in memory at a time
            for j in jobs:
                clip = codec.fit(read_clip(store, j.frames[: args.frames], scratch).astype(np.float64))
                shapes.append({"key": j.key, "shape": list(clip.shape)})
                yield j.key, clip

        with tempfile.TemporaryDirectory(prefix="mapping-") as scratch:
            table = mapping_table(clips(scratch), codec, mappings, args.ev, lpips, total=len(jobs))
    except (HdrImageError, ValueError, FileNotFoundError, FileExistsError, MetricUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = markdown(table)
    print(md, end="")
    if out is not None:
        result = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "source": source, "vae": codec.describe(), "ev": args.ev, "frames": args.frames,
                  "mappings": {m: LABELS[m] for m in mappings}, "log_gamma_m": LOG_GAMMA_M,
                  "clips": shapes, **table}
        if man is not None:
            if out.is_local:
                out.local_path().mkdir(parents=True, exist_ok=True)
            man.record(args.out)
        out.write_bytes("mapping.md", md.encode("utf-8"))
        out.write_json("mapping.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
