"""metrics.json -> a markdown table and PNG plots (per-clip bars; each metric against the clip's dynamic range)."""
from __future__ import annotations

import math
from pathlib import Path

from evaluate.metrics import METRICS


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _label(name: str) -> str:
    info = METRICS.get(name)
    if info is None:
        return name
    arrow = "↑" if info.higher_is_better else "↓"
    return f"{name} ({info.unit}) {arrow}" if info.unit else f"{name} {arrow}"


def markdown(result: dict) -> str:
    names = result["metrics"]
    lines = [f"# Evaluation: {result['predictions']}", ""]
    src = result["source"]
    lines.append(f"Ground truth: {src.get('manifest') or src.get('reference')}"
                 + (f" (split `{src['split']}`, manifest {src.get('version')})" if src.get("manifest") else ""))
    lines.append("")
    head = ["clip", "frames", "DR (stops)"] + [_label(n) for n in names]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for c in result["clips"]:
        row = [c["key"], f"{c['n_frames']}/{c['n_gt_frames']}", _fmt(c.get("dynamic_range_stops"))]
        row += [_fmt(c["metrics"].get(n)) for n in names]
        lines.append("| " + " | ".join(row) + " |")
    mean = result["mean"]
    lines.append("| **mean** | " + str(sum(c["n_frames"] for c in result["clips"])) + " | | "
                 + " | ".join(f"**{_fmt(mean.get(n))}**" for n in names) + " |")
    lines.append("")
    s = result["settings"]
    lines.append(f"PSNR capped at {s['psnr_cap_db']:g} dB (identical frames). Normalisation: {s['normalisation']}. "
                 f"Absolute luminance for PU21/VDP: {s['luminance_mapping']}.")
    if s.get("vdp"):
        lines.append("")
        lines.append("VDP: " + "; ".join(f"{k}: {v['package']} {v['version']}, display `{v['display']}`"
                                         + (f", photometry {v['photometry']}" if v.get("photometry") else "")
                                         for k, v in s["vdp"].items()) + f", {s['fps']:g} fps.")
    for name, why in result.get("unavailable", {}).items():
        lines.append(f"\n*{why}*")
    for note in result.get("notes", []):
        lines.append(f"\nNote: {note}")
    if result.get("missing"):
        lines.append(f"\nMissing predictions ({len(result['missing'])}): " + ", ".join(result["missing"]))
    if result.get("failures"):
        lines.append(f"\nFailed clips ({len(result['failures'])}):")
        lines += [f"- {f['key']}: {f['error']}" for f in result["failures"]]
    return "\n".join(lines) + "\n"


def _save(fig, axes, used: int, out_dir, name: str) -> str:
    """Blank the unused panels, write the figure as ``out_dir/name`` and free it; returns ``name``."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def plots(result: dict, out_dir: str | Path) -> list[str]:
    """Write ``per_clip.png`` and ``vs_dynamic_range.png`` into ``out_dir``; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    names = [n for n in result["metrics"] if any(c["metrics"].get(n) is not None for c in result["clips"])]
    clips = result["clips"]
    if not names or not clips:
        return []
    ncol = min(3, len(names))
    nrow = math.ceil(len(names) / ncol)
    written = []

    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 0.25 * len(clips) + 2.2 * nrow), squeeze=False)
    for ax, n in zip(axes.flat, names):
        vals = [c["metrics"].get(n) for c in clips]
        vals = [float("nan") if v is None else v for v in vals]
        ax.barh(range(len(clips)), vals, color="tab:blue" if METRICS[n].higher_is_better else "tab:orange")
        ax.set_yticks(range(len(clips)), [c["key"] for c in clips], fontsize=6)
        ax.invert_yaxis()
        ax.set_title(_label(n), fontsize=9)
        mean = result["mean"].get(n)
        if mean is not None and not math.isnan(mean):
            ax.axvline(mean, color="k", lw=0.8, ls="--")
    written.append(_save(fig, axes, len(names), out_dir, "per_clip.png"))

    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, n in zip(axes.flat, names):
        xs = [c.get("dynamic_range_stops") for c in clips]
        ys = [c["metrics"].get(n) for c in clips]
        pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
        if pts:
            ax.scatter(*zip(*pts), s=14)
        ax.set_xlabel("GT dynamic range (stops)", fontsize=8)
        ax.set_title(_label(n), fontsize=9)
    written.append(_save(fig, axes, len(names), out_dir, "vs_dynamic_range.png"))
    return written
