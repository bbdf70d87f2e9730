"""Alternating-exposure LDR sequences for HDR-V-Diff and its baselines (Chen et al. 2021; HDR-V-Diff §3).

Two exposures cycle EV {0, +3}, three cycle EV {-2, 0, +2}, frame by frame; LDR frames use gamma 2.2; the network
input of frame k is L_k = c(I_k, I_k^gamma / e_k) (HDR-V-Diff eq. 1) with e_k = 2^EV_k the relative exposure.
"""
from __future__ import annotations


from hdr.degrade.presets import Params, linear_to_ldr8, noisy_frames
from hdr.color import LDR_GAMMA, _xp

EXPOSURE_SETS = {2: (0.0, 3.0), 3: (-2.0, 0.0, 2.0)}
GAMMA = LDR_GAMMA
TRANSFER = "gamma2.2"  # the name of the encoding in hdr.color.TRANSFERS (recorded in aug.json)


def alternating_evs(n_frames: int, n_exposures: int, start: int = 0) -> list[float]:
    """EV of every frame, cycling the exposure set from position ``start``."""
    evs = EXPOSURE_SETS[n_exposures]
    return [evs[(start + t) % len(evs)] for t in range(n_frames)]


def alternating_ldr(hdr, evs, params: Params):
    """HDR frames (T, H, W, 3) -> 8-bit LDR frames with exposure 2^(Delta + EV_t), the clip's AR(1) noise, gamma
    :data:`GAMMA` and the preset's quantisation (the toolkit's one exact quantiser); returns (uint8 frames, exposures
    e_t = 2^EV_t)."""
    xp = _xp(hdr)
    exposed = (frame * float(2.0 ** (params.exposure_stops + ev)) for frame, ev in zip(hdr, evs))
    out = [linear_to_ldr8(lin, params.quantize, TRANSFER) for lin in noisy_frames(exposed, hdr.shape, params, like=hdr)]
    return xp.stack(out), [float(2.0**ev) for ev in evs]
