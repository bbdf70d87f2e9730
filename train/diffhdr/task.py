"""The DiffHDR training task for the shared engine (``train.engine.TrainTask``).

One step (DiffHDR §3.3, §4.1; recipe options in :data:`RECIPES`):

1. a window of the manifest's train split (``hdr.dataset.loader.ClipWindowDataset``: HDR target, LDR made on the
   fly by the augment library with the configured preset or read from the stored augmentation, exposure masks,
   captions);
2. target = HDR times 2^Delta (``target_exposure: shifted``, both recipes: the public code's ``use_exposured_gt``;
   ``original`` trains toward the unshifted radiance) -> clamp M -> Log-Gamma -> fp32 VAE latent (optionally from
   the on-disk latent cache);
3. exposure masks of the LDR window (:func:`window_masks`: the augment library's ``mask_mode`` with the EMA of
   DiffHDR eq. 6, the same function inference calls per window), control = LDR (under-exposed regions painted sRGB
   gray 0.5 when ``gray_under``, over-exposed too with probability ``gray_over_prob``) -> linearise -> Log-Gamma ->
   VACE context with the soft exposure mask (:func:`vace_mask`, ``mask_values: soft``);
4. optionally (``reference_prob``; the public code: the 3/8 of samples with r >= 0.625) the first GT frame as a VACE
   reference frame, prepended to target and context, fed linear (2 lin - 1, the public training code) or
   Log-Gamma mapped (``reference_mapping``);
5. text = the structured caption, or the public code's prompt mix (``prompt_mode: code-mix``: 1/8 text-to-HDR with a
   gray control and an all-ones mask and the GT at its original exposure, 1/8 empty prompt, 1/2 over/under prompt,
   1/4 empty prompt -- the code's comment says "3/8" for the over/under share, its thresholds 0.25..0.75 give 1/2);
   the over/under prompt is the paper's ``[overexposed: o]; [underexposed: u]`` or the public code's
   ``"over-exposed: o under-exposed: u"`` (``region_prompts``, :func:`code_prompt`);
6. rectified flow matching in diffusers' convention (see ``conditioning``), timestep sampling and shift as Wan,
   loss weight per recipe (``flow.weighting``: none in ``paper``, DiffSynth's bell curve in ``diffhdr-code``), no
   gradient clipping (``train.max_grad_norm``: null; neither the paper nor the public code clips).

Every resolved choice (recipe keys, flow, train) is written to the run's ``config.yaml`` (:meth:`resolve_config`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hdr.color import LOG_GAMMA_G, LOG_GAMMA_M
from hdr.dataset.records import KINDS
from hdr.degrade.masks import EMA_ALPHA
from hdr.storage import atomic_path, atomic_write_text
from train.diffhdr import conditioning as C
from train.diffhdr.model import (BLOCK_PREFIXES, LORA_TARGETS, ModelError, add_lora, load_backbone, lora_state_dict,
                                  module_hash)
from train.engine import UNSET, ConfigSection, TrainConfig, TrainError, upgrade_kind

LORA_FILE = "lora.safetensors"

# named data recipes: "paper" (DiffHDR as written) and "diffhdr-code" (Eyeline-Labs/DiffHDR scripts/train.sh +
# diffsynth/data/hdr_video.py + train_hdr.py); every key can be overridden in the config's data: section. Where the
# paper is silent or the two disagree, README "Paper vs public code (data.recipe)" gives the reasons.
RECIPES = {
    "paper": dict(preset="paper", target_exposure="shifted", prompt_mode="caption", region_prompts="structured",
                  gray_under=False, gray_over_prob=0.0, gray_level=0.5, mask_mode="paper", mask_values="soft",
                  mask_ema_alpha=EMA_ALPHA, reference_prob=0.0, reference_mapping="log_gamma"),
    "diffhdr-code": dict(preset="diffhdr-code", target_exposure="shifted", prompt_mode="code-mix",
                         region_prompts="code", gray_under=True, gray_over_prob=0.1, gray_level=0.5,
                         mask_mode="diffhdr-code", mask_values="soft", mask_ema_alpha=EMA_ALPHA,
                         reference_prob=0.375, reference_mapping="linear"),
}
# the loss weighting each recipe selects unless flow.weighting is given (diffsynth/schedulers/flow_match.py
# training_weight, used by WanVideoPipeline.training_loss)
RECIPE_FLOW = {"paper": {"weighting": "none"}, "diffhdr-code": {"weighting": "bell"}}
# neither the paper nor the public code (DiffSynth's launch_training_task) clips gradients
TRAIN_DEFAULTS = dict(max_grad_norm=None)
PROMPT_MODES = ("caption", "empty", "code-mix")
RECIPE_KEYS = tuple(RECIPES["paper"])
assert all(tuple(r) == RECIPE_KEYS for r in RECIPES.values()), "every recipe names the same keys, in one order"


@dataclass
class DiffHDRData(ConfigSection):
    """The ``data:`` section of a DiffHDR run config. Every key is optional; the keys of the recipe group default to
    the named recipe's value (:data:`RECIPES`), a key the config names wins. ``to_dict()`` is what RUN/config.yaml
    records (every key, in this order). Old spellings: ``aug_kind`` and ``exposures: N`` (-> ``kind: altN``)."""

    SECTION = "data"
    CHOICES = {"recipe": tuple(RECIPES), "kind": KINDS, "ldr": ("augment", "stored"),
               "target_exposure": ("original", "shifted"), "mask_mode": ("dataset", "paper", "diffhdr-code"),
               "mask_values": ("soft", "binary"), "region_prompts": ("structured", "code"),
               "reference_mapping": ("linear", "log_gamma"), "prompt_mode": PROMPT_MODES}

    # -- the training windows: recipe, manifest split, 4k+1 frames, where the LDR comes from (augment: made on the fly
    #    with the recipe's preset; stored: the stored augmentation), its kind, the loader's seed
    recipe: str = "paper"
    split: str = "train"
    window: int = 33
    ldr: str = "augment"
    kind: str = "single"
    seed: int = 0
    # -- caches (speed only: not part of what a resume compares) and the text length; max_sequence_length 512: Wan
    #    2.1's text length (DiffSynth's WanPrompter text_len, WanVACEPipeline.__call__)
    cache_latents: bool = False
    cache_dir: str | None = None
    max_sequence_length: int = 512
    text_cache_size: int = 256
    # -- Log-Gamma constants (DiffHDR eq. 3) and the probability of dropping the prompt
    log_gamma_m: float = LOG_GAMMA_M
    log_gamma_g: float = LOG_GAMMA_G
    caption_dropout: float = 0.0
    # -- the recipe group (defaults: RECIPES[recipe]): augment preset, target exposure, prompts, gray painting of the
    #    control, exposure masks (mode, soft/binary, EMA weight of eq. 6), the VACE reference frame
    preset: str = UNSET
    target_exposure: str = UNSET
    prompt_mode: str = UNSET
    region_prompts: str = UNSET
    gray_under: bool = UNSET
    gray_over_prob: float = UNSET
    gray_level: float = UNSET
    mask_mode: str = UNSET
    mask_values: str = UNSET
    mask_ema_alpha: float = UNSET
    reference_prob: float = UNSET
    reference_mapping: str = UNSET

    @classmethod
    def upgrade(cls, d: dict, section: str) -> dict:
        return upgrade_kind(d, section)

    def resolve(self) -> None:
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is UNSET:
                setattr(self, key, copy.deepcopy(value))

    def validate(self, section: str) -> None:
        alpha = float(self.mask_ema_alpha)
        if not 0.0 < alpha <= 1.0:
            raise TrainError(f"config {section}.mask_ema_alpha must be in (0, 1] (1: no temporal smoothing), "
                             f"got {alpha}")
        if self.mask_mode == "dataset" and alpha != EMA_ALPHA:
            raise TrainError(f"config {section}.mask_ema_alpha {alpha}: the loader's masks (mask_mode: dataset) are "
                             f"made with {EMA_ALPHA}; set {section}.mask_mode to paper or diffhdr-code to recompute "
                             "them")
        if int(self.window) % 4 != 1:
            raise TrainError(f"config {section}.window must be 4k+1 frames (the Wan VAE's temporal stride), got "
                             f"{self.window}")


assert set(RECIPE_KEYS) == {k for k, v in DiffHDRData.__dataclass_fields__.items() if v.default is UNSET}


@dataclass
class DiffHDRFlow(ConfigSection):
    """The ``flow:`` section: rectified-flow timestep sampling and loss weighting (``train.diffhdr.conditioning``).
    RUN/config.yaml records the four defaults, the recipe's weighting and every key the config names."""

    SECTION = "flow"
    CHOICES = {"sampling": ("grid", "uniform", "logit_normal")}
    WEIGHTINGS = ("none", "bell")
    RECORDED = ("sampling", "shift", "num_train_timesteps", "sigma_min")  # always written, in this order

    sampling: str = "grid"              # grid: Wan/DiffSynth's uniform index into the shifted grid (the public code)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    sigma_min: float = 0.0
    logit_mean: float = 0.0             # logit_normal only
    logit_std: float = 1.0
    weighting: str | None = None        # none | bell; null: the recipe's (RECIPE_FLOW)

    def validate(self, section: str) -> None:
        if self.weighting is not None and self.weighting not in self.WEIGHTINGS:
            raise TrainError(f"config {section}.weighting must be one of {', '.join(self.WEIGHTINGS)}, got "
                             f"{self.weighting!r}")


@dataclass
class DiffHDRLora(ConfigSection):
    """``model.lora``: the peft LoRA on the attention projections and feed-forward of the chosen blocks
    (``train.diffhdr.model.add_lora``)."""

    SECTION = "model.lora"
    CHOICES = {"blocks": tuple(BLOCK_PREFIXES)}

    rank: int = 32
    alpha: float | None = None          # null: = rank
    blocks: str = "vace"                # the public code's choice (--lora_base_model vace); main | both
    targets: list = field(default_factory=lambda: list(LORA_TARGETS))
    dropout: float = 0.0


@dataclass
class DiffHDRModel(ConfigSection):
    """The ``model:`` section of a DiffHDR run config (``train.diffhdr.model``). RUN/config.yaml and lora.json record
    the keys the config names (the section is not filled in)."""

    SECTION = "model"

    # -- the Wan VACE backbone: a diffusers-format folder or hub id (no download with local_files_only)
    pretrained: str | None = None
    local_files_only: bool = False
    revision: str | None = None
    # -- or random tiny versions of the same classes (tests): overrides of model.TINY_TRANSFORMER/TINY_VAE/TINY_TEXT
    tiny: bool = False
    init_seed: int = 0
    tiny_transformer: dict = field(default_factory=dict)
    tiny_vae: dict = field(default_factory=dict)
    tiny_text: dict = field(default_factory=dict)
    # -- the trained LoRA
    lora: DiffHDRLora | None = None

    def resolve(self) -> None:
        if self.lora is None:
            self.lora = DiffHDRLora.from_dict({})

    def backbone_config(self) -> dict:
        """Every key with its value or default, as ``load_backbone`` and ``add_lora`` read them."""
        out = self.to_dict()
        out["lora"]["alpha"] = self.lora.rank if self.lora.alpha is None else self.lora.alpha
        return out


def resolve_data_config(dcfg: dict | None) -> dict:
    """The ``data:`` section validated, with the recipe's keys and the defaults filled in (:class:`DiffHDRData`)."""
    return DiffHDRData.from_dict(dcfg).to_dict()


def resolve_model_config(mcfg: dict | None) -> dict:
    """The ``model:`` section validated, as written (:class:`DiffHDRModel`; the LoRA's ``alpha: null`` is ``rank``)."""
    return DiffHDRModel.from_dict(mcfg).to_dict(given_only=True)


def resolve_flow_config(fcfg: dict | None, recipe: str = DiffHDRData.recipe) -> dict:
    """The ``flow:`` section validated (:class:`DiffHDRFlow`), with its defaults and the recipe's loss weighting
    filled in."""
    flow = DiffHDRFlow.from_dict(fcfg)
    given = flow.to_dict(given_only=True)
    if given.get("weighting") is None:
        given.pop("weighting", None)
    return {**{k: getattr(flow, k) for k in DiffHDRFlow.RECORDED}, **RECIPE_FLOW[recipe], **given}


def exposure_stops(params) -> float:
    """The exposure shift Delta of an augmentation (``exposure_stops`` anywhere in its params dict), else 0."""
    if isinstance(params, dict):
        if "exposure_stops" in params and isinstance(params["exposure_stops"], (int, float)):
            return float(params["exposure_stops"])
        for v in params.values():
            if isinstance(v, dict):
                s = exposure_stops(v)
                if s:
                    return s
    return 0.0


# hdr_video.py: an over/under caption that mentions "silhouette" is replaced by a fixed sentence (case-sensitive test)
SILHOUETTE_PROMPTS = {"over": "over-exposed: Recover the content in the over-exposed area.",
                      "under": "under-exposed: Recover the content in the under-exposed area."}


def code_region_prompt(text: str, kind: str) -> str:
    """One region's prompt as the public code trains on it: ``kind``-exposed: <text>, or the fixed "Recover the
    content ..." sentence when the caption contains "silhouette". The public over/under CSVs are not released; their
    "over-exposed: ..." form is read off the replacement sentences, the CFA prompts and the README's prompt example,
    so a caption that lacks the prefix gets it (an empty caption stays empty, as a NaN cell does there)."""
    if "silhouette" in text:
        return SILHOUETTE_PROMPTS[kind]
    prefix = f"{kind}-exposed:"
    return text if not text or text.startswith(prefix) else f"{prefix} {text}"


def code_prompt(over: str, under: str) -> str:
    """The public code's over/under prompt: the two region prompts joined with one space (hdr_video.py)."""
    return code_region_prompt(over, "over") + " " + code_region_prompt(under, "under")


def region_prompt(over: str, under: str, style: str = "structured") -> str:
    """``structured``: DiffHDR §3.4.2 ``[overexposed: o]; [underexposed: u]``; ``code``: :func:`code_prompt`."""
    return code_prompt(over, under) if style == "code" else C.structured_caption(over, under)


def draw_prompt(r_prompt: float, r_drop: float, mode: str, item: dict, dropout: float = 0.0,
                region_prompts: str = "structured") -> tuple[str, bool]:
    """(prompt, text_to_hdr) for one sample from two uniform draws.

    ``caption``: the over/under caption (DiffHDR §3.4.2); ``empty``: ""; ``code-mix`` (public code,
    diffsynth/data/hdr_video.py): r < 1/8 text-to-HDR with the caption; 1/8 <= r < 1/4 empty; 1/4 <= r < 3/4 the
    over/under prompt; r >= 3/4 empty. The over/under prompt is written as ``region_prompts`` says
    (:func:`region_prompt`). Then the prompt is dropped with probability ``dropout``."""
    caption = item.get("caption") or ""
    over_t, under_t = item.get("overexposed") or "", item.get("underexposed") or ""
    structured = region_prompt(over_t, under_t, region_prompts) if (over_t or under_t) else caption
    text_to_hdr = False
    if mode == "caption":
        prompt = structured
    elif mode == "empty":
        prompt = ""
    elif r_prompt < 0.125:
        text_to_hdr, prompt = True, caption or structured
    elif 0.25 <= r_prompt < 0.75:
        prompt = structured
    else:
        prompt = ""
    if r_drop < dropout:
        prompt = ""
    return prompt, text_to_hdr


def use_reference(r_prompt: float, r_ref: float, d: dict) -> bool:
    """Whether a sample gets the VACE reference frame: with prompt_mode code-mix the public code's coupling
    (r_prompt >= 1 - reference_prob, i.e. r >= 0.625 for 3/8), otherwise an independent draw."""
    p = float(d["reference_prob"])
    if p <= 0:
        return False
    return r_prompt >= 1.0 - p if d["prompt_mode"] == "code-mix" else r_ref < p


def vace_mask(over: torch.Tensor, under: torch.Tensor, values: str = "soft") -> torch.Tensor:
    """The VACE mask (T, H, W) of a window from its exposure masks (T, H, W) in [0, 1].

    ``soft`` (default): min(1, over + under), the EMA-smoothed mask of DiffHDR eq. 6 (over and under are disjoint
    per frame, so this is the EMA of the union). It reaches the model through the 64 mask channels; the
    inactive/reactive split cuts it at 0.5 (``conditioning.control_latents``, as ``WanVACEPipeline.
    prepare_video_latents`` does), which with alpha = 0.7 is the current frame's own detection. ``binary``: each
    mask cut at 0.5 first, then or-ed -- the EMA has no effect then (the toolkit's earlier behaviour). Masks that are
    already binary (``diffhdr-code``: binarised at 0.2 by design) give the same either way."""
    if values == "binary":
        return ((over > 0.5) | (under > 0.5)).float()
    return (over.float() + under.float()).clamp(0.0, 1.0)


def control_video(item: dict, d: dict, gray_over: bool, text_to_hdr: bool, device="cpu"):
    """(control (T, 3, H, W) Log-Gamma [0, 1], VACE mask (T, H, W) in [0, 1]) for one window.

    Normal: the LDR with under-exposed pixels (mask > 0.5) painted sRGB gray (``gray_under``) and over-exposed ones
    too when ``gray_over``, linearised and Log-Gamma mapped; mask = :func:`vace_mask` (``mask_values``). Text-to-HDR:
    a gray control and a mask of ones (the public code's hybrid branch). Training and inference both call this."""
    ldr = item["ldr"].to(device).float()                               # (T, 3, H, W) sRGB [0, 1]
    over_s = item["over"].to(device).float()[:, 0]                     # (T, H, W) in [0, 1]
    under_s = item["under"].to(device).float()[:, 0]
    over, under = over_s > 0.5, under_s > 0.5
    m, g = float(d["log_gamma_m"]), float(d["log_gamma_g"])
    if text_to_hdr:
        return C.gray_unit(ldr, float(d["gray_level"])), torch.ones_like(over, dtype=torch.float32)
    gray = torch.full_like(ldr, float(d["gray_level"]))
    srgb = ldr
    if d["gray_under"]:
        srgb = torch.where(under[:, None], gray, srgb)
    if gray_over:
        srgb = torch.where(over[:, None], gray, srgb)
    return C.ldr_to_unit(srgb, m=m, g=g), vace_mask(over_s, under_s, d.get("mask_values", "soft"))


def recompute_masks(ldr: torch.Tensor, mode: str, alpha: float = EMA_ALPHA, transfer: str = "srgb") -> dict:
    """Exposure masks of an 8-bit window (T, 3, H, W) in [0, 1] by the degradation library's named mode
    (``hdr.degrade.masks.exposure_masks``) with EMA weight ``alpha`` (eq. 6; the EMA starts at the window's first
    frame), linearised with ``transfer`` (sRGB, or the response curve the window was made with), as {"over",
    "under"} (T, 1, H, W)."""
    from hdr.degrade.masks import exposure_masks

    u8 = (ldr.detach().float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    over, under = exposure_masks(u8, mode=mode, transfer=transfer, alpha=float(alpha))
    return {"over": torch.as_tensor(over, dtype=torch.float32)[:, None],
            "under": torch.as_tensor(under, dtype=torch.float32)[:, None]}


def mask_mode_of(d: dict) -> str:
    """The augment mask mode a resolved data config computes masks with (``dataset``: its preset's)."""
    if d["mask_mode"] != "dataset":
        return d["mask_mode"]
    from hdr.degrade.presets import PRESETS

    return PRESETS[d["preset"]].mask_mode


def window_masks(ldr: torch.Tensor, d: dict, transfer: str = "srgb") -> dict:
    """{"over", "under"} (T, 1, H, W) soft masks of one LDR window (T, 3, H, W) in [0, 1] as the recipe computes
    them: :func:`recompute_masks` with ``mask_mode`` and ``mask_ema_alpha``. The trainer calls it on every window
    (unless ``mask_mode: dataset``, which takes the loader's masks) and inference on every window it converts, so
    both condition on the same mask. ``transfer``: the window's response curve (a preset with a curve step records it
    in the item's params; an LDR video from outside is taken as sRGB)."""
    return recompute_masks(ldr, mask_mode_of(d), float(d.get("mask_ema_alpha", EMA_ALPHA)), transfer)


def reference_unit(frame: torch.Tensor, d: dict) -> torch.Tensor:
    """A VACE reference frame (1, 3, H, W) of linear radiance -> the [0, 1]-scaled input the VAE sees as 2 x - 1.

    ``linear`` (the public training code: diffsynth/data/hdr_video.py keeps the first GT frame linear and
    WanVideoUnit_VACE feeds it with preprocess_video(is_exr=True), i.e. 2 lin - 1; clamped at [0, M] like the public
    loader's frames); ``log_gamma``: Log-Gamma mapped like the target (the public inference's treatment of a user
    reference, infer_video.py, at +5 EV)."""
    if d["reference_mapping"] == "linear":
        return frame.float().clamp(0.0, float(d["log_gamma_m"]))
    return C.hdr_to_unit(frame, m=float(d["log_gamma_m"]), g=float(d["log_gamma_g"]))


class LatentCache:
    """Target latents on disk: one safetensors file per (clip content, window start, length, exposure shift,
    Log-Gamma constants, frame size, VAE hash); written atomically (temp + rename)."""

    def __init__(self, root: str | os.PathLike, vae_hash: str):
        self.dir = Path(root) / f"vae-{vae_hash[:16]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    @staticmethod
    def key(clip: str, start: int, window: int, stops: float, m: float, g: float, hw) -> str:
        text = json.dumps([clip, int(start), int(window), round(float(stops), 6), float(m), float(g), list(hw)])
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def get(self, key: str):
        from safetensors.torch import load_file

        p = self.dir / f"{key}.safetensors"
        if p.is_file():
            self.hits += 1
            return load_file(p)["latent"]
        self.misses += 1
        return None

    def put(self, key: str, latent: torch.Tensor) -> None:
        from safetensors.torch import save_file

        with atomic_path(self.dir / f"{key}.safetensors") as tmp:
            save_file({"latent": latent.detach().cpu().contiguous()}, tmp)


class DiffHDRTask:
    name = "diffhdr"

    def __init__(self, config: dict, manifest=None, dataset=None):
        self.config = config
        self.manifest = manifest
        self._dataset = dataset
        self.dcfg = resolve_data_config(config.get("data"))
        self.fcfg = resolve_flow_config(config.get("flow"), self.dcfg["recipe"])
        self.model = DiffHDRModel.from_dict(config.get("model"))
        self.mcfg = self.model.to_dict(given_only=True)     # as written (lora.json records it)
        if manifest is None and dataset is None:
            raise TrainError("diffhdr: a manifest (or a dataset) is required")

    def resolve_config(self, config: dict) -> dict:
        """The run config with every choice filled in (engine hook; what ``RUN/config.yaml`` records): the data
        recipe's keys (:class:`DiffHDRData`; an old ``aug_kind`` becomes ``kind``), the flow settings and the whole
        ``train:`` section with this trainer's defaults; ``model:`` is validated and kept as written. A function of
        ``config`` only (the engine also passes a stored config.yaml through it)."""
        out = copy.deepcopy(config)
        data = DiffHDRData.from_dict(config.get("data"))
        DiffHDRModel.from_dict(config.get("model"))
        out["data"] = data.to_dict()
        out["flow"] = resolve_flow_config(config.get("flow"), data.recipe)
        train = asdict(TrainConfig.from_dict({**TRAIN_DEFAULTS, **(config.get("train") or {})}))
        out["train"] = {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}
        return out

    # ---- engine protocol
    def build(self, config, device, weight_dtype):
        self.device = torch.device(device)
        self.weight_dtype = weight_dtype
        try:
            backbone = self.model.backbone_config()
            self.transformer, self.vae, self.text_encoder, self.tokenizer = load_backbone(backbone, device,
                                                                                          weight_dtype)
            self.lora_info = add_lora(self.transformer, backbone["lora"])
        except ModelError as e:
            raise TrainError(str(e)) from None
        self.patch_hw = int(self.transformer.config.patch_size[1])
        self._text_cache: OrderedDict = OrderedDict()
        self.cache = None
        if self.dcfg["cache_latents"]:
            root = self.dcfg["cache_dir"] or os.path.join(os.path.expanduser("~"), ".cache", "hdr-video-toolkit",
                                                          "diffhdr-latents")
            self.cache = LatentCache(root, module_hash(self.vae))
        if self._dataset is None:
            self._dataset = self._manifest_dataset()
        self._clip_hash = {}
        if self.manifest is not None:
            self._clip_hash = {c.key: c.clip_hash for c in self.manifest.clips(self.dcfg["split"])}

    def _manifest_dataset(self):
        from hdr.dataset.loader import ClipWindowDataset

        d = self.dcfg
        try:
            ds = ClipWindowDataset(self.manifest, d["split"], window=int(d["window"]), ldr=d["ldr"],
                                   preset=d["preset"], seed=int(d["seed"]), aug_kind=d["kind"])
        except (ValueError, KeyError, OSError) as e:
            raise TrainError(f"diffhdr data: {e}") from None
        if len(ds) == 0:
            raise TrainError(f"manifest {getattr(self.manifest, 'version', '?')}: the {d['split']} split is empty")
        return ds

    def module(self):
        return self.transformer

    def dataset(self):
        return self._dataset

    def collate(self, items):
        from hdr.dataset.loader import collate_windows

        return collate_windows(items)

    def enable_gradient_checkpointing(self):
        self.transformer.enable_gradient_checkpointing()

    def describe(self) -> dict:
        return {"lora": self.lora_info, "data": self.dcfg, "flow": self.fcfg,
                "transformer_parameters": sum(p.numel() for p in self.transformer.parameters()),
                "latent_cache": str(self.cache.dir) if self.cache else None}

    # ---- text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """UMT5 embeddings (B, L, D) padded with zeros after each prompt's tokens, like WanVACEPipeline; an LRU
        cache keeps recent prompts (they repeat: "", per-clip captions)."""
        L = int(self.dcfg["max_sequence_length"])
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            from diffusers.pipelines.wan.pipeline_wan_vace import prompt_clean   # the pipeline's (and DiffSynth's)

            tok = self.tokenizer([prompt_clean(p) for p in missing], padding="max_length", max_length=L,
                                 truncation=True,
                                 add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
            emb = self.text_encoder(ids, mask).last_hidden_state
            emb = emb * mask.unsqueeze(-1).to(emb.dtype)
            for p, e in zip(missing, emb):
                self._text_cache[p] = e
                while len(self._text_cache) > int(self.dcfg["text_cache_size"]):
                    self._text_cache.popitem(last=False)
        for p in prompts:
            self._text_cache.move_to_end(p)
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.weight_dtype)

    # ---- one sample -> (target latent, control latents, prompt)
    def prepare_sample(self, item: dict, generator: torch.Generator):
        d = self.dcfg
        m, g = float(d["log_gamma_m"]), float(d["log_gamma_g"])
        r_prompt, r_over, r_drop, r_ref = (float(x) for x in torch.rand(4, generator=generator))
        stops = exposure_stops(item.get("params") or {})
        prompt, text_to_hdr = draw_prompt(r_prompt, r_drop, d["prompt_mode"], item, float(d["caption_dropout"]),
                                          d["region_prompts"])
        use_ref = use_reference(r_prompt, r_ref, d) and not text_to_hdr

        hdr = item["hdr"].to(self.device).float()                       # (T, 3, H, W) linear
        shift = stops if (d["target_exposure"] == "shifted" and not text_to_hdr) else 0.0
        t, _, h, w = hdr.shape
        latent = key = None
        if self.cache is not None:
            clip = self._clip_hash.get(item["key"], item["key"])
            key = LatentCache.key(clip, int(item["start"]), t, shift, m, g, (h, w))
            latent = self.cache.get(key)
            if latent is not None:
                latent = latent.to(self.device)
        if latent is None:
            latent = self.target_latent(hdr, shift)
            if key is not None:
                self.cache.put(key, latent)
        if d["mask_mode"] != "dataset":
            transfer = (item.get("params") or {}).get("transfer", "srgb")
            item = {**item, **window_masks(item["ldr"], d, transfer)}
        control, mask = control_video(item, d, r_over < float(d["gray_over_prob"]), text_to_hdr, self.device)
        ctrl = C.control_latents(self.vae, control[None], mask[None], self.patch_hw)[0]
        if use_ref:
            # VACE reference (public code, DiffSynth layout): the first GT frame at the target's exposure, encoded
            # alone and prepended in time to the target latent (it is denoised and in the loss too) and to the
            # context as [ref latent, zeros] with a zero mask
            ref = C.encode(self.vae, C.to_vae_video(reference_unit(hdr[:1] * float(2.0 ** shift), d)[None]))[0]
            latent = torch.cat([ref, latent], dim=1)
            ctrl = torch.cat([torch.cat([ref, torch.zeros_like(ref), torch.zeros(64, *ref.shape[1:]).to(ref)]), ctrl],
                             dim=1)
        return latent, ctrl, prompt, {"text_to_hdr": float(text_to_hdr), "exposure_stops": stops,
                                      "reference": float(use_ref)}

    def target_latent(self, hdr: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        """(T, 3, H, W) radiance -> x 2^shift -> clamp M -> Log-Gamma (DiffHDR eq. 3) -> normalised fp32 latent."""
        d = self.dcfg
        unit = C.hdr_to_unit(hdr.float() * float(2.0 ** shift), m=float(d["log_gamma_m"]), g=float(d["log_gamma_g"]))
        return C.encode(self.vae, C.to_vae_video(unit[None]))[0]

    def training_step(self, model, batch, generator):
        n = len(batch["key"])
        lat, ctrl, prompts, info = [], [], [], []
        for i in range(n):
            item = {k: (v[i] if (torch.is_tensor(v) or isinstance(v, list)) else v) for k, v in batch.items()}
            a, b, p, extra = self.prepare_sample(item, generator)
            lat.append(a)
            ctrl.append(b)
            prompts.append(p)
            info.append(extra)
        if len({a.shape for a in lat}) > 1:
            raise TrainError("a batch mixes windows with and without a reference frame: use train.batch_size 1 "
                             "(per process, as the public code) with data.reference_prob > 0")
        x_data = torch.stack(lat)
        control = torch.stack(ctrl)
        emb = self.encode_prompts(prompts)
        sigmas = C.sample_sigmas(n, generator, self.fcfg)
        noise = torch.randn(x_data.shape, generator=generator).to(x_data)
        x_sigma, target = C.flow_pair(x_data, noise, sigmas)
        dt = next(p.dtype for n_, p in self.transformer.named_parameters() if "lora_" not in n_)
        pred = model(hidden_states=x_sigma.to(dt), timestep=(sigmas * 1000.0).to(self.device),
                     encoder_hidden_states=emb, control_hidden_states=control.to(dt), return_dict=False)[0]
        per = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        w = C.loss_weights(sigmas, self.fcfg).to(per)
        loss = (per * w).mean()
        return {"loss": loss, "sigma": sigmas.mean(), "text_to_hdr": sum(x["text_to_hdr"] for x in info) / n,
                "reference": sum(x["reference"] for x in info) / n,
                "empty_prompt": sum(p == "" for p in prompts) / n}

    # ---- deliverable
    export_formats = ("diffusers",)      # train.run --export-format / export.formats (lora_layouts.LAYOUTS)

    def set_export_formats(self, value) -> None:
        """``"diffusers,comfyui"`` or a list; checked now (not after training). diffusers is always written."""
        from train.diffhdr.lora_layouts import LoraLayoutError, parse_formats

        try:
            self.export_formats = tuple(parse_formats(value))
        except LoraLayoutError as e:
            raise TrainError(str(e)) from None

    def export(self, run_dir, trainable_state):
        """RUN/lora.safetensors (diffusers, ``WanVACEPipeline.save_lora_weights``), one file per other requested layout
        beside it (``lora.diffsynth.safetensors``, ``lora.comfyui.safetensors``; ``train.diffhdr.lora_layouts``) and
        lora.json recording them."""
        from diffusers import WanVACEPipeline

        from train.diffhdr.lora_layouts import from_diffusers, layout_file_name, parse_formats, write_lora

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        formats = parse_formats(self.export_formats)
        sd = lora_state_dict(self.transformer, trainable_state)
        meta = {"r": self.lora_info["rank"], "lora_alpha": self.lora_info["alpha"],
                "target_modules": self.lora_info["regex"]}
        WanVACEPipeline.save_lora_weights(str(run_dir), transformer_lora_layers=sd, weight_name=LORA_FILE,
                                          transformer_lora_adapter_metadata=meta)
        files = {"diffusers": LORA_FILE}
        for layout in formats:
            if layout == "diffusers":
                continue
            tensors, header = from_diffusers(sd, layout, self.lora_info["rank"], self.lora_info["alpha"])
            files[layout] = layout_file_name(LORA_FILE, layout)
            write_lora(run_dir / files[layout], tensors, header)
        info = {"lora": self.lora_info, "model": {k: v for k, v in self.mcfg.items() if k != "lora"},
                "data": {k: self.dcfg[k] for k in ("recipe", "preset", "log_gamma_m", "log_gamma_g",
                                                    "max_sequence_length", "mask_mode", "mask_values",
                                                    "mask_ema_alpha", "reference_mapping", "target_exposure")},
                "flow": self.fcfg, "format": "diffusers WanVACEPipeline.load_lora_weights (transformer.*)",
                "files": files, "layouts": {
                    "diffusers": "transformer.<module>.lora_A/lora_B.weight, alpha in the header",
                    "diffsynth": "<Wan module>.lora_A/lora_B.weight, alpha/rank folded into lora_A",
                    "comfyui": "diffusion_model.<Wan module>.lora_down/lora_up.weight + .alpha"}}
        info["layouts"] = {k: v for k, v in info["layouts"].items() if k in files}
        atomic_write_text(run_dir / "lora.json", json.dumps(info, indent=2, default=str))
        return [str(run_dir / f) for f in files.values()] + [str(run_dir / "lora.json")]


def make_task(config: dict, manifest) -> DiffHDRTask:
    if config.get("stage") not in (None, "", "lora"):
        raise TrainError(f"diffhdr has one training stage; --stage {config.get('stage')!r} is not known")
    return DiffHDRTask(config, manifest)
