"""``report vN``: a static HTML page of a version (``<root>/_reports/<version>/index.html`` + ``thumbs/``).

Totals at the top; per HDRI a section with, for each clip, tonemapped thumbnails of the first, middle and last frame
(Reinhard x / (1 + x) after scaling the clip's log-average luminance to 0.18, then the sRGB OETF: hdr.color), the
middle LDR frame of its first stored augmentation, a histogram of log2 luminance of those three frames, the dynamic
range in stops (from clip.json), the caption and the augmentation parameters. No external resources; one small
inline script filters the HDRI sections.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hdr.color import REINHARD_KEY, luminance, reinhard_display
from hdr.io import LdrImageError, decode_ldr, read_image, write_png
from hdr.storage import atomic_write_text, human_bytes
from hdr.dataset.manifest import Manifest
from hdr.dataset.rows import ClipRecord

HIST_RANGE = (-12.0, 18.0)  # log2 luminance (stops), one bin per stop
KEY = REINHARD_KEY


def _resize(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    height = max(1, round(h * width / w))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if width < w else cv2.INTER_NEAREST)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key.replace("/", "__"))


def _hist_svg(counts: np.ndarray, dr: float | None, w: int = 180, h: int = 60) -> str:
    lo, hi = HIST_RANGE
    n = len(counts)
    peak = max(int(counts.max()), 1)
    bw = w / n
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - 12 - (c / peak) * (h - 14):.1f}" width="{bw - 0.5:.1f}" '
        f'height="{(c / peak) * (h - 14):.1f}"/>' for i, c in enumerate(counts) if c)
    x1 = (0 - lo) / (hi - lo) * w  # luminance 1.0
    return (f'<svg class="hist" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="histogram of log2 luminance">{bars}'
            f'<line x1="{x1:.1f}" y1="0" x2="{x1:.1f}" y2="{h - 12}" class="unit"/>'
            f'<text x="0" y="{h - 1}">2^{lo:g}</text><text x="{x1 - 4:.1f}" y="{h - 1}">1</text>'
            f'<text x="{w - 28}" y="{h - 1}">2^{hi:g}</text></svg>')


def _clip_assets(m: Manifest, c: ClipRecord, out: Path, width: int) -> dict:
    idx = sorted({0, c.n_frames // 2, c.n_frames - 1})
    frames = np.stack([_read_exr(m, c.frames[i]) for i in idx])
    tm, scale = reinhard_display(frames, KEY)
    thumbs = []
    for i, img in zip(idx, tm):
        name = f"thumbs/{_slug(c.key)}_{i:04d}.png"
        write_png(out / name, _resize(img, width))
        thumbs.append((i, name))
    y = luminance(frames)
    logy = np.log2(np.maximum(y, 2.0 ** (HIST_RANGE[0] - 1)))
    counts, _ = np.histogram(logy, bins=int(HIST_RANGE[1] - HIST_RANGE[0]), range=HIST_RANGE)
    ldr = []  # the middle frame of the first augmentation of every preset (single) and kind (alt), side by side
    first: dict[tuple, object] = {}
    for a in c.augs:
        first.setdefault((a.kind, a.preset if a.kind == "single" else ""), a)
    for a in first.values():
        rel = a.frames[c.n_frames // 2]
        try:
            img = decode_ldr(m.read_bytes(rel), rel, color=True)
        except LdrImageError:
            continue  # the report shows the clip without this LDR thumbnail
        name = f"thumbs/{_slug(c.key)}_ldr_{_slug(a.aug_id)}.png"
        write_png(out / name, _resize(img, width))
        ldr.append((a.aug_id, name))
    return {"thumbs": thumbs, "hist": counts, "scale": scale, "ldr": ldr,
            "measured_dr": float(np.log2(max(np.percentile(y, 99.9), 1e-9) / max(np.percentile(y, 0.1), 1e-9)))}


def _read_exr(m: Manifest, rel: str) -> np.ndarray:
    if m.store.is_local:
        return read_image(m.local_file(rel), name=rel)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp, m.store.local_copy(rel, tmp) as p:
        return read_image(p, name=rel)


def _aug_text(a) -> str:
    """One line of HTML: id, kind, preset and the sampled parameters (dynamic parts escaped)."""
    e = html.escape
    p = a.params
    bits = [f"{e(a.aug_id)} ({e(a.kind)}, {e(str(a.preset))})"]
    if isinstance(p.get("exposure_stops"), (int, float)):
        bits.append(f"&Delta; {p['exposure_stops']:+.2f} stops")
    if p.get("noise"):
        bits.append(f"&sigma;<sub>s</sub> {float(p.get('sigma_s', 0)):.2e}, "
                    f"&sigma;<sub>c</sub> {float(p.get('sigma_c', 0)):.2e}")
    else:
        bits.append("no noise")
    alt = p.get("alternating")
    if isinstance(alt, dict) and alt.get("ev"):
        bits.append("EV " + e("/".join(f"{float(x):+g}" for x in alt["ev"][: int(alt.get("n_exposures", 1))])))
    return ", ".join(bits)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
table.totals{border-collapse:collapse;margin:8px 0 20px} table.totals td{padding:2px 14px 2px 0}
section.hdri{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;padding:10px 14px}
section.hdri h2{font-size:16px;margin:0 0 6px} .badge{font-size:12px;padding:1px 7px;border-radius:9px;color:#fff}
.train{background:#2b7a3d} .val{background:#b07400} .test{background:#b0302b}
.clip{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;border-top:1px solid #eee;padding:8px 0}
.thumbs{display:flex;gap:4px} figure{margin:0;text-align:center;font-size:11px;color:#666}
figure img{display:block;image-rendering:pixelated;border:1px solid #ccc}
.meta{flex:1 1 300px;max-width:560px} .meta .k{color:#666} .caption{font-style:italic}
svg.hist rect{fill:#4a6fa5} svg.hist text{font-size:9px;fill:#666} svg.hist line.unit{stroke:#c33;stroke-width:1}
#filter{padding:4px 8px;width:260px} code{font-size:12px}
"""

JS = """
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase();
  var shown = 0;
  document.querySelectorAll('section.hdri').forEach(function (s) {
    var hit = s.dataset.search.indexOf(q) >= 0;
    s.style.display = hit ? '' : 'none';
    if (hit) { shown += 1; }
  });
  document.getElementById('shown').textContent = shown;
});
"""


def write_report(m: Manifest, out: str | None = None, thumb_width: int = 160, progress: bool = True,
                 threads: int | None = None, split: str | None = None, max_hdris: int | None = None) -> str:
    """Write the page; ``split`` / ``max_hdris`` (the first N HDRIs by name) limit the sections shown (a paper-sized
    dataset reads 3 frames of each of its 5400 clips); the totals always describe the whole version."""
    out_dir = Path(out) if out else None
    if out_dir is None:
        if not m.store.is_local:
            raise ValueError("give --out (a local folder) for a dataset on an object store")
        out_dir = Path(m.store.path(f"_reports/{m.version}"))
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    clips = m.clips(split)
    if max_hdris is not None:
        keep = set(sorted({c.hdri_id for c in clips})[:max_hdris])
        clips = [c for c in clips if c.hdri_id in keep]
    with ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1)) as ex:
        assets = list(tqdm(ex.map(lambda c: _clip_assets(m, c, out_dir, thumb_width), clips), total=len(clips),
                           unit="clip", desc="report", file=sys.stderr, disable=not progress, dynamic_ncols=True))
    rec = m.record_dict
    c = rec["counts"]
    sp = rec["split"]
    git = rec.get("git") or {}
    e = html.escape
    dr = [x.dr_stops for x in clips if x.dr_stops is not None]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', '<link rel="icon" href="data:,">',
        f"<title>Dataset report {e(m.version)}</title><style>{CSS}</style></head><body>",
        f"<h1>Dataset {e(m.version)}</h1>",
        f'<div class="sub">root <code>{e(m.root)}</code> &middot; root hash <code>{e(m.root_hash)}</code></div>',
        '<table class="totals" id="totals">',
        f"<tr><td>HDRIs</td><td>{c['hdris']}</td><td>clips</td><td>{c['clips']}</td><td>HDR frames</td>"
        f"<td>{c['frames']}</td></tr>",
        f"<tr><td>augmentations</td><td>{c['augmentations']}</td><td>LDR frames</td><td>{c['ldr_frames']}</td>"
        f"<td>captions</td><td>{c['captions']}</td></tr>",
        f"<tr><td>files</td><td>{c['files']}</td><td>bytes</td><td>{e(human_bytes(rec['bytes']['total']))}</td>"
        f"<td>dynamic range</td><td>{(min(dr) if dr else 0):.1f}&ndash;{(max(dr) if dr else 0):.1f} stops "
        f"(median {float(np.median(dr)) if dr else 0:.1f})</td></tr>",
        f"<tr><td>split</td><td colspan=5>train {sp['clips']['train']} clips / {sp['hdris']['train']} HDRIs, "
        f"val {sp['clips']['val']} / {sp['hdris']['val']}, test {sp['clips']['test']} / {sp['hdris']['test']} "
        f"(seed {sp['settings']['seed']}, test {e(sp['settings']['test'])}, val {e(sp['settings']['val'])})</td></tr>",
        f"<tr><td>made</td><td colspan=5>{e(rec['created'])}, parent {e(rec['parent'] or '-')}, toolkit "
        f"{e(rec['toolkit_version'])}, git <code>{e(str(git.get('commit') or 'unknown'))}</code>"
        f"{' (dirty)' if git.get('dirty') else ''}</td></tr>",
        "</table>",
        f"<p>Showing {len({x.hdri_id for x in clips})} of {c['hdris']} HDRIs"
        f"{' (split ' + e(split) + ')' if split else ''}.</p>"
        '<p><label>Filter HDRIs: <input id="filter" type="search" placeholder="name, split, caption"></label> '
        f'<span id="shown">{len({x.hdri_id for x in clips})}</span> shown. Thumbnails: Reinhard after '
        "scaling the log-average "
        f"luminance of the clip to {KEY}, sRGB; histogram: log2 luminance of the three frames, one bin per stop, "
        "red line at 1.0.</p>",
    ]
    by_hdri: dict[str, list] = {}
    for clip, a in zip(clips, assets):
        by_hdri.setdefault(clip.hdri_id, []).append((clip, a))
    for hdri_id, items in by_hdri.items():
        split = items[0][0].split
        search = " ".join([hdri_id, split] + [x.caption or "" for x, _ in items]).lower()
        parts.append(f'<section class="hdri" data-search="{e(search)}"><h2>{e(hdri_id)} '
                     f'<span class="badge {e(split)}">{e(split)}</span> '
                     f'<small><code>{e((items[0][0].hdri_sha256 or "")[:12])}</code></small></h2>')
        for clip, a in items:
            figs = "".join(f'<figure><img src="{e(src)}" width="{thumb_width}" alt="{e(clip.key)} frame {i}">'
                           f"frame {i}</figure>" for i, src in a["thumbs"])
            for aug_id, src in a["ldr"]:
                figs += (f'<figure><img src="{e(src)}" width="{thumb_width}" alt="{e(clip.key)} LDR {e(aug_id)}">'
                         f"LDR {e(aug_id)}</figure>")
            dr_txt = f"{clip.dr_stops:.1f}" if clip.dr_stops is not None else "n/a"
            cap = (f'<div class="caption">{e(clip.caption)}</div>' if clip.caption
                   else '<div class="k">no caption</div>')
            augs = "<br>".join(_aug_text(x) for x in clip.augs) or "no stored augmentations"
            parts.append(
                f'<div class="clip"><div class="thumbs">{figs}</div><div>{_hist_svg(a["hist"], clip.dr_stops)}'
                f'<div class="k">DR {dr_txt} stops (clip.json); {a["measured_dr"]:.1f} stops p0.1&ndash;p99.9 '
                f"of these frames</div></div>"
                f'<div class="meta"><b>{e(clip.clip_id)}</b> <span class="k">{e(clip.program)}, {clip.n_frames} '
                f"frames, {clip.width}x{clip.height}, {e(human_bytes(clip.bytes))}</span>{cap}"
                f'<div class="k">{augs}</div></div></div>')
        parts.append("</section>")
    parts.append(f"<p class='k'>Written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by "
                 f"<code>python -m manifests report {e(m.version)}</code>.</p>")
    parts.append(f"<script>{JS}</script></body></html>")
    index = out_dir / "index.html"
    atomic_write_text(index, "\n".join(parts))
    atomic_write_text(out_dir / "report.json", json.dumps({"version": m.version, "root_hash": m.root_hash,
                                                            "clips": len(clips)}) + "\n")
    return str(index)
