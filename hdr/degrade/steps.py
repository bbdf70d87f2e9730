"""Camera steps around the core degradation (exposure -> noise -> curve -> 8-bit, :mod:`hdr.degrade.presets`).

A preset's ``steps`` is an ordered list of mappings ``{"step": NAME, FIELD: DISTRIBUTION, ...}``; a field's value is
a constant, ``[lo, hi]`` (uniform; integers for integer fields), ``{"choice": [...]}`` or ``{"mean": m, "std": s,
"min": lo, "max": hi}`` (a clipped normal). :func:`sample_steps` draws every field of every step from its own
PCG64 stream (``[seed, 2, index]``: the core's draws are untouched, so adding a step never changes them) and
returns what was drawn (recorded in aug.json ``params.steps``); :func:`apply_linear` and :func:`apply_ldr` apply
them. The stages of a step say where a camera has it:

    white_balance  linear, before the noise  per-channel gains of a sampled colour temperature against D65
    hue_saturation linear, before the noise  HSV hue rotation and saturation offset on sqrt(linear) (HDRCNN's virtual
                                             camera), the largest channel kept
    curve          the encoding              the response curve the quantiser and the masks use (hdr.degrade.curves)
    tmo            the encoding              a tone-mapping operator instead of a curve (OpenCV's Reinhard, Drago,
                                             Mantiuk, or percentile exposure; ExpandNet's random TMO per clip)
    bayer          after the noise, before   the sensor's colour filter array: mosaic the noisy linear frames
                   the curve                 (clipped at saturation, 16 bit), demosaic them with OpenCV (bilinear or
                                             edge-aware)
    jpeg           after the quantiser       JPEG per frame (Pillow; quality, 4:2:0 chroma)
    video          after the quantiser       a real codec round trip (PyAV: libx264, libx265 if the wheel has it;
                                             CRF, yuv420p, GOP), decoded back; records the achieved bitrate
"""
from __future__ import annotations

import io
import math

import numpy as np

from hdr.degrade import curves

# field -> default distribution, per step; the stage says where it runs
STEPS: dict[str, dict] = {
    "white_balance": {"stage": "linear", "fields": {"probability": 1.0, "kelvin": [3500.0, 9000.0]}},
    # gabrieleilertsen/hdrcnn training_code/virtualcamera/virtualcamera.cpp: hue += N(0, 7) degrees, S += N(0, 0.1)
    "hue_saturation": {"stage": "linear", "cpu_only": True, "fields": {
        "probability": 1.0, "hue": {"mean": 0.0, "std": 7.0}, "saturation": {"mean": 0.0, "std": 0.1}}},
    "curve": {"stage": "encode", "fields": {
        "family": "sigmoid",  # sigmoid | gamma | file
        "n": {"mean": 0.9, "std": 0.1, "min": 0.5, "max": 1.5},  # HDRCNN's virtual camera: n ~ N(0.9, 0.1)
        "a": {"mean": 0.6, "std": 0.1, "min": 0.2, "max": 1.2},  #                           a ~ N(0.6, 0.1)
        "gamma": [1.8, 2.6],
        "file": None,  # family file: a measured curve the user supplies (DoRF dorfCurves.txt or x y columns)
        "index": None,  # family file: which of the file's curves (None: one at random per clip)
    }},
    # dmarnerides/hdr-expandnet util.py (random_tone_map, TRAIN_TMO_DICT with randomize=True): one operator per clip,
    # gamma U(1.8, 2.2) and each operator's ranges; the output is mapped to [0, 1] by its min and max
    "tmo": {"stage": "encode", "cpu_only": True, "fields": {
        "operator": {"choice": ["exposure", "reinhard", "mantiuk", "drago"]},
        "gamma": [1.8, 2.2],
        "low_percentile": [0.0, 15.0], "high_percentile": [85.0, 100.0],  # exposure (percentile clipping)
        "intensity": [-1.0, 1.0], "light_adapt": [0.8, 1.0], "color_adapt": [0.0, 0.2],  # reinhard
        "scale": [0.65, 0.85],  # mantiuk
        "bias": [0.7, 0.9],  # drago
    }},
    "bayer": {"stage": "sensor", "cpu_only": True, "fields": {"pattern": "RGGB", "method": "edge_aware"}},
    "jpeg": {"stage": "ldr", "cpu_only": True, "fields": {"probability": 1.0, "quality": [30, 100]}},
    "video": {"stage": "ldr", "cpu_only": True, "fields": {"codec": "libx264", "crf": [18, 32], "gop": 12,
                                                           "preset": "medium", "fps": 24}},
}
INT_FIELDS = {"quality", "crf", "gop", "fps", "index"}


def cpu_only_steps(steps) -> list[str]:
    """The names of the steps in ``steps`` (a preset's step mappings) that exist only on the CPU (OpenCV, Pillow,
    the codecs): a tensor on a GPU makes a round trip through host memory for them."""
    return [s["step"] for s in steps if STEPS.get(s["step"], {}).get("cpu_only")]


class StepError(ValueError):
    """A step configuration that cannot be used (one line naming the step and the field)."""


def check_step(cfg: dict, where: str = "steps") -> dict:
    """A step mapping with its defaults filled in; StepError on an unknown step or field."""
    if not isinstance(cfg, dict) or "step" not in cfg:
        raise StepError(f"{where}: each step is a mapping with a 'step' key (one of {', '.join(STEPS)})")
    name = cfg["step"]
    if name not in STEPS:
        raise StepError(f"{where}: unknown step {name!r}; known: {', '.join(STEPS)}")
    fields = STEPS[name]["fields"]
    unknown = [k for k in cfg if k != "step" and k not in fields]
    if unknown:
        raise StepError(f"{where}.{name}: unknown field {unknown[0]!r}; fields: {', '.join(fields)}")
    return {"step": name, **fields, **{k: v for k, v in cfg.items() if k != "step"}}


def _draw(r: np.random.Generator, spec, integer: bool):
    if isinstance(spec, dict) and "choice" in spec:
        return spec["choice"][int(r.integers(len(spec["choice"])))]
    if isinstance(spec, dict) and "mean" in spec:
        v = float(r.normal(spec["mean"], spec["std"]))
        return float(min(max(v, spec.get("min", -math.inf)), spec.get("max", math.inf)))
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
        return int(r.integers(int(spec[0]), int(spec[1]) + 1)) if integer else float(r.uniform(spec[0], spec[1]))
    return spec


def sample_steps(steps, seed: int) -> list[dict]:
    """Draw every step's fields (each step from its own stream); the records aug.json keeps."""
    out = []
    for i, cfg in enumerate(steps):
        cfg = check_step(dict(cfg), f"steps[{i}]")
        r = np.random.default_rng([int(seed), 2, i])
        drawn = {"step": cfg["step"]}
        for k, v in cfg.items():
            if k != "step":
                drawn[k] = _draw(r, v, k in INT_FIELDS)
        if "probability" in drawn:
            drawn["applied"] = bool(r.random() < float(drawn.pop("probability")))
        if cfg["step"] == "white_balance":
            drawn["gains"] = white_balance_gains(drawn["kelvin"])
        if cfg["step"] == "tmo":
            keep = {"exposure": ("low_percentile", "high_percentile"), "reinhard": ("intensity", "light_adapt",
                    "color_adapt"), "mantiuk": ("scale",), "drago": ("bias",)}
            if drawn["operator"] not in keep:
                raise StepError(f"steps.tmo.operator: {drawn['operator']!r}; expected one of {', '.join(keep)}")
            drawn = {"step": "tmo", "operator": drawn["operator"], "gamma": drawn["gamma"],
                     **{k: drawn[k] for k in keep[drawn["operator"]]}}
        if cfg["step"] == "jpeg":  # a draw above 100 is 100 (HDRCNN: min(30 + rand() % 75, 100))
            drawn["quality"] = min(int(drawn["quality"]), 100)
        if cfg["step"] == "curve":
            drawn = _curve_record(drawn, r)
        out.append(drawn)
    return out


def _curve_record(d: dict, r: np.random.Generator) -> dict:
    """What a curve step records: its spec, and for a file the file, the curve's index (drawn from the step's
    stream when not given) and its name."""
    if d["family"] == "sigmoid":
        return {"step": "curve", "family": "sigmoid", "transfer": curves.sigmoid_spec(d["n"], d["a"])}
    if d["family"] == "gamma":
        return {"step": "curve", "family": "gamma", "transfer": curves.gamma_spec(d["gamma"])}
    if d["family"] != "file":
        raise StepError(f"steps.curve.family: {d['family']!r}; expected sigmoid, gamma or file")
    if not d.get("file"):
        raise StepError("steps.curve: family file needs a measured response-curve file, which cannot be shipped: "
                        f"download the DoRF database (dorfCurves.txt, Columbia CAVE, {curves.DORF_URL}) and pass "
                        "--set step.curve.file=PATH/dorfCurves.txt")
    names = curves.curve_names(d["file"])
    index = int(r.integers(len(names))) if d.get("index") is None else int(d["index"])
    return {"step": "curve", "family": "file", "transfer": curves.load_curve_file(d["file"], index),
            "file": d["file"], "index": index, "curve": names[index]}


def transfer_of(drawn: list[dict], default: str = "srgb") -> str:
    """The response curve of a clip: its curve step's (a TMO's display gamma), else ``default``; a measured curve is
    re-loaded from its recorded file (so an aug.json re-makes its frames on another machine that has the file)."""
    for d in drawn:
        if d["step"] == "tmo":
            return curves.gamma_spec(d["gamma"])
        if d["step"] == "curve":
            if d["transfer"].startswith("table:"):
                spec = curves.load_curve_file(d["file"], d.get("index", 0))
                if spec != d["transfer"]:
                    raise StepError(f"{d['file']}: this curve file is not the one recorded ({d['transfer']})")
            return d["transfer"]
    return default


# --- white balance -----------------------------------------------------------------------------------------------
_XYZ_TO_REC709 = np.array([[3.2404542, -1.5371385, -0.4985314],
                           [-0.9692660, 1.8760108, 0.0415560],
                           [0.0556434, -0.2040259, 1.0572252]])


def planckian_xy(kelvin: float) -> tuple[float, float]:
    """CIE 1931 chromaticity of a blackbody (Kim et al.'s cubic fit of the Planckian locus, 1667-25000 K)."""
    t = float(min(max(kelvin, 1667.0), 25000.0))
    if t <= 4000:
        x = -0.2661239e9 / t**3 - 0.2343589e6 / t**2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t**3 + 2.1070379e6 / t**2 + 0.2226347e3 / t + 0.240390
    if t <= 2222:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif t <= 4000:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    return x, y


def illuminant_rgb(kelvin: float) -> np.ndarray:
    """Linear Rec.709 RGB of a blackbody of luminance 1."""
    x, y = planckian_xy(kelvin)
    xyz = np.array([x / y, 1.0, (1.0 - x - y) / y])
    return _XYZ_TO_REC709 @ xyz


def white_balance_gains(kelvin: float, reference: float = 6504.0) -> list[float]:
    """Channel gains that turn a scene lit at ``reference`` into one lit at ``kelvin`` (a camera balanced for the
    wrong light), normalised to Rec.709 luminance 1: warm below the reference (R up, B down), cool above."""
    g = illuminant_rgb(kelvin) / illuminant_rgb(reference)
    g = g / float(np.dot([0.2126, 0.7152, 0.0722], g))
    return [float(v) for v in g]


def on_cpu(x) -> np.ndarray:
    """The numpy view of ``x`` (a torch tensor goes through the CPU: OpenCV, Pillow and the codecs live there)."""
    return x.detach().cpu().numpy() if type(x).__module__.startswith("torch") else x


def like(a: np.ndarray, ref):
    """``a`` as the same kind of array as ``ref`` (a tensor on its device, or numpy)."""
    if type(ref).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(ref.device)
    return a


def rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (..., 3) -> hue in degrees [0, 360), saturation (max - min) / max, value max (Smith's hexcone model,
    SIGGRAPH 1978: what OpenCV's RGB2HSV computes on float images)."""
    v, lo = x.max(axis=-1), x.min(axis=-1)
    c = v - lo
    s = np.divide(c, v, out=np.zeros_like(v), where=v > 0)
    safe = np.where(c > 0, c, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(c > 0, 60.0 * h, 0.0), s, v


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_hsv` (hue taken modulo 360)."""
    hp = (h % 360.0) / 60.0
    sector = np.minimum(np.floor(hp).astype(np.int64), 5)
    f = hp - sector
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]  # the six hue sectors
    return np.stack([np.choose(sector, [c[k] for c in rgb]) for k in range(3)], axis=-1)


def hue_saturation(lin: np.ndarray, hue: float, saturation: float) -> np.ndarray:
    """Rotate the hue by ``hue`` degrees and add ``saturation`` to the HSV saturation (clamped to [0, 1]), in the
    sqrt(linear) domain, squared back (gabrieleilertsen/hdrcnn virtualcamera.cpp: pow 0.5, RGB2HSV, H += hue,
    S += sat, HSV2RGB, pow 2). The HSV value, i.e. each pixel's largest channel, is kept. Frame by frame, float64
    inside, float32 out."""
    out = np.empty(lin.shape, np.float32)
    for t in range(lin.shape[0]):
        h, s, v = rgb_to_hsv(np.sqrt(np.maximum(lin[t], 0.0).astype(np.float64)))
        out[t] = np.square(hsv_to_rgb(h + float(hue), np.clip(s + float(saturation), 0.0, 1.0), v))
    return out


def apply_linear(hdr, drawn: list[dict]):
    """The linear-light steps (before the exposure and the noise): white balance, hue/saturation."""
    for d in drawn:
        if d["step"] == "hue_saturation" and d.get("applied", True):
            hdr = like(hue_saturation(on_cpu(hdr), d["hue"], d["saturation"]), hdr)
        if d["step"] == "white_balance" and d.get("applied", True):
            g = np.asarray(d["gains"], np.float32)
            if type(hdr).__module__.startswith("torch"):
                import torch

                hdr = hdr * torch.as_tensor(g, device=hdr.device)
            else:
                hdr = hdr * g
    return hdr


# --- sensor ------------------------------------------------------------------------------------------------------
BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def bayer_of(drawn: list[dict]) -> dict | None:
    d = next((d for d in drawn if d["step"] == "bayer"), None)
    if d is not None:
        if d["pattern"] not in BAYER_PATTERNS:
            raise StepError(f"steps.bayer.pattern: {d['pattern']!r}; expected one of {', '.join(BAYER_PATTERNS)}")
        if d["method"] not in ("bilinear", "edge_aware"):
            raise StepError(f"steps.bayer.method: {d['method']!r}; expected bilinear or edge_aware")
        if any(x["step"] == "tmo" for x in drawn):
            raise StepError("steps: bayer (a clipped 16-bit raw) and tmo (tone-maps the unclipped radiance) exclude "
                            "each other")
    return d


def mosaic(lin: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Linear frames (..., H, W, 3) -> one colour sample per pixel (..., H, W) through the 2x2 colour filter."""
    index = {"R": 0, "G": 1, "B": 2}
    ch = np.array([[index[pattern[0]], index[pattern[1]]], [index[pattern[2]], index[pattern[3]]]])
    h, w = lin.shape[-3:-1]
    cmap = np.tile(ch, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    return np.take_along_axis(lin, np.broadcast_to(cmap[..., None], lin.shape[:-1] + (1,)), axis=-1)[..., 0]


def bayer_roundtrip(lin: np.ndarray, pattern: str = "RGGB", method: str = "edge_aware") -> np.ndarray:
    """Noisy linear frames (T, H, W, 3) -> clipped at 1 (sensor saturation), mosaicked, stored as 16-bit raw and
    demosaicked by OpenCV -> linear frames in [0, 1] (float32)."""
    import cv2

    raw = np.round(np.clip(mosaic(lin, pattern), 0.0, 1.0) * 65535.0).astype(np.uint16)
    code = getattr(cv2, f"COLOR_Bayer{pattern}2RGB" + ("_EA" if method == "edge_aware" else ""))
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), code) for f in raw]).astype(np.float32) / 65535.0


# --- tone mapping ------------------------------------------------------------------------------------------------
def tmo_of(drawn: list[dict]) -> dict | None:
    return next((d for d in drawn if d["step"] == "tmo"), None)


def tone_map(lin: np.ndarray, d: dict) -> np.ndarray:
    """Linear frames (T, H, W, 3) -> display values in [0, 1] by the drawn operator, mapped to [0, 1] by the clip's
    min and max (one mapping for the whole clip, so the operator does not flicker more than it does itself)."""
    import cv2

    g = float(d["gamma"])
    x = np.ascontiguousarray(np.maximum(lin, 0.0), dtype=np.float32)
    if d["operator"] == "exposure":
        low, high = np.percentile(x, (d["low_percentile"], d["high_percentile"]))
        y = np.clip(x, low, high)
        y = _map_range(y) ** (1.0 / g)
        return y.astype(np.float32)
    if d["operator"] == "reinhard":
        op = cv2.createTonemapReinhard(gamma=g, intensity=float(d["intensity"]), light_adapt=float(d["light_adapt"]),
                                       color_adapt=float(d["color_adapt"]))
    elif d["operator"] == "mantiuk":
        op = cv2.createTonemapMantiuk(gamma=g, scale=float(d["scale"]), saturation=1.0)
    else:
        op = cv2.createTonemapDrago(gamma=g, saturation=1.0, bias=float(d["bias"]))
    # OpenCV's operators take BGR (their luminance weights are BGR-ordered)
    out = np.stack([op.process(np.ascontiguousarray(f[..., ::-1]))[..., ::-1] for f in x])
    return _map_range(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)).astype(np.float32)


def _map_range(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


# --- compression -------------------------------------------------------------------------------------------------
def jpeg_roundtrip(frames: np.ndarray, quality: int) -> np.ndarray:
    """Every uint8 frame (T, H, W, 3) through JPEG at ``quality`` (Pillow, 4:2:0) and back."""
    from PIL import Image

    out = np.empty_like(frames)
    for t, f in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=int(quality), subsampling=2, optimize=False)
        out[t] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


_PICT_TYPES = {1: "I", 2: "P", 3: "B", 4: "S", 5: "SI", 6: "SP", 7: "BI"}  # FFmpeg's AVPictureType


def video_codecs() -> list[str]:
    import av

    return [c for c in ("libx264", "libx265") if c in av.codecs_available]


def video_roundtrip(frames: np.ndarray, codec: str = "libx264", crf: int = 23, gop: int = 12, preset: str = "medium",
                    fps: int = 24) -> tuple[np.ndarray, dict]:
    """uint8 frames (T, H, W, 3) through a real encoder (PyAV, yuv420p, one thread: the same bytes every run) and
    its decoder; odd sizes are edge-padded to even and cropped back. Returns (frames, what the codec did)."""
    import av

    if codec not in av.codecs_available:
        raise StepError(f"steps.video.codec: {codec} is not in this PyAV build (it has: {', '.join(video_codecs())})")
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    padded = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.thread_count = 1
        opts = {"crf": str(int(crf)), "preset": str(preset), "g": str(int(gop))}
        if codec == "libx264":
            opts["x264-params"] = "threads=1:sliced-threads=0"
        elif codec == "libx265":
            opts["x265-params"] = f"pools=none:frame-threads=1:log-level=error:keyint={int(gop)}"
        stream.options = opts
        for f in padded:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    decoded, kinds = [], []
    with av.open(io.BytesIO(data), "r") as container:
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="rgb24")[:h, :w])
            kinds.append(_PICT_TYPES.get(int(frame.pict_type), str(frame.pict_type)))
    if len(decoded) != t:
        raise StepError(f"steps.video: the {codec} round trip returned {len(decoded)} frames for {t}")
    info = {"bytes": len(data), "bitrate_kbps": round(8.0 * len(data) * fps / t / 1000.0, 3), "frame_types": kinds}
    return np.stack(decoded), info


def apply_ldr(frames, drawn: list[dict]) -> tuple[object, list[dict]]:
    """The steps after the quantiser (JPEG, video) on uint8 frames (numpy; torch tensors go through the CPU: the
    codecs exist only there). Returns (frames, per-step results such as the achieved bitrate)."""
    results = []
    x = on_cpu(frames)
    for d in drawn:
        if d["step"] == "jpeg" and d.get("applied", True):
            x = jpeg_roundtrip(x, d["quality"])
        elif d["step"] == "video":
            x, info = video_roundtrip(x, d["codec"], d["crf"], d["gop"], d["preset"], d["fps"])
            results.append({"step": "video", **info})
    return like(x, frames), results
