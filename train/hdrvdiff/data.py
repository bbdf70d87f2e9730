"""From a ClipWindowDataset batch to HDR-V-Diff's inputs and targets (the LDR comes from hdr.dataset.ldr.make_ldr).

Units: the alternating LDR frame k is I_k = clip(H * 2^Delta * e_k)^(1/2.2) (hdr.degrade.alternating), so the linear
part of eq. 1, I_k^gamma / e_k, equals R = H * 2^Delta wherever I_k is not saturated. The network works on R scaled
by the darkest exposure of the window, x = clip(R * e_min, 0, 1) (1 where even the darkest frame saturates), and the
losses on its mu-law tonemap (hdr.color.mu_law, mu = 5000). Inference returns R = x / e_min.
"""
from __future__ import annotations

import numpy as np
import torch

from hdr.color import LDR_GAMMA as GAMMA
from hdr.color import _xp, mu_law



def network_input(ldr, exposure: float, gamma: float = GAMMA, channel_axis: int = -1):
    """L_k = c(I_k, I_k^gamma / e_k) (HDR-V-Diff eq. 1): 6 channels from an LDR frame (uint8 or [0, 1] float)."""
    xp = _xp(ldr)
    if xp.__name__ == "torch":
        i = ldr.float() / 255.0 if not ldr.is_floating_point() else ldr
        return xp.cat([i, i**gamma / exposure], dim=channel_axis)
    i = ldr.astype(np.float32) / 255.0 if ldr.dtype == np.uint8 else ldr
    return np.concatenate([i, i**gamma / exposure], axis=channel_axis)


def _stops(params, b: int) -> torch.Tensor:
    """Delta (augment exposure, stops) per batch item from the items' ``params`` (list of dicts or a collated dict)."""
    if isinstance(params, dict):
        v = params.get("exposure_stops")
        if v is None:
            raise ValueError("batch params carry no 'exposure_stops' (the augmentation's Delta); cannot scale the HDR")
        return torch.as_tensor(v, dtype=torch.float32).reshape(-1).expand(b)
    out = []
    for i, p in enumerate(params):
        if "exposure_stops" not in p:
            raise ValueError(f"batch item {i}: params carry no 'exposure_stops' (the augmentation's Delta)")
        out.append(float(p["exposure_stops"]))
    return torch.tensor(out, dtype=torch.float32)


def prepare(batch: dict, device=None, dtype=torch.float32) -> dict:
    """Batch (hdr, ldr (B, T, 3, H, W), exposures (B, T), params) -> dict of
    ``L`` (B, T, 6, H, W) = c(I_k, I_k^gamma / e_k) (eq. 1, :func:`network_input`), ``ldr``,
    ``exposures``, ``e_min`` (B,), ``target01`` (normalised linear HDR, [0, 1]) and ``target_tm`` (its mu-law)."""
    ldr = batch["ldr"].to(device, dtype)
    if ldr.dim() != 5 or ldr.shape[2] != 3:
        raise ValueError(f"batch ldr must be (B, T, 3, H, W), got {tuple(ldr.shape)}")
    b, t = ldr.shape[:2]
    e = torch.as_tensor(batch["exposures"]).to(device, dtype).reshape(b, t)
    out = {"ldr": ldr, "exposures": e, "e_min": e.min(dim=1).values,
           "L": network_input(ldr, e.view(b, t, 1, 1, 1), GAMMA, channel_axis=2)}
    if "hdr" in batch:
        scale = torch.pow(2.0, _stops(batch.get("params", {}), b)).to(device, dtype) * out["e_min"]
        x = (batch["hdr"].to(device, dtype) * scale.view(b, 1, 1, 1, 1)).clamp(0.0, 1.0)
        out["target01"], out["target_tm"] = x, mu_law(x)
    return out


def random_crop(tensors: dict, size: int | None, multiple: int, generator: torch.Generator | None) -> dict:
    """The same spatial crop of every (..., H, W) tensor: ``size`` x ``size`` (rounded down to ``multiple``) or, when
    ``size`` is None, the largest multiple of ``multiple`` that fits; the offset is drawn from ``generator``."""
    h, w = next(iter(tensors.values())).shape[-2:]
    ch = (min(size, h) if size else h) // multiple * multiple
    cw = (min(size, w) if size else w) // multiple * multiple
    if ch < multiple or cw < multiple:
        raise ValueError(f"frames {h}x{w} are smaller than the model's size multiple {multiple}")
    y0 = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
    x0 = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return {k: (v[..., y0:y0 + ch, x0:x0 + cw] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[-2:] == (h, w)
                else v) for k, v in tensors.items()}
