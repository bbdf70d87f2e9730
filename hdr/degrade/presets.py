"""LDR video formation (DiffHDR §3.1.2): exposure shift, heteroscedastic AR(1) camera noise, sRGB, clipping and
8-bit quantisation, as functions on numpy arrays or torch tensors of shape (T, H, W, 3) (frames first).

Randomness never comes from the array library: every draw is made by :func:`sample_params` / :func:`ar1_field`
from a numpy PCG64 generator seeded per (clip, augmentation), so numpy and torch, CPU and GPU, give the same LDR
frames and any clip can be re-made bit for bit from the parameters in its aug.json.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import asdict, dataclass, replace

import numpy as np

from hdr.color import _xp, srgb_oetf
from hdr.degrade import curves


@dataclass(frozen=True)
class Preset:
    """Every knob of the degradation; the named presets are :data:`PRESETS`."""

    name: str
    # "uniform": Delta ~ U[lo, hi] stops; "choice": Delta from `exposure_choices`; from the clip's content (the
    # frames go to sample_params): "clip_fraction": a fraction ~ U(clip_fraction_range) of the clip clips at 1;
    # "mean": the clip's mean is scaled to `exposure_mean`, then Delta ~ U[lo, hi] more
    exposure: str
    exposure_range: tuple[float, float] = (-2.0, 2.0)
    exposure_choices: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0)
    sigma_s_range: tuple[float, float] = (0.0, 8.5e-4)
    sigma_c_range: tuple[float, float] = (0.0, 1.5e-5)
    per_channel_sigma: bool = False  # one (sigma_s, sigma_c) per colour channel instead of one per clip
    noise_probability: float = 1.0  # chance that a clip gets noise at all
    noise_scale: float = 1.0  # the noise formula runs on L / noise_scale and the noise is scaled back
    noise_strength: float = 1.0  # the noise is multiplied by this at the end
    var_floor: float = 0.0  # the variance is clamped from below to this before the square root
    rho: float = 0.5  # AR(1) temporal correlation of the noise field
    ar1_init: str = "stationary"  # "stationary": eps_0 = u_0; "zero": eps_{-1} = 0, so eps_0 = sqrt(1 - rho^2) u_0
    quantize: str = "round"  # "round" (paper) or "truncate" ((x * 255).to(uint8) in the public code)
    mask_mode: str = "paper"  # exposure masks: "paper" or "diffhdr-code" (hdr.degrade.masks.MASK_MODES)
    notes: str = ""
    # the camera steps around the core above (hdr.degrade.steps): white balance before the noise, the response curve
    # instead of sRGB, compression after the quantiser; each a mapping {"step": name, field: distribution, ...}
    steps: tuple = ()
    # added after the first presets; aug.json records them only where they apply (see to_json)
    clip_fraction_range: tuple[float, float] = (0.05, 0.15)  # exposure "clip_fraction": the fraction's range
    clip_fraction_of: str = "values"  # "values": every channel value counts (HDRCNN); "pixels": a pixel, by its max
    exposure_mean: float = 0.5  # exposure "mean": the clip's mean after the shift, before exposure_range
    noise_model: str = "diffhdr"  # "diffhdr": var = L s^2 + c^2 (eq. 1); "singlehdr": std = s L + c (NOISE_MODELS)

    def with_overrides(self, **kw) -> "Preset":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_json(self) -> dict:
        """The settings aug.json records (``steps`` only when the preset has any, the later fields only where they
        apply: the records of the presets made before them are unchanged)."""
        import json

        d = json.loads(json.dumps(asdict(self)))
        if not d["steps"]:
            del d["steps"]
        if self.exposure != "clip_fraction":
            del d["clip_fraction_range"], d["clip_fraction_of"]
        if self.exposure != "mean":
            del d["exposure_mean"]
        if self.noise_model == "diffhdr":
            del d["noise_model"]
        return d

    def pipeline(self) -> list[str]:
        """The ordered operations of a single-exposure clip, core and steps (what make_ldr runs): the linear steps,
        exposure, noise, the sensor steps, the encoding (srgb, a curve or a TMO), clip, quantize, the 8-bit steps.
        A no-op core part (no exposure shift, no noise) is left out."""
        from hdr.degrade.steps import STEPS

        def at(stage):
            return [s["step"] for s in self.steps if STEPS[s["step"]]["stage"] == stage]

        out = at("linear")
        if not (self.exposure == "choice" and set(self.exposure_choices) == {0.0}):
            out.append("exposure")
        if self.noise_probability > 0 and (max(self.sigma_s_range) > 0 or max(self.sigma_c_range) > 0):
            out.append("noise")
        return out + at("sensor") + (at("encode") or ["srgb"]) + ["clip", "quantize"] + at("ldr")


PRESETS = {
    "paper": Preset(
        name="paper", exposure="uniform", quantize="round", mask_mode="paper",
        notes="DiffHDR §3.1.2 taken literally: noise std <= ~8.5e-4 at L = 1, invisible after 8-bit quantisation",
    ),
    # Eyeline-Labs/DiffHDR: diffsynth/data/hdr_video.py (np.random.randint(-1, 3) stops, truncation),
    # scripts/train.sh (--add_noise_prob 0.05; 0.3 is only HDRVideoDataset's default argument) and
    # utils/noise_utils.py add_noise_to_video (white_level 65536, per-channel sigmas, noise_strength 0.01,
    # var.clamp_min(1e-12), AR(1) state starting at zero).
    "diffhdr-code": Preset(
        name="diffhdr-code", exposure="choice", per_channel_sigma=True, noise_probability=0.05, noise_scale=65536.0,
        noise_strength=0.01, var_floor=1e-12, ar1_init="zero", quantize="truncate", mask_mode="diffhdr-code",
        notes="public DiffHDR training code: integer stops, noise on radiance / 65536 with per-channel sigmas, "
              "times 0.01, applied to 5% of clips (scripts/train.sh --add_noise_prob 0.05), truncation, soft "
              "smoothed masks",
    ),
}

# Ours, for phone-like video: a visible heteroscedastic noise (1% std at L = 1 at most), a white-balance error, a
# sigmoid response curve (HDRCNN's family and parameter distribution) instead of sRGB, and an H.264 round trip at a
# sampled CRF; the masks follow the curve.
PRESETS["realistic-video"] = Preset(
    name="realistic-video", exposure="uniform", sigma_s_range=(0.0, 0.01), sigma_c_range=(0.0, 0.002),
    quantize="round", mask_mode="paper",
    steps=({"step": "white_balance", "kelvin": [4000.0, 8000.0]}, {"step": "curve", "family": "sigmoid"},
           {"step": "video", "codec": "libx264", "crf": [20, 32], "gop": 12}),
    notes="phone-like video: noise up to 1% at L = 1, white balance 4000-8000 K, sigmoid response curve, H.264 "
          "CRF 20-32",
)

# dmarnerides/hdr-expandnet (util.py random_tone_map): no exposure shift and no noise; one tone-mapping operator per
# clip drawn from exposure (percentile clipping), Reinhard, Mantiuk, Drago with its parameter ranges, output mapped
# to [0, 1] (here by the clip's min and max, ExpandNet maps per image), 8 bit.
PRESETS["expandnet"] = Preset(
    name="expandnet", exposure="choice", exposure_choices=(0.0,), noise_probability=0.0, quantize="round",
    mask_mode="paper", steps=({"step": "tmo"},),
    notes="ExpandNet's training LDR (dmarnerides/hdr-expandnet): a random tone-mapping operator per clip, no noise",
)

# gabrieleilertsen/hdrcnn training_code/virtualcamera/virtualcamera.cpp with hdrcnn_train.py's defaults: exposure
# puts the cl ~ U(0.85, 0.95) quantile of all channel values at 1 (5-15% clip), Gaussian noise of std U(0, 0.01),
# hue += N(0, 7) degrees and S += N(0, 0.1) on sqrt(linear), sigmoid curve n ~ N(0.9, 0.1) in [0.2, 2.5],
# a ~ N(0.6, 0.1) in [0, 5], rounding to 8 bit, JPEG quality min(U{30..104}, 100).
PRESETS["hdrcnn"] = Preset(
    name="hdrcnn", exposure="clip_fraction", clip_fraction_range=(0.05, 0.15), clip_fraction_of="values",
    sigma_s_range=(0.0, 0.0), sigma_c_range=(0.0, 0.01), rho=0.0, quantize="round", mask_mode="paper",
    steps=({"step": "hue_saturation"},
           {"step": "curve", "family": "sigmoid", "n": {"mean": 0.9, "std": 0.1, "min": 0.2, "max": 2.5},
            "a": {"mean": 0.6, "std": 0.1, "min": 0.001, "max": 5.0}},
           {"step": "jpeg", "quality": [30, 104]}),
    notes="HDRCNN's virtual camera (gabrieleilertsen/hdrcnn, virtualcamera.cpp): exposure clipping 5-15% of the "
          "channel values of the clip, Gaussian noise std U(0, 0.01), hue/saturation jitter, sigmoid curve, JPEG "
          "quality min(U{30..104}, 100)",
)

# alex04072000/SingleHDR training_code (train_dequantization_net.py build_graph, dataset.py): the HDR scaled to mean
# 0.5 then by t = 2^U[-3, 3] (a 600-point grid there), noise sigma_s L eps + sigma_c eps with per-channel
# sigma_s = u 0.08/6, sigma_c = u 0.005 (u ~ U(0, 1); the same u and eps for both: the ops share seed=1), relu,
# clip, one DoRF curve per image, round to 8 bit, JPEG quality round(90 + 10 i / 7) for batch slot i of 8.
PRESETS["singlehdr"] = Preset(
    name="singlehdr", exposure="mean", exposure_mean=0.5, exposure_range=(-3.0, 3.0), noise_model="singlehdr",
    sigma_s_range=(0.0, 0.08 / 6), sigma_c_range=(0.0, 0.005), per_channel_sigma=True, rho=0.0, quantize="round",
    mask_mode="paper",
    steps=({"step": "curve", "family": "file"},
           {"step": "jpeg", "quality": {"choice": [90, 91, 93, 94, 96, 97, 99, 100]}}),
    notes="SingleHDR's training LDR (alex04072000/SingleHDR, training_code): clip mean 0.5 then +-3 stops, shot "
          "+ read noise, one DoRF curve per clip (--set step.curve.file=dorfCurves.txt), 8 bit, JPEG 90-100",
)


class PresetError(ValueError):
    """A preset name, file or override that cannot be used (one line)."""


def load_preset(name_or_path: str) -> Preset:
    """A named preset (:data:`PRESETS`) or a YAML file of Preset fields (``name`` defaults to the file's stem;
    ``steps`` a list of step mappings, see :mod:`hdr.degrade.steps`)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    from pathlib import Path

    from hdr.cli import load_yaml_mapping

    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        raise PresetError(f"--preset {name_or_path}: not a preset ({', '.join(PRESETS)}) nor a .yaml file")
    data = load_yaml_mapping(p, error=PresetError, what="a preset")
    return preset_from_json({"name": p.stem, "exposure": "uniform", **data}, str(p))


def preset_from_json(data: dict, where: str = "preset") -> Preset:
    """A Preset from its recorded settings (aug.json ``preset_settings``) or a preset file; unknown fields and bad
    steps are one-line errors."""
    from dataclasses import fields as dc_fields

    from hdr.degrade.steps import StepError, check_step

    known = {f.name for f in dc_fields(Preset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PresetError(f"{where}: unknown preset field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
    values = {k: tuple(v) if isinstance(v, list) and k != "steps" else v for k, v in data.items()}
    steps = values.get("steps") or ()
    try:
        for i, s in enumerate(steps):
            check_step(dict(s), f"{where}: steps[{i}]")
    except StepError as e:
        raise PresetError(str(e)) from None
    values["steps"] = tuple(dict(s) for s in steps)
    return Preset(**values)


def override_fields() -> tuple[str, ...]:
    """The Preset fields ``--set FIELD=VALUE`` may change."""
    from dataclasses import fields as dc_fields

    return tuple(f.name for f in dc_fields(Preset) if f.name not in ("name", "notes", "steps"))


def check_overrides(pairs) -> tuple:
    """``--set`` pairs (key, parsed value) -> the same with list values of core fields as tuples; one-line
    PresetError on a key that is neither a Preset field nor ``step.NAME.FIELD`` (a step key is checked against the
    preset's steps by :func:`apply_overrides`)."""
    known, out = override_fields(), []
    for key, value in pairs:
        parts = key.split(".")
        if parts[0] in ("step", "steps") and len(parts) == 3:
            out.append((key, value))
        elif key in known:
            out.append((key, tuple(value) if isinstance(value, list) else value))
        else:
            raise PresetError(f"--set {key}=...: not a preset field; expected FIELD=VALUE with FIELD one of "
                              f"{', '.join(sorted(known))}, or step.NAME.FIELD")
    return tuple(out)


def apply_overrides(preset: Preset, pairs) -> Preset:
    """``--set`` pairs on a preset: ``FIELD`` (a Preset field) or ``step.NAME.FIELD`` (a field of the preset's step
    NAME, which must exist)."""
    from hdr.degrade.steps import STEPS

    plain, steps = {}, [dict(s) for s in preset.steps]
    for key, value in check_overrides(pairs):
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("step", "steps"):
            _, name, fld = parts
            hits = [s for s in steps if s.get("step") == name]
            if not hits:
                raise PresetError(f"--set {key}: preset {preset.name} has no {name} step (its steps: "
                                  f"{', '.join(s['step'] for s in steps) or 'none'})")
            if fld not in STEPS[name]["fields"]:
                raise PresetError(f"--set {key}: step {name} has no field {fld!r}; fields: "
                                  f"{', '.join(STEPS[name]['fields'])}")
            for s in hits:
                s[fld] = value
        else:
            plain[key] = value
    return replace(preset.with_overrides(**plain), steps=tuple(steps))


NOISE_FIELD = "pcg64-invcdf16/1"  # how eps is drawn (recorded in aug.json): see normal_table()
# "diffhdr": n = sqrt(L sigma_s^2 + sigma_c^2) eps (DiffHDR eq. 1); "singlehdr": n = (sigma_s L + sigma_c) eps, the
# shot term proportional to L and one eps for both terms (SingleHDR train_*_net.py: two random_normal ops, seed=1)
NOISE_MODELS = ("diffhdr", "singlehdr")


@dataclass(frozen=True)
class Params:
    """Everything drawn for one augmentation (recorded in aug.json). sigma_s / sigma_c are floats, or lists of
    three (R, G, B) with per-channel sigmas."""

    preset: str
    seed: int
    exposure_stops: float
    noise: bool
    sigma_s: float | list
    sigma_c: float | list
    rho: float
    noise_scale: float
    quantize: str
    noise_strength: float = 1.0
    var_floor: float = 0.0
    ar1_init: str = "stationary"
    noise_field: str = NOISE_FIELD
    transfer: str = "srgb"  # the response curve (hdr.degrade.curves spec) the quantiser encodes with
    steps: tuple = ()  # what every extra step drew (hdr.degrade.steps), in order
    noise_model: str = "diffhdr"  # NOISE_MODELS
    exposure: dict | None = None  # a content-dependent exposure: what was drawn and measured on the clip

    def to_json(self) -> dict:
        d = asdict(self)
        if d["transfer"] == "srgb":  # the published presets' records stay as they were
            del d["transfer"]
        if not d["steps"]:
            del d["steps"]
        else:
            d["steps"] = list(d["steps"])
        if d["noise_model"] == "diffhdr":
            del d["noise_model"]
        if d["exposure"] is None:
            del d["exposure"]
        return d

    def has_noise(self) -> bool:
        return self.noise and (np.any(np.asarray(self.sigma_s) > 0) or np.any(np.asarray(self.sigma_c) > 0)
                               or self.var_floor > 0)


EXPOSURES = ("uniform", "choice", "clip_fraction", "mean")
CONTENT_EXPOSURES = ("clip_fraction", "mean")  # these need the clip's frames when the parameters are drawn
CLIP_SAMPLE = 1 << 24  # at most this many values of a clip go into its clipping quantile (a strided subsample)


def _strided(flat: np.ndarray, row: int) -> np.ndarray:
    """``flat`` itself, or every p-th entry when it holds more than CLIP_SAMPLE: p the smallest stride >= len /
    CLIP_SAMPLE coprime with the row length ``row``, so the sample walks through every column and channel."""
    p = -(-len(flat) // CLIP_SAMPLE)
    while p > 1 and math.gcd(p, row) != 1:
        p += 1
    return flat[::p]


def clip_fraction_exposure(frames, target: float, of: str = "values") -> tuple[float, dict]:
    """Stops that make the fraction ``target`` of the clip clip at 1 (all frames pooled; ``of`` "values": every
    channel value counts, as HDRCNN's histogram of all channels; "pixels": a pixel counts when its largest channel
    clips): the (1 - target) quantile of the values (exact on a subsample of at most CLIP_SAMPLE, see
    :func:`_strided`) is scaled to 1. Returns (stops, what aug.json records: the target, the fraction of the whole
    clip that the float32 gain of :func:`degrade` does clip (before noise and steps), the sample size)."""
    x = np.asarray(frames, np.float32)
    if of not in ("values", "pixels"):
        raise PresetError(f"clip_fraction_of: {of!r}; expected values or pixels")
    pool = x.reshape(-1) if of == "values" else x.reshape(-1, x.shape[-1])
    sample = _strided(pool, x.shape[-2] * (x.shape[-1] if of == "values" else 1))
    if of == "pixels":
        sample = sample.max(axis=-1)
    n, k = sample.size, min(max(int(round(target * sample.size)), 1), sample.size)
    level = float(np.partition(sample, n - k)[n - k])  # the k-th largest value
    if level <= 0:  # more than (1 - target) of the clip is black: every lit value clips
        level = float(sample[sample > 0].min()) if np.any(sample > 0) else 1.0
    g = np.float32(1.0 / level)  # the float32 gain degrade() applies; the k-th largest value must reach 1
    if np.float32(level) * g < 1.0:
        g = np.nextafter(g, np.float32(np.inf))
    stops = math.log2(float(g))  # float32(2^stops) is g again
    clipped = sum(int(np.count_nonzero((f if of == "values" else f.max(axis=-1)) * g >= 1.0)) for f in x)
    total = x.size if of == "values" else x.size // x.shape[-1]
    return stops, {"mode": "clip_fraction", "of": of, "target_fraction": float(target),
                   "achieved_fraction": clipped / total, "sampled": int(n), "total": int(total)}


def mean_exposure(frames, target_mean: float, relative: float) -> tuple[float, dict]:
    """Stops that scale the clip's mean (all channel values of all frames) to ``target_mean``, plus ``relative``
    (SingleHDR dataset.py _pre_hdr_p2: hdr 0.5 / mean, then times t); a black clip gets ``relative`` only."""
    x = np.asarray(frames, np.float32)
    mean = sum(float(np.sum(f, dtype=np.float64)) for f in x) / max(x.size, 1)
    stops = (math.log2(target_mean / mean) if mean > 0 else 0.0) + relative
    return stops, {"mode": "mean", "clip_mean": mean, "target_mean": float(target_mean), "relative_stops": relative}


def sample_params(preset: Preset, seed: int, frames=None) -> Params:
    """Draw the per-clip parameters: Delta, whether noise is applied, (sigma_s, sigma_c) shared over frames, the
    steps. ``frames``: the clip's HDR frames (T, H, W, 3), needed by a content-dependent exposure
    (CONTENT_EXPOSURES), which is computed on them as given (before any camera step)."""
    r = np.random.default_rng(seed)
    exposure = None
    if preset.exposure in CONTENT_EXPOSURES:
        if frames is None:
            raise PresetError(f"preset {preset.name}: exposure {preset.exposure} is computed on the clip: "
                              "sample_params(preset, seed, frames=<the clip's HDR frames>)")
        if type(frames).__module__.startswith("torch"):
            frames = frames.detach().cpu().numpy()
    if preset.exposure == "uniform":
        stops = float(r.uniform(*preset.exposure_range))
    elif preset.exposure == "choice":
        stops = float(preset.exposure_choices[int(r.integers(len(preset.exposure_choices)))])
    elif preset.exposure == "clip_fraction":
        stops, exposure = clip_fraction_exposure(frames, float(r.uniform(*preset.clip_fraction_range)),
                                                 preset.clip_fraction_of)
    elif preset.exposure == "mean":
        stops, exposure = mean_exposure(frames, preset.exposure_mean, float(r.uniform(*preset.exposure_range)))
    else:
        raise PresetError(f"preset {preset.name}: exposure {preset.exposure!r}; expected one of {', '.join(EXPOSURES)}")
    noise = bool(r.random() < preset.noise_probability)
    k = 3 if preset.per_channel_sigma else None
    if preset.noise_model == "singlehdr":  # one uniform u per channel scales both sigmas (their ops share a seed)
        u = r.uniform(size=k)
        (s0, s1), (c0, c1) = preset.sigma_s_range, preset.sigma_c_range
        sigma_s, sigma_c = s0 + u * (s1 - s0), c0 + u * (c1 - c0)
    elif preset.noise_model == "diffhdr":
        sigma_s = r.uniform(*preset.sigma_s_range, size=k)
        sigma_c = r.uniform(*preset.sigma_c_range, size=k)
    else:
        raise PresetError(f"preset {preset.name}: noise_model {preset.noise_model!r}; expected one of "
                          f"{', '.join(NOISE_MODELS)}")
    as_json = (lambda v: [float(x) for x in v]) if k else float
    zero = [0.0] * 3 if k else 0.0
    drawn, transfer = (), "srgb"
    if preset.steps:  # each from its own stream: the draws above are the same with or without steps
        from hdr.degrade.steps import sample_steps, transfer_of

        drawn = tuple(sample_steps(preset.steps, seed))
        transfer = transfer_of(list(drawn))
    return Params(preset=preset.name, seed=int(seed), exposure_stops=stops, noise=noise,
                  sigma_s=as_json(sigma_s) if noise else zero, sigma_c=as_json(sigma_c) if noise else zero,
                  rho=preset.rho, noise_scale=preset.noise_scale, quantize=preset.quantize,
                  noise_strength=preset.noise_strength, var_floor=preset.var_floor if noise else 0.0,
                  ar1_init=preset.ar1_init, transfer=transfer, steps=drawn, noise_model=preset.noise_model,
                  exposure=exposure)


def check_preset(preset: Preset) -> Params:
    """Draw a preset's parameters once on a tiny synthetic clip: a step that cannot run (a curve file missing, a
    codec not built) or a bad field fails here with its one-line error, before any clip is read."""
    probe = np.linspace(0.0, 2.0, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    return sample_params(preset, 0, frames=probe if preset.exposure in CONTENT_EXPOSURES else None)


@functools.lru_cache(maxsize=1)
def normal_table() -> np.ndarray:
    """Standard normal quantiles at the 65536 midpoints (i + 1/2) / 2^16, made symmetric and scaled to unit
    variance (float32). A 16-bit uniform code indexes it: an exact, bit-reproducible normal deviate on every machine
    and array library, 3.5x faster to draw than numpy's ziggurat; resolution 4e-5 sigma at the centre, tails cut at
    +-4.3 sigma (probability 1.5e-5)."""
    nd = statistics.NormalDist()
    half = np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(32768)])
    t = np.concatenate([half, -half[::-1]])
    return (t / np.sqrt(np.mean(t * t))).astype(np.float32)


def _codes(gen: np.random.Generator, n: int) -> np.ndarray:
    """n uniform 16-bit codes from the generator's raw 64-bit output (little-endian split, machine-independent)."""
    raw = gen.bit_generator.random_raw((n + 3) // 4).astype("<u8", copy=False)
    return raw.view("<u2")[:n]


def ar1_frames(shape, rho: float, seed: int, init: str = "stationary", like=None):
    """Yield unit-variance Gaussian fields eps_t = rho eps_{t-1} + sqrt(1 - rho^2) u_t (DiffHDR eq. 2), one frame
    of shape ``shape[1:]`` at a time, float32, as numpy arrays or as tensors on ``like``'s device. ``init``
    "stationary": eps_0 = u_0; "zero": eps_{-1} = 0 (the public code), so eps_0 = sqrt(1 - rho^2) u_0.
    The draws come from one PCG64 stream (``seed``) in frame order; the recursion runs in float32 in the same
    operation order on numpy and torch, so both give the same bits."""
    gen = np.random.default_rng([int(seed), 1])
    n = int(np.prod(shape[1:]))
    table = normal_table()
    k, r = np.float32(math.sqrt(1.0 - rho * rho)), np.float32(rho)
    torch_mode = like is not None and type(like).__module__.startswith("torch")
    if torch_mode:
        import torch

        table = torch.as_tensor(table, device=like.device)
    prev = None
    for t in range(shape[0]):
        codes = _codes(gen, n)
        if torch_mode:
            u = table[torch.from_numpy(codes.astype(np.int64)).to(like.device)].reshape(shape[1:])
        else:
            u = table[codes].reshape(shape[1:])
        if prev is None:
            eps = u if init == "stationary" else u * k
        else:
            eps = prev * r
            eps += u * k
        prev = eps
        yield eps


def ar1_field(shape, rho: float, seed: int, init: str = "stationary") -> np.ndarray:
    """The whole field of :func:`ar1_frames` as one float32 array (T, ...)."""
    out = np.empty(shape, np.float32)
    for t, eps in enumerate(ar1_frames(shape, rho, seed, init)):
        out[t] = eps
    return out


def _like(ref, a: np.ndarray):
    """``a`` as the array type (and device) of ``ref``."""
    if type(ref).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(a, device=ref.device)
    return a


def exposure_shift(hdr, stops: float):
    """x * 2^Delta in linear space."""
    return hdr * float(2.0**stops)


def noise_std(lin, sigma_s, sigma_c, scale: float = 1.0, strength: float = 1.0, var_floor: float = 0.0,
              model: str = "diffhdr"):
    """sqrt(L sigma_s^2 + sigma_c^2) (DiffHDR eq. 1; ``model`` "singlehdr": sigma_s L + sigma_c) on
    L = max(lin, 0) / scale, in units of ``lin`` (times ``scale * strength``). Sigmas are scalars or per-channel
    sequences (broadcast over the last axis)."""
    xp = _xp(lin)
    if model == "singlehdr":
        s = np.asarray(sigma_s, np.float32) / np.float32(scale)
        c = np.asarray(sigma_c, np.float32)
        if xp.__name__ == "torch":
            return (lin.clamp(min=0.0) * _like(lin, s) + _like(lin, c)) * (scale * strength)
        std = np.maximum(lin, 0.0) * s
        std += c
        std *= np.float32(scale * strength)
        return std
    s2 = np.square(np.asarray(sigma_s, np.float32))
    c2 = np.square(np.asarray(sigma_c, np.float32))
    if xp.__name__ == "torch":
        s2, c2 = _like(lin, s2), _like(lin, c2)
        var = lin.clamp(min=0.0) * (s2 / scale) + c2
        return var.clamp(min=var_floor).sqrt() * (scale * strength)
    var = np.maximum(lin, 0.0) * (s2 / np.float32(scale))
    var += c2
    if var_floor:
        np.maximum(var, np.float32(var_floor), out=var)
    np.sqrt(var, out=var)
    var *= np.float32(scale * strength)
    return var


def camera_noise(lin, sigma_s, sigma_c, eps, scale: float = 1.0, strength: float = 1.0, var_floor: float = 0.0,
                 model: str = "diffhdr"):
    """n = sqrt(L sigma_s^2 + sigma_c^2) * eps (DiffHDR eq. 1), see :func:`noise_std`."""
    return noise_std(lin, sigma_s, sigma_c, scale, strength, var_floor, model) * eps


def noisy_frames(lin_frames, shape, params: Params, like=None):
    """Yield lin_t + n_t for each of the ``shape[0]`` frames that ``lin_frames`` yields (the clip's AR(1) noise, on
    ``like``'s array library and device), or lin_t itself when the clip has no noise."""
    if not params.has_noise():
        yield from lin_frames
        return
    eps_iter = ar1_frames(tuple(shape), params.rho, params.seed, params.ar1_init, like=like)
    for lin, eps in zip(lin_frames, eps_iter):
        n = noise_std(lin, params.sigma_s, params.sigma_c, params.noise_scale, params.noise_strength,
                      params.var_floor, params.noise_model)
        n *= eps
        n += lin
        yield n


def _code_thresholds(transfer: str, mode: str) -> np.ndarray:
    """Linear values at which the 8-bit code of the named encoding steps up: code = #{thresholds <= linear value}.
    Code boundaries are (k + 0.5) / 255 for rounding (paper), (k + 1) / 255 for truncation (public code), taken back
    to linear light in float64 through the encoding's exact inverse."""
    k = np.arange(255, dtype=np.float64)
    edges = (k + 0.5) / 255.0 if mode == "round" else (k + 1.0) / 255.0
    return np.asarray(curves.decode(transfer, edges), np.float64).astype(np.float32)


def _bucket_table(t: np.ndarray) -> np.ndarray:
    """Code at the start of every float32 bucket of equal top-16 bits (sign, exponent, 7 mantissa bits) in [0, 1]."""
    starts = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    starts = np.where(np.isfinite(starts) & (starts >= 0), np.minimum(starts, 1.0), 0.0).astype(np.float32)
    table = np.searchsorted(t, starts, side="right").astype(np.uint8)
    ends = np.append(starts[1:], np.float32(1.0))
    positive = (starts > 0) & (ends > starts)
    inside = np.searchsorted(t, ends[positive], side="left") - table[positive]
    if inside.max(initial=0) > 1:  # the one-comparison refinement below relies on this
        raise AssertionError("two 8-bit code boundaries fall into one float32 bucket")
    return table


_TABLES = {}


def _tables(transfer: str, mode: str):
    key = (transfer, mode)
    if key not in _TABLES:
        t = _code_thresholds(transfer, mode)
        try:
            buckets = _bucket_table(t)
        except AssertionError:  # a curve steeper than the buckets resolve: a binary search per value instead
            buckets = None
        _TABLES[key] = (buckets, np.append(t, np.float32(np.inf)).astype(np.float32))
    return _TABLES[key]


def linear_to_ldr8(lin, mode: str = "round", transfer: str = "srgb"):
    """Encode (``transfer``: "srgb" OETF or "gamma2.2"), clip to [0, 1] and quantise to 8 bits in one exact step:
    THE 8-bit quantiser of the toolkit. The code is the number of code boundaries (pre-computed in linear light,
    float64) at or below the value. A 65536-entry table indexed by the top 16 bits of the float32 gives the code at
    the start of the value's bucket; a bucket is narrow enough (0.8%) that at most one more boundary can fall inside
    it (checked when the table is built), which one comparison settles. Identical on numpy and torch."""
    xp = _xp(lin)
    buckets, nxt = _tables(transfer, mode)
    if buckets is None:
        if xp.__name__ == "torch":
            x = lin.float().clamp(0.0, 1.0).contiguous()
            return xp.searchsorted(xp.as_tensor(nxt[:-1], device=x.device), x, right=True).to(xp.uint8)
        x = np.clip(lin, 0.0, 1.0).astype(np.float32, copy=False)
        return np.searchsorted(nxt[:-1], x, side="right").astype(np.uint8)
    if xp.__name__ == "torch":
        x = lin.float().clamp(0.0, 1.0).contiguous()
        table = xp.as_tensor(buckets, device=x.device).long()
        nxt = xp.as_tensor(nxt, device=x.device)
        code = table[(x.view(xp.int32) >> 16).long()]
        return (code + (x >= nxt[code]).long()).to(xp.uint8)
    x = np.clip(lin, 0.0, 1.0).astype(np.float32, copy=False)
    code = buckets[x.view(np.uint32) >> 16]
    code += x >= nxt[code]
    return code


def linear_to_srgb8(lin, mode: str = "round"):
    """:func:`linear_to_ldr8` with the sRGB OETF (single-exposure LDR)."""
    return linear_to_ldr8(lin, mode, "srgb")


CHUNK_VALUES = 1 << 16  # numpy works on row blocks of about this many values (256 KB float32: cache-resident)


def degrade(hdr, params: Params, return_linear: bool = False):
    """HDR frames (T, H, W, 3) -> (uint8 sRGB frames, the noisy linear frames before the OETF if ``return_linear``
    else None). Order (DiffHDR §3.1.2): exposure shift, noise, sRGB OETF, clip to [0, 1], 8-bit quantisation.
    Frame by frame (memory stays at a few frames whatever the clip length); numpy goes through each frame in row
    blocks that stay in the CPU cache, with the same arithmetic, so the bytes do not depend on the block size.
    Torch tensors on the CPU take that numpy path (zero-copy, 2x faster than torch's eager ops there); on a GPU the
    same arithmetic runs as torch ops (:func:`degrade_torch`, tested on the CPU to give the same bytes)."""
    xp = _xp(hdr)
    if xp.__name__ == "torch":
        if hdr.device.type != "cpu":
            return degrade_torch(hdr, params, return_linear)
        out, lin = degrade(hdr.detach().float().numpy(), params, return_linear)
        return xp.from_numpy(out), (xp.from_numpy(lin) if lin is not None else None)
    out = np.empty(hdr.shape, np.uint8)
    lin_out = np.empty(hdr.shape, np.float32) if return_linear else None
    noisy = params.has_noise()
    fields = ar1_frames(tuple(hdr.shape), params.rho, params.seed, params.ar1_init) if noisy else None
    rows = max(1, CHUNK_VALUES // max(1, int(np.prod(hdr.shape[2:]))))
    g = np.float32(2.0**params.exposure_stops)
    for t in range(hdr.shape[0]):
        eps = next(fields) if noisy else None
        for r in range(0, hdr.shape[1], rows):
            lin = hdr[t, r : r + rows] * g
            if noisy:
                n = noise_std(lin, params.sigma_s, params.sigma_c, params.noise_scale, params.noise_strength,
                              params.var_floor, params.noise_model)
                n *= eps[r : r + rows]
                lin += n
            out[t, r : r + rows] = linear_to_ldr8(lin, params.quantize, params.transfer)
            if return_linear:
                lin_out[t, r : r + rows] = lin
    return out, lin_out


def degrade_torch(hdr, params: Params, return_linear: bool = False):
    """:func:`degrade` as torch ops on ``hdr``'s device (the GPU path), frame by frame."""
    import torch

    gain = float(2.0**params.exposure_stops)
    out = torch.empty(tuple(hdr.shape), dtype=torch.uint8, device=hdr.device)
    lins = []
    for t, lin in enumerate(noisy_frames((frame * gain for frame in hdr), hdr.shape, params, like=hdr)):
        out[t] = linear_to_ldr8(lin, params.quantize, params.transfer)
        if return_linear:
            lins.append(lin)
    return out, (torch.stack(lins) if return_linear else None)


def visible_noise_8bit(preset: Preset, L: float) -> float:
    """Noise std in 8-bit sRGB steps at linear level L, for the preset's largest sigmas (first-order propagation
    through the sRGB OETF)."""
    std = float(noise_std(np.array([L], np.float32), preset.sigma_s_range[1], preset.sigma_c_range[1],
                          preset.noise_scale, preset.noise_strength, preset.var_floor, preset.noise_model)[0])
    h = max(L * 1e-4, 1e-9)
    slope = float((srgb_oetf(np.array(L + h)) - srgb_oetf(np.array(max(L - h, 0.0)))) / (2 * h))
    return std * slope * 255.0
