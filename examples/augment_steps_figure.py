"""Write docs/images/augment-steps.jpg: one frame of a bundled HDRI under each camera step and preset, and
docs/images/motion-blur.jpg: the same frame rendered with the shutter closed, half open and fully open.

    python examples/augment_steps_figure.py [--out docs/images/augment-steps.jpg]

Renders one 320x180 frame of ``city.exr`` (inside the bpy wheel) with the direct engine, then shows it through the
core degradation at a fixed exposure and through each step alone (white balance at 3500 K and 9000 K, a sigmoid
response curve, JPEG at quality 30, H.264 at CRF 40 over a short clip, the four tone-mapping operators).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdr.dataset.ldr import make_ldr  # noqa: E402
from hdr.degrade.presets import PRESETS, sample_params  # noqa: E402
from hdr.io import read_image, write_png  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" / "augment-steps.jpg"))
    p.add_argument("--hdri", default="city.exr")
    args = p.parse_args()
    from render.hdri import default_hdri_dir

    tmp = Path(tempfile.mkdtemp(prefix="steps-figure-"))
    try:
        (tmp / "maps").mkdir()
        shutil.copy(Path(default_hdri_dir()) / args.hdri, tmp / "maps")
        subprocess.run([sys.executable, "-m", "render.run", "--hdris", str(tmp / "maps"), "--root", str(tmp / "r"),
                        "--engine", "direct", "--resolution", "320x180", "--frames", "6", "--programs",
                        "rotation_000", "--no-ray", "--quiet"], check=True, cwd=Path(__file__).resolve().parents[1])
        clip = tmp / "r" / Path(args.hdri).stem / "rotation_000"
        hdr = np.stack([read_image(f) for f in sorted(clip.glob("frame_*.exr"))])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = replace(PRESETS["paper"], exposure="choice", exposure_choices=(0.0,), noise_probability=0.0)
    cases = [("paper (sRGB)", ()),
             ("white balance 3500 K", ({"step": "white_balance", "kelvin": 3500.0},)),
             ("white balance 9000 K", ({"step": "white_balance", "kelvin": 9000.0},)),
             ("hue +30 deg, saturation -0.3", ({"step": "hue_saturation", "hue": 30.0, "saturation": -0.3},)),
             ("sigmoid curve n 0.9 a 0.6", ({"step": "curve", "n": 0.9, "a": 0.6},)),
             ("JPEG quality 30", ({"step": "jpeg", "quality": 30},)),
             ("H.264 CRF 40", ({"step": "video", "crf": 40, "gop": 3},))]
    cases += [(f"TMO {op}", ({"step": "tmo", "operator": op, "gamma": 2.0, "intensity": 0.0, "light_adapt": 0.9,
                             "color_adapt": 0.1, "scale": 0.75, "bias": 0.85, "low_percentile": 5.0,
                             "high_percentile": 95.0},)) for op in ("exposure", "reinhard", "mantiuk", "drago")]
    tiles = []
    for label, steps in cases:
        preset = replace(base, steps=steps)
        frame = make_ldr(hdr, "single", preset, sample_params(preset, 0)).frames[-1]
        tiles.append(_label(frame, label))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)  # a full last row
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in range(0, len(tiles), 4)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet = np.concatenate(rows, axis=0)
    if args.out.endswith(".png"):
        write_png(args.out, sheet)
    else:
        from PIL import Image

        Image.fromarray(sheet).save(args.out, quality=88)
    print(f"wrote {args.out}")
    blur_out = str(Path(args.out).with_name("motion-blur.jpg"))
    motion_blur_sheet(args.hdri, blur_out)
    print(f"wrote {blur_out}")
    return 0


def motion_blur_sheet(hdri: str, out: str) -> None:
    """A frame of a rotation and of a highlight zoom at --shutter 0, 0.5 and 1 (direct engine, 320x180, 9 frames),
    through the paper preset at a fixed exposure: the blur is in the HDR, so the LDR carries it."""
    from PIL import Image

    from render import analysis
    from render.engines import HdriSource, get_engine
    from render.hdri import default_hdri_dir
    from render.programs import plan_clip

    img = read_image(Path(default_hdri_dir()) / hdri)
    aims = analysis.aims(*analysis.luminance_map(img))
    tiles = []
    for program, frame, stops in (("rotation_000", 4, 0.0), ("highlight_zoom_in", 1, -4.0)):
        preset = replace(PRESETS["paper"], exposure="choice", exposure_choices=(stops,), noise_probability=0.0)
        plan = plan_clip(program, 9, 0, Path(hdri).stem, aims)
        for shutter in (0.0, 0.5, 1.0):
            eng = get_engine("direct", samples=4, backend="torch", shutter=shutter)
            eng.load(HdriSource(None, img, img.shape[1], img.shape[0]))
            hdr = next(iter(eng.render(plan, 320, 180, Path(out).parent, only={frame})))[None]
            eng.close()
            ldr = make_ldr(hdr, "single", preset, sample_params(preset, 0)).frames[0]
            tiles.append(_label(ldr, f"{program} --shutter {shutter:g}"))
    rows = [np.concatenate(tiles[i:i + 3], axis=1) for i in range(0, len(tiles), 3)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out, quality=88)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = np.ascontiguousarray(img.copy())
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


if __name__ == "__main__":
    sys.exit(main())
