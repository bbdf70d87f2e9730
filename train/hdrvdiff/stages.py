"""The three training stages of HDR-V-Diff (§3.3 "Training Strategy") as tasks of the shared engine (train/engine.py):

  ldm    HDR-LDM's denoiser with eq. 5 (the SD VAE frozen);
  tcam   TCAM + the Restormer temporal decoder, end to end with eq. 7;
  recon  the reconstruction module (ZiCA per scale + fusion) with eq. 7, HDR-LDM and TCAM/decoder frozen.

Each stage is one ``nn.Module`` whose ``forward(batch, generator)`` returns the loss dict (so DDP/FSDP wrap the
whole step); its only trainable parameters are the stage's model. ``export`` writes the stage's model with
``save_pretrained`` (diffusers config + safetensors) and ``hdrvdiff.json`` (what the next stage / inference loads).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hdr.storage import atomic_dir, atomic_write_text
from train.engine import ConfigSection, TrainError, load_trainable_state, upgrade_kind
from train.hdrvdiff.data import prepare, random_crop
from train.hdrvdiff.ldm import SD_SCHEDULER, HDRLDM, load_vae
from train.hdrvdiff.losses import Eq7Loss, VGGPerceptual
from train.hdrvdiff.recon import ReconstructionModule
from train.hdrvdiff.temporal import TemporalBranch
from train.hdrvdiff.unet import HDRLDMUNet

STAGES = ("ldm", "tcam", "recon")
RECORD = "hdrvdiff.json"
EXPORT_DIRS = {"ldm": "unet", "tcam": "temporal", "recon": "recon"}


@dataclass
class LossWeights(ConfigSection):
    """``model.loss_weights``: the weights of eq. 7 (1 L1 + 0.1 L_temp + 0.1 L_perception)."""

    SECTION = "model.loss_weights"

    l1: float = 1.0
    temp: float = 0.1
    perceptual: float = 0.1


@dataclass
class HDRVDiffModel(ConfigSection):
    """The ``model:`` section of an HDR-V-Diff run config. Paper-sized defaults (the SD VAE comes from a local folder:
    ``model.vae: /path/to/sd-vae``); see train/configs/hdrvdiff_tiny.yaml. RUN/config.yaml records the section as
    written."""

    SECTION = "model"

    # -- the frozen SD VAE: a local diffusers AutoencoderKL folder (+ subfolder), or a config dict built with random
    #    weights seeded by vae_seed (tests)
    vae: str | dict | None = None
    vae_subfolder: str | None = None
    vae_seed: int = 0
    # -- module sizes: keyword arguments of HDRLDMUNet, TemporalBranch (TCAM + decoder), ReconstructionModule (ZiCA)
    unet: dict = field(default_factory=dict)
    temporal: dict = field(default_factory=dict)
    recon: dict = field(default_factory=dict)
    # -- HDR-LDM's diffusion: the diffusers DDPM/DDIM scheduler config and the DDIM steps of stage recon / inference
    scheduler: dict = field(default_factory=lambda: dict(SD_SCHEDULER))
    ddim_steps: int = 10
    # -- eq. 7: VGG-19 perceptual loss (a local torchvision state dict; null: random) and the loss weights
    vgg_weights: str | None = None
    vgg_layers: list = field(default_factory=lambda: ["relu1_2", "relu2_2", "relu3_4", "relu4_4"])
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # -- stage recon's inputs: the run folders of stages ldm and tcam
    ldm_dir: str | None = None
    temporal_dir: str | None = None


@dataclass
class HDRVDiffData(ConfigSection):
    """The ``data:`` section of an HDR-V-Diff run config: the kind of alternating LDR sequence (alt3: EV {-2, 0, +2},
    alt2: EV {0, +3}), read stored (``ldr/altN_NN`` PNGs) or made on the fly (augment, with ``preset``), the random
    square crop (rounded down to a multiple the models need; null: the largest that fits) and the manifest split.
    Old spelling: ``exposures: N`` (-> ``kind: altN``). ``cache_latents`` (train.run --cache-latents) is ignored."""

    SECTION = "data"
    CHOICES = {"kind": ("alt2", "alt3"), "ldr": ("stored", "augment")}
    IGNORED = ("cache_latents",)

    kind: str = "alt3"
    ldr: str = "stored"
    preset: str = "paper"
    crop: int | None = None
    split: str = "train"

    @classmethod
    def upgrade(cls, d: dict, section: str) -> dict:
        return upgrade_kind(d, section, allowed=cls.CHOICES["kind"])


def model_config(config: dict) -> dict:
    """The ``model:`` section validated, every key filled in (:class:`HDRVDiffModel`)."""
    return HDRVDiffModel.from_dict(config.get("model")).to_dict()


def data_config(config: dict) -> dict:
    """The ``data:`` section validated, every key filled in (:class:`HDRVDiffData`)."""
    return HDRVDiffData.from_dict(config.get("data")).to_dict()


def build_vae(m: dict, ldm_dir: str | None = None):
    """The frozen SD VAE: ``model.vae`` a local folder, or a config dict built with random weights seeded by
    ``model.vae_seed`` (tests); a VAE exported next to a trained U-Net (``ldm_dir/vae``) takes precedence."""
    if ldm_dir and (Path(ldm_dir) / "vae").is_dir():
        return load_vae(str(Path(ldm_dir) / "vae"))
    spec = m["vae"]
    if spec is None:
        raise TrainError("config model.vae is not set: give the local folder of a pretrained SD VAE "
                         "(diffusers AutoencoderKL) or a config dict")
    if isinstance(spec, dict):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(m["vae_seed"]))
            return load_vae(spec)
    try:
        return load_vae(spec, m["vae_subfolder"])
    except (OSError, ValueError) as e:
        raise TrainError(f"{spec}: cannot load the VAE ({e})") from None


def decoder_scale_indices(n_up: int, n_scales: int = 3) -> list[int]:
    """Which SD-decoder up-block output gives F_d^s at 1/2^s of the image: block i < n-1 upsamples, so block i
    outputs latent * 2^(i+1) and the last one the image size (the last block of each resolution is used)."""
    return [n_up - 1 if s == 0 else max(n_up - 2 - s, 0) for s in range(n_scales)]


def _load(cls, folder: Path, what: str):
    if not (folder / "config.json").is_file():
        raise TrainError(f"{folder}: no exported {what} here (train that stage first, or set the path in the config)")
    model = cls.from_pretrained(str(folder))
    return model.requires_grad_(False).eval()


def _windows(d: dict, n: int):
    """Two consecutive windows of n frames (for L_temp) from a window of >= n + 1 frames: their starts and centres."""
    t = d["L"].shape[1]
    if t < n + 1:
        raise TrainError(f"data window has {t} frames; stages tcam/recon need n_frames + 1 = {n + 1}")
    s = (t - n - 1) // 2
    return (s, s + 1), (s + n // 2, s + 1 + n // 2)


class _Stage(nn.Module):
    frozen: tuple = ()

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen parts stay in eval mode
            if getattr(self, name, None) is not None:
                getattr(self, name).eval()
        return self


class LDMStage(_Stage):
    """Eq. 5 on every frame of the window (each frame is a (HDR, LDR, e_k) sample)."""

    frozen = ("vae",)

    def __init__(self, ldm: HDRLDM, crop: int | None = None):
        super().__init__()
        self.ldm, self.vae, self.crop = ldm, ldm.vae, crop
        self.ldm.vae.requires_grad_(False)
        vae_factor = 2 ** (len(ldm.vae.config.block_out_channels) - 1)
        self.multiple = vae_factor * ldm.unet.downscale

    def trainable(self) -> nn.Module:
        return self.ldm.unet

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        dev = next(self.ldm.unet.parameters()).device
        d = random_crop(prepare(batch, dev), self.crop, self.multiple, generator)
        b, t = d["ldr"].shape[:2]
        loss = self.ldm.loss(d["target01"].flatten(0, 1), d["ldr"].flatten(0, 1), d["exposures"].reshape(b * t),
                             generator)
        return {"loss": loss}


class TCAMStage(_Stage):
    """Eq. 7 on the middle frames of two consecutive windows (L_temp needs both)."""

    frozen = ("loss_fn",)

    def __init__(self, temporal: TemporalBranch, loss_fn: Eq7Loss, crop: int | None = None):
        super().__init__()
        self.temporal, self.loss_fn, self.crop = temporal, loss_fn, crop

    def trainable(self) -> nn.Module:
        return self.temporal

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        dev = next(self.temporal.parameters()).device
        d = random_crop(prepare(batch, dev), self.crop, 4, generator)
        n = self.temporal.config.n_frames
        (s0, s1), (c0, c1) = _windows(d, n)
        pred, _ = self.temporal(torch.cat([d["L"][:, s0:s0 + n], d["L"][:, s1:s1 + n]]))
        p0, p1 = pred.chunk(2)
        loss, parts = self.loss_fn(p0, p1, d["target_tm"][:, c0], d["target_tm"][:, c1])
        return {"loss": loss, **parts}


class ReconStage(_Stage):
    """Eq. 7 on the reconstruction module's output; HDR-LDM (DDIM, ``ddim_steps``) and the temporal branch frozen."""

    frozen = ("ldm", "temporal", "loss_fn")

    def __init__(self, ldm: HDRLDM, temporal: TemporalBranch, recon: ReconstructionModule, loss_fn: Eq7Loss,
                 ddim_steps: int = 10, crop: int | None = None):
        super().__init__()
        self.ldm, self.temporal, self.recon, self.loss_fn = ldm, temporal, recon, loss_fn
        self.ldm.requires_grad_(False)
        self.temporal.requires_grad_(False)
        self.ddim_steps, self.crop = int(ddim_steps), crop
        vae_factor = 2 ** (len(ldm.vae.config.block_out_channels) - 1)
        self.multiple = vae_factor * ldm.unet.downscale
        self.scales = decoder_scale_indices(len(ldm.vae.config.block_out_channels))

    def trainable(self) -> nn.Module:
        return self.recon

    def predict(self, L_windows, ref_ldr, ref_e, generator=None) -> torch.Tensor:
        """mu-law HDR of each window's middle frame: ZiCA(SD-decoder features of the DDIM sample, temporal features)."""
        with torch.no_grad():
            _, tfeats = self.temporal(L_windows)
            z = self.ldm.sample(ref_ldr, ref_e, self.ddim_steps, generator)
            dfeats, _ = self.ldm.decoder_features(z)
        return self.recon([dfeats[i] for i in self.scales], tfeats)

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        dev = next(self.recon.parameters()).device
        d = random_crop(prepare(batch, dev), self.crop, self.multiple, generator)
        n = self.temporal.config.n_frames
        (s0, s1), (c0, c1) = _windows(d, n)
        pred = self.predict(torch.cat([d["L"][:, s0:s0 + n], d["L"][:, s1:s1 + n]]),
                            torch.cat([d["ldr"][:, c0], d["ldr"][:, c1]]),
                            torch.cat([d["exposures"][:, c0], d["exposures"][:, c1]]), generator)
        p0, p1 = pred.chunk(2)
        loss, parts = self.loss_fn(p0, p1, d["target_tm"][:, c0], d["target_tm"][:, c1])
        return {"loss": loss, **parts}


def build_loss(m: dict) -> Eq7Loss:
    w = m["loss_weights"]
    try:
        vgg = VGGPerceptual(m["vgg_weights"], tuple(m["vgg_layers"]))
    except (OSError, RuntimeError, ValueError) as e:
        raise TrainError(f"VGG-19 perceptual loss: {e}") from None
    return Eq7Loss(vgg, float(w["l1"]), float(w["temp"]), float(w["perceptual"]))


def build_stage(stage: str, config: dict) -> _Stage:
    """The stage module from a run config (``model:`` / ``data:`` sections; see train/configs/hdrvdiff_tiny.yaml)."""
    if stage not in STAGES:
        raise TrainError(f"--stage must be one of {', '.join(STAGES)} (got {stage!r})")
    m, d = model_config(config), data_config(config)
    if stage == "ldm":
        return LDMStage(HDRLDM(build_vae(m), HDRLDMUNet(**m["unet"]), m["scheduler"]), d["crop"])
    if stage == "tcam":
        return TCAMStage(TemporalBranch(**m["temporal"]), build_loss(m), d["crop"])
    for key in ("ldm_dir", "temporal_dir"):
        if not m[key]:
            raise TrainError(f"stage recon needs model.{key} (the run folder of stage "
                             f"{'ldm' if key == 'ldm_dir' else 'tcam'})")
    ldm_dir, tdir = Path(m["ldm_dir"]), Path(m["temporal_dir"])
    ldm = HDRLDM(build_vae(m, str(ldm_dir)), _load(HDRLDMUNet, ldm_dir / "unet", "HDR-LDM U-Net"), m["scheduler"])
    temporal = _load(TemporalBranch, tdir / "temporal", "temporal branch (TCAM + decoder)")
    dch = list(reversed(ldm.vae.config.block_out_channels))
    scales = decoder_scale_indices(len(dch))
    recon = ReconstructionModule(diffusion_channels=tuple(dch[i] for i in scales),
                                 temporal_channels=tuple(temporal.config.channels), **m["recon"])
    recon.init_output_from(temporal.decoder.out)  # recon starts as the temporal branch's prediction
    return ReconStage(ldm, temporal, recon, build_loss(m), m["ddim_steps"], d["crop"])


def _publish_pretrained(model, folder: Path) -> None:
    """save_pretrained into a temporary folder, then rename into place (never a half-written export)."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))


class HDRVDiffTask:
    """The engine task of one stage (protocol in train/engine.py)."""

    name = "hdrvdiff"

    def __init__(self, config: dict, manifest=None, stage: str | None = None, dataset=None):
        self.config, self.manifest = config, manifest
        self.stage = stage or config.get("stage")
        if self.stage not in STAGES:
            raise TrainError(f"hdrvdiff: stage must be one of {', '.join(STAGES)} (got {self.stage!r})")
        self._dataset, self._module = dataset, None

    def resolve_config(self, config: dict) -> dict:
        """Engine hook: ``model:`` and ``data:`` validated before the run folder is made, an old ``data.exposures``
        spelt ``data.kind``; otherwise the config as written (what RUN/config.yaml records)."""
        out = copy.deepcopy(config)
        if isinstance(out.get("data"), dict):
            out["data"] = upgrade_kind(out["data"], "data", allowed=HDRVDiffData.CHOICES["kind"])
        model_config(out)
        data_config(out)
        return out

    def build(self, config: dict, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.config = config
        threads = config.get("threads")
        if threads:  # intra-op CPU threads; 1 keeps tiny models fast on a shared CPU (no OpenMP oversubscription)
            torch.set_num_threads(int(threads))
        self._module = build_stage(self.stage, config).to(device)
        for name in self._module.frozen:  # frozen weights in the engine's dtype (bf16 on a GPU); VGG stays fp32
            sub = getattr(self._module, name)
            if name != "loss_fn" and next(sub.parameters()).dtype != weight_dtype:
                sub.to(dtype=weight_dtype)

    def module(self) -> nn.Module:
        return self._module

    def dataset(self):
        if self._dataset is None:
            from hdr.dataset.loader import ClipWindowDataset

            m, d = model_config(self.config), data_config(self.config)
            n = int(m["temporal"].get("n_frames", 3))  # window n + 1: two consecutive n-frame windows (L_temp)
            seed = int((self.config.get("train") or {}).get("seed", 0))
            try:
                self._dataset = ClipWindowDataset(self.manifest, d["split"], window=n + 1, ldr=d["ldr"],
                                                  preset=d["preset"], seed=seed, aug_kind=d["kind"])
            except ValueError as e:
                raise TrainError(f"hdrvdiff data: {e}") from None
        return self._dataset

    def collate(self, items: list):
        from hdr.dataset.loader import collate_windows

        return collate_windows(items)

    def training_step(self, model, batch, generator: torch.Generator) -> dict:
        return model(batch, generator)

    def export(self, run_dir: Path, trainable_state: dict) -> list:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        load_trainable_state(self._module, trainable_state, f"{run_dir} export")
        model = self._module.trainable()
        out = run_dir / EXPORT_DIRS[self.stage]
        _publish_pretrained(model, out)
        written = [str(out)]
        m = model_config(self.config)
        record = {"schema": "hdr-toolkit/hdrvdiff/1", "stage": self.stage, "model": EXPORT_DIRS[self.stage],
                  "data": data_config(self.config), "ddim_steps": m["ddim_steps"], "scheduler": m["scheduler"]}
        if self.stage == "ldm":
            vae_dir = run_dir / "vae"  # the VAE the U-Net was trained against (random ones would not be rebuilt)
            if isinstance(m["vae"], dict):
                _publish_pretrained(self._module.ldm.vae, vae_dir)
                written.append(str(vae_dir))
            record["vae"] = "vae" if isinstance(m["vae"], dict) else str(m["vae"])
            record["vae_subfolder"] = m["vae_subfolder"]
        if self.stage == "recon":
            record["ldm_dir"] = str(Path(m["ldm_dir"]).resolve())
            record["temporal_dir"] = str(Path(m["temporal_dir"]).resolve())
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2, default=str))
        return written + [str(run_dir / RECORD)]

    def describe(self) -> dict:
        mod = self._module
        n = sum(p.numel() for p in mod.trainable().parameters()) if mod is not None else None
        return {"stage": self.stage, "trainable_model": EXPORT_DIRS[self.stage], "trainable_parameters": n}
