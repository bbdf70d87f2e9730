"""The one function that turns HDR frames plus an augmentation into LDR frames, exposures and masks.

    ldr = make_ldr(hdr_frames, "single", PRESETS["paper"], params)         # augment.run writes these to disk
    ldr = make_ldr(window, "alt3", preset, params, start=t0)               # the loader, on the fly
    ldr = remake(hdr_frames, AugMeta.read(store, rel))                     # bit for bit from an aug.json

Parameters come from :func:`hdr.degrade.presets.sample_params`; a preset whose exposure is computed on the clip
(``hdrcnn``, ``singlehdr``) needs the whole clip there: ``sample_params(preset, seed, frames=hdr_frames)``. A re-make
never draws again: it uses the recorded parameters (stops, curve file and index included).

Which transfer and which masks a kind of sequence gets is decided here only (:func:`sequence_spec`): single-exposure
LDR is sRGB with the preset's mask mode; HDR-V-Diff's alternating sequences (alt2, alt3) are gamma 2.2 with the
paper's masks, linearised with that gamma.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hdr.dataset.records import KINDS, AugMeta
from hdr.degrade.alternating import GAMMA, TRANSFER as ALT_TRANSFER, alternating_evs, alternating_ldr
from hdr.degrade.masks import exposure_masks
from hdr.degrade.presets import PRESETS, Params, Preset, degrade, preset_from_json
from hdr.degrade.presets import linear_to_ldr8
from hdr.degrade.steps import (apply_ldr, apply_linear, bayer_of, bayer_roundtrip, like, on_cpu, tmo_of,
                                tone_map)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def n_exposures(kind: str) -> int:
    """0 for single-exposure LDR, 2 or 3 for alternating sequences."""
    return 0 if check_kind(kind) == "single" else int(kind[3:])


def kind_of(n_exposures: int) -> str:
    return f"alt{int(n_exposures)}" if n_exposures else "single"


def sequence_spec(kind: str, preset: Preset, params: Params | None = None) -> tuple[str, str]:
    """(transfer, mask mode) of a kind of LDR sequence made with ``preset`` (and ``params``: a response curve step
    replaces sRGB, and its masks are the paper's on that curve's linearisation)."""
    if check_kind(kind) != "single":
        return ALT_TRANSFER, "paper"
    transfer = params.transfer if params is not None else "srgb"
    return (transfer, preset.mask_mode) if transfer == "srgb" else (transfer, "paper")


def _encode_single(hdr, params: Params):
    """Single-exposure LDR: exposure, noise, then the curve and the quantiser; with a ``bayer`` step the noisy
    linear frames go through the colour filter first, with a ``tmo`` step an operator replaces the curve (both on
    the CPU: OpenCV). Every path ends in the one 8-bit quantiser."""
    drawn = list(params.steps)
    bayer, tmo = bayer_of(drawn), tmo_of(drawn)
    if bayer is None and tmo is None:
        return degrade(hdr, params)[0]
    _, lin = degrade(hdr, params, return_linear=True)
    if bayer is not None:
        frames = linear_to_ldr8(bayer_roundtrip(on_cpu(lin), bayer["pattern"], bayer["method"]), params.quantize,
                                params.transfer)
    else:  # the operator's display values are already encoded: quantised through the identity curve
        frames = linear_to_ldr8(tone_map(on_cpu(lin), tmo), params.quantize, "gamma:1")
    return like(frames, hdr)


@dataclass
class LdrClip:
    frames: object  # uint8 (T, H, W, 3), numpy or torch like the input
    exposures: list  # e_t = 2^EV_t relative to the clip's exposure (1.0 for single-exposure LDR)
    over: object  # float (T, H, W) in [0, 1]
    under: object
    transfer: str  # hdr.color.TRANSFERS name of the encoding
    mask_mode: str
    alternating: dict | None  # alt kinds: n_exposures, ev, exposure, gamma
    step_results: list = field(default_factory=list)  # what the steps did (e.g. a codec's achieved bitrate)

    @property
    def format(self) -> str:
        names = {"srgb": "8-bit sRGB PNG", "gamma2.2": "8-bit gamma-2.2 PNG"}
        return names.get(self.transfer, f"8-bit PNG, response curve {self.transfer}")


def make_ldr(hdr, kind: str, preset: Preset, params: Params, start: int = 0) -> LdrClip:
    """HDR frames (T, H, W, 3) -> :class:`LdrClip`. ``start``: the clip frame index of ``hdr[0]`` (the EV cycle of
    an alternating sequence continues from there, so a window of a clip gets the clip's exposures). The preset's
    extra steps run where a camera has them (:mod:`hdr.degrade.steps`): white balance on the linear frames, the
    response curve in the quantiser (single-exposure LDR; alternating sequences stay gamma 2.2), compression on the
    8-bit frames; the masks are computed on the final frames, linearised with the curve used."""
    transfer, mask_mode = sequence_spec(kind, preset, params)
    n = n_exposures(kind)
    step_results = []
    if params.steps:
        hdr = apply_linear(hdr, list(params.steps))
    alternating = None
    if n:
        evs = alternating_evs(len(hdr), n, start=start)
        frames, exposures = alternating_ldr(hdr, evs, params)
        alternating = {"n_exposures": n, "ev": evs, "exposure": exposures, "gamma": GAMMA}
    else:
        frames = _encode_single(hdr, params)
        exposures = [1.0] * len(hdr)
    if params.steps:
        frames, step_results = apply_ldr(frames, list(params.steps))
    over, under = exposure_masks(frames, mask_mode, transfer)
    return LdrClip(frames, exposures, over, under, transfer, mask_mode, alternating, step_results)


def preset_of(aug: AugMeta) -> Preset:
    """The preset an augmentation was made with (its recorded settings, overrides included)."""
    return preset_from_json(aug.preset_settings, "aug.json preset_settings") if aug.preset_settings \
        else PRESETS[aug.preset]


def params_of(aug: AugMeta) -> Params:
    params = Params(**aug.params)
    if params.steps:
        from hdr.degrade.steps import transfer_of

        transfer_of(list(params.steps))  # a measured curve is loaded again from its recorded file
    return params


def remake(hdr, aug: AugMeta) -> LdrClip:
    """Re-make an augmentation's LDR frames and masks from its record and the clip's HDR frames, bit for bit."""
    return make_ldr(hdr, aug.kind, preset_of(aug), params_of(aug))
