"""HDR-V-Diff inference: an alternating-exposure LDR sequence -> linear HDR frames.

For every frame k: the window of n_frames around k (indices reflected at the sequence ends) goes through the frozen
temporal branch; HDR-LDM samples frame k's latent with 10 DDIM steps from Enc(I_k), E(e_k); the SD decoder's
features and the temporal features meet in the reconstruction module (ZiCA); its mu-law output is inverted and
divided by the darkest exposure (train/hdrvdiff/data.py), i.e. radiance in units of the EV-0 frame's linear value.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from hdr.color import mu_law_inverse
from train.engine import TrainError
from train.hdrvdiff.data import prepare
from train.hdrvdiff.ldm import HDRLDM, load_vae
from train.hdrvdiff.recon import ReconstructionModule
from train.hdrvdiff.stages import RECORD, ReconStage, _load
from train.hdrvdiff.temporal import TemporalBranch
from train.hdrvdiff.unet import HDRLDMUNet


def find_recon_run(run: str | Path) -> Path:
    """A recon run folder, or an all-stages folder holding ``recon/`` (``python -m train.run`` without --stage)."""
    run = Path(run)
    for cand in (run, run / "recon"):
        rec = cand / RECORD
        if rec.is_file() and json.loads(rec.read_text()).get("stage") == "recon":
            return cand
    raise TrainError(f"{run}: no finished recon stage here (expected {RECORD} with stage 'recon', or recon/{RECORD})")


def reflect_window(k: int, n: int, total: int) -> list[int]:
    """Indices k - n//2 .. k + n//2, reflected at 0 and total - 1 (so the exposure cycle is kept near the ends)."""
    out = []
    for i in range(k - n // 2, k + n // 2 + 1):
        if total > 1:
            period = 2 * (total - 1)
            i = i % period
            i = period - i if i > total - 1 else i
        out.append(min(max(i, 0), total - 1))
    return out


class HDRVDiffPipeline:
    def __init__(self, stage: ReconStage):
        self.stage = stage.eval()

    @classmethod
    def from_run(cls, run: str | Path, device: str | torch.device = "cpu", ddim_steps: int | None = None):
        rdir = find_recon_run(run)
        rec = json.loads((rdir / RECORD).read_text())
        ldm_dir, tdir = Path(rec["ldm_dir"]), Path(rec["temporal_dir"])
        lrec = json.loads((ldm_dir / RECORD).read_text()) if (ldm_dir / RECORD).is_file() else {}
        vae_spec = lrec.get("vae", "vae")
        vae_path = ldm_dir / vae_spec if vae_spec == "vae" else Path(vae_spec)
        vae = load_vae(str(vae_path), None if vae_spec == "vae" else lrec.get("vae_subfolder"))
        ldm = HDRLDM(vae, _load(HDRLDMUNet, ldm_dir / "unet", "HDR-LDM U-Net"), rec.get("scheduler"))
        temporal = _load(TemporalBranch, tdir / "temporal", "temporal branch")
        recon = _load(ReconstructionModule, rdir / "recon", "reconstruction module")
        steps = ddim_steps or int(rec.get("ddim_steps", 10))
        stage = ReconStage(ldm, temporal, recon, loss_fn=None, ddim_steps=steps)
        return cls(stage.to(device))

    @property
    def device(self):
        return next(self.stage.recon.parameters()).device

    @torch.no_grad()
    def __call__(self, ldr: torch.Tensor, exposures, seed: int = 0, progress=None) -> torch.Tensor:
        """ldr (T, 3, H, W) gamma-2.2 frames in [0, 1], exposures (T,) -> linear HDR (T, 3, H, W) float32 (CPU)."""
        t, _, h, w = ldr.shape
        e = torch.as_tensor(exposures, dtype=torch.float32).reshape(t)
        mult = math.lcm(self.stage.multiple, 4)
        ph, pw = (-h) % mult, (-w) % mult
        x = F.pad(ldr.float(), (0, pw, 0, ph), mode="replicate") if ph or pw else ldr.float()
        d = prepare({"ldr": x[None], "exposures": e[None]}, self.device)
        n = self.stage.temporal.config.n_frames
        out = []
        for k in (progress(range(t)) if progress else range(t)):
            idx = reflect_window(k, n, t)
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + k)
            pred = self.stage.predict(d["L"][:, idx], d["ldr"][:, k], d["exposures"][:, k], g)
            hdr = mu_law_inverse(pred.clamp(0.0, 1.0)) / d["e_min"].view(-1, 1, 1, 1)
            out.append(hdr[0, :, :h, :w].float().cpu())
        return torch.stack(out)
