"""DiffHDR: what the trainer learns is what inference samples.

Two synthetic clips with the same prompt are overfitted by the REAL trainer (``train.engine.train`` driving
``DiffHDRTask``, LoRA on the tiny backbone), the LoRA is exported, and the REAL inference path samples each clip
(``python -m train.infer`` in process: the run's config.yaml, ``WanVACEPipeline`` + ``load_lora_weights``,
``FlowMatchEulerDiscreteScheduler`` with the run's shift, the recipe's masks and control video, the context-focused
cross-attention processor). Two checks:

* outcome: each sampled latent lands on its clip's target latent, MSE <= 0.1 x the untrained model's (the worse
  clip counts);
* inputs: at every sampler step the model gets the latent, timestep, control and text embeddings it was trained on
  for that clip (recorded at the transformer's input, in training and in inference).

The clips make the control necessary: their targets are far apart (a blue checker vs uniform white; MSE(A, B) ~0.8
x the untrained MSE) and their LDRs are under-exposed everywhere, so the paper mask is all ones, the inactive half
v (1 - m) is the latent of zeros for both clips and all that tells them apart (same prompt, same noise) is the
reactive half v m.

Each case then flips ONE convention in training only (monkeypatching the function the trainer calls, restored for
inference) and shows that the agreement breaks. What breaks where, measured (run with -s for the numbers):

* the flow target's sign (``noise - x`` -> ``x - noise``) is on the OUTPUT side: the inputs still agree, the samples
  land far off (MSE ratio 2-3);
* the control layout (inactive/reactive halves swapped, mask channels in front) breaks the OUTCOME too: in
  training the clip's identity sits in a slot that inference fills with a constant (the inactive half, or the
  all-ones mask channels), so the model cannot tell the clips apart and at least one sample misses (measured ratios
  0.9-1.0 for A, 0.2-0.3 for B; the bound: one of two equal samples is >= MSE(A, B) / 4 off). The input check shows
  it as well (control relative error 0.8-1.5 instead of exactly 0);
* sigma vs t (timestep fed as 1000 (1 - sigma), or x = sigma x_data + (1 - sigma) noise) is on the INPUT side. A
  model that memorised its clips can ignore the timestep -- for a clip the velocity is a function of the latent
  alone, sigma = |x - x_data| / |noise - x_data| -- so its sample may still land (measured ratios: timestep
  0.04/0.02, as good as the unflipped run's 0.04/0.01; interpolation 0.11/1.3). What shows those mismatches is the
  input check: the sampler starts from pure noise at t = 1000 where the flipped trainer showed the model the target
  (path distance ~1 instead of ~4e-8). A pretrained Wan relies on its timestep, so there the same mismatch also
  ruins the sample.

Fair with a fixed noise: training uses the very noise tensor the pipeline starts from (captured from the
pipeline's first model call), so the ODE path is the straight segment noise -> target with the constant velocity
noise - target, which a tiny LoRA memorises for both clips in ~600 steps on the CPU (400: ratio 0.12-0.13). Nothing
about the conventions is given away: the sign of that velocity, which end of the segment the timestep 1000 denotes,
the scheduler's sigmas/shift, the VACE control layout, the prompt embeddings, LoRA export/import and CFA are all the
real code's.

Tiny model choices (measured): the shipped tiny transformer maps 24 hidden dims onto 64 outputs per token (patch
1x2x2) and cannot represent a target at all (loss floor 0.65), so the test uses patch 1x1x1 and 4 heads of 48; the
random tiny VAE with Wan's latents_mean/std encodes every image to nearly the same latent (0.03 rms apart), so the
test sets latents_mean/std to the tiny VAE's own statistics (as Wan's config holds the real VAE's).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hdr.color import log_gamma_inverse, srgb_oetf  # noqa: E402
from train.diffhdr import conditioning as C  # noqa: E402
from train.diffhdr.model import load_backbone  # noqa: E402
from train.diffhdr.task import DiffHDRTask  # noqa: E402
from train.engine import train  # noqa: E402

HW, T, STOPS = 32, 1, 1.0            # one 32x32 frame -> one latent frame of 4x4 tokens
TARGET_LEVEL, LDR_STOPS = 0.75, 13.0  # target Log-Gamma peak (radiance ~250); LDR 13 stops below: all under-exposed
CLIPS = ("A", "B")
STEPS, LR, RANK = 600, 1e-2, 16
INFER_STEPS, ALPHA_CFA = 20, 0.5
TINY_TRANSFORMER = {"num_attention_heads": 4, "attention_head_dim": 48, "ffn_dim": 64, "patch_size": [1, 1, 1]}


# ----------------------------------------------------------------------------------------------------- the clips

def clip_item(name: str):
    """Clip A (blue 16 px checker quadrants) or B (uniform white), given by the Log-Gamma image of their target (so the
    two target latents are far apart), and its 8-bit LDR, taken LDR_STOPS below the target and so under-exposed
    everywhere (the paper mask is all ones), in the ``hdr.dataset.loader.ClipWindowDataset`` item contract; both clips
    have the same prompt."""
    checker = (((torch.arange(HW) // 16)[:, None] + (torch.arange(HW) // 16)[None]) % 2).float()
    unit = TARGET_LEVEL * (checker * torch.tensor([0.0, 0.0, 1.0])[:, None, None] if name == "A"
                           else torch.ones(3, HW, HW))
    hdr = (log_gamma_inverse(unit) / 2 ** STOPS)[None].expand(T, -1, -1, -1).contiguous()
    ldr8 = (srgb_oetf((hdr * 2 ** (STOPS - LDR_STOPS)).clamp(0, 1)) * 255).round().to(torch.uint8)
    zeros = torch.zeros(T, 1, HW, HW)       # data.mask_mode: paper -> the trainer recomputes the masks from the LDR
    return {"hdr": hdr, "ldr": ldr8.float() / 255, "over": zeros, "under": zeros, "caption": "",
            "overexposed": "nothing", "underexposed": "everything", "key": f"h0/{name}", "start": 0,
            "exposures": torch.ones(T), "params": {"exposure_stops": STOPS}}, ldr8


class Clips(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_vae_stats() -> dict:
    """latents_mean/std of the tiny VAE (raw latents of random Log-Gamma images), so its normalised latents have unit
    variance like the real Wan VAE's with Wan's statistics."""
    vae = load_backbone({"tiny": True, "tiny_transformer": TINY_TRANSFORMER,
                         "tiny_vae": {"latents_mean": [0.0] * 16, "latents_std": [1.0] * 16}}, "cpu")[1]
    z = C.encode(vae, C.to_vae_video(torch.rand(8, 1, 3, HW, HW, generator=torch.Generator().manual_seed(0))))
    return {"latents_mean": [round(float(v), 6) for v in z.mean((0, 2, 3, 4))],
            "latents_std": [round(float(v), 6) for v in z.std((0, 2, 3, 4))]}


def run_config(vae_stats: dict, cache_dir) -> dict:
    return {"model": {"tiny": True, "init_seed": 0, "tiny_transformer": TINY_TRANSFORMER, "tiny_vae": vae_stats,
                      "lora": {"rank": RANK, "alpha": RANK, "blocks": "both"}},
            "data": {"recipe": "paper", "window": T, "max_sequence_length": 16, "seed": 0, "mask_mode": "paper",
                     "cache_latents": True, "cache_dir": str(cache_dir)},
            "flow": {"sampling": "grid", "shift": 5.0, "weighting": "none"},
            "train": {"steps": STEPS, "batch_size": 1, "lr": LR, "weight_decay": 0.0, "max_grad_norm": None,
                      "gradient_checkpointing": False, "checkpoint_every": 10 ** 6, "checkpoints_keep": 1,
                      "log_every": 50, "seed": 0}}


# -------------------------------------------------------------------------------- recording the model's inputs

class Recorder:
    """Records what the transformer is called with (training and inference both call it with keywords; in training
    also which clip the step drew) and the scheduler's last output (the sampled latent). ``calls`` is None when not
    recording."""

    def __init__(self, mp: pytest.MonkeyPatch):
        from diffusers import FlowMatchEulerDiscreteScheduler, WanVACETransformer3DModel

        self.calls, self.last_step, self.clip = None, None, None
        forward, step = WanVACETransformer3DModel.forward, FlowMatchEulerDiscreteScheduler.step
        training_step = DiffHDRTask.training_step
        rec = self

        def recording_forward(model, *args, **kw):
            if rec.calls is not None:
                rec.calls.append({"t": float(kw["timestep"].flatten()[0]), "clip": rec.clip,
                                  **{k: kw[n].detach().float().clone() for k, n in (
                                      ("h", "hidden_states"), ("c", "control_hidden_states"),
                                      ("e", "encoder_hidden_states"))}})
            return forward(model, *args, **kw)

        def recording_training_step(task, model, batch, generator):
            rec.clip = batch["key"][0]
            try:
                return training_step(task, model, batch, generator)
            finally:
                rec.clip = None

        def recording_step(sched, *args, **kw):
            out = step(sched, *args, **kw)
            rec.last_step = (out[0] if isinstance(out, tuple) else out.prev_sample).detach().float().clone()
            return out

        mp.setattr(WanVACETransformer3DModel, "forward", recording_forward)
        mp.setattr(DiffHDRTask, "training_step", recording_training_step)
        mp.setattr(FlowMatchEulerDiscreteScheduler, "step", recording_step)

    def start(self):
        self.calls = []

    def stop(self) -> list[dict]:
        calls, self.calls = self.calls, None
        return calls


def train_run(cfg: dict, items: list[dict], run_dir, rec: Recorder, patches: dict | None = None):
    """The real engine + DiffHDRTask on the clips; ``patches`` replace functions of ``conditioning`` for the
    training phase only. Returns the task and the recorded transformer calls."""
    task = DiffHDRTask(cfg, dataset=Clips(items))
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in (patches or {}).items():
            mp.setattr(C, name, fn)
        rec.start()
        try:
            train(task, cfg, run_dir, device="cpu", progress=False)
        finally:
            calls = rec.stop()
    return task, calls


def infer_run(run_dir, video_dir, out_dir, prompt: str, rec: Recorder):
    """``python -m train.infer`` (in process) on the run's LoRA; returns (sampled latent, recorded calls)."""
    from train.infer import main as infer_main

    rec.start()
    try:
        assert infer_main(["--lora", str(run_dir / "lora.safetensors"), "--video", str(video_dir), "--out",
                           str(out_dir), "--steps", str(INFER_STEPS), "--seed", "0", "--prompt", prompt,
                           "--alpha-over", str(ALPHA_CFA), "--alpha-under", str(ALPHA_CFA),
                           "--device", "cpu", "--no-progress"]) == 0
    finally:
        calls = rec.stop()
    assert len(calls) == INFER_STEPS
    return rec.last_step[0], calls


def mse(a, b) -> float:
    return float((a.float() - b.float()).pow(2).mean())


def input_agreement(train_calls, infer_calls, scale: float) -> dict:
    """Compare every sampler call with the training call of the same clip at the nearest timestep: latent distance
    (relative to |noise - target|^2), control and text-embedding relative errors. ``path_first`` is the sampler's
    first call (pure noise at its largest timestep)."""
    ts = torch.tensor([c["t"] for c in train_calls])
    path, ctrl, text = [], [], []
    for call in infer_calls:
        j = int((ts - call["t"]).abs().argmin())
        tr = train_calls[j]
        path.append(mse(call["h"], tr["h"]) / scale)
        ctrl.append(mse(call["c"], tr["c"]) / float(tr["c"].pow(2).mean()))
        text.append(mse(call["e"], tr["e"]) / float(tr["e"].pow(2).mean()))
    return {"path_first": path[0], "path_mean": sum(path) / len(path), "control": max(ctrl), "text": max(text)}


# ---------------------------------------------------------------------------------- the untrained baseline

@dataclass
class World:
    cfg: dict
    items: dict        # clip name -> dataset item
    videos: dict       # clip name -> folder of PNG frames
    noise: torch.Tensor
    targets: dict      # clip name -> target latent
    prompt: str
    base_mse: dict     # clip name -> MSE(untrained sample, target)
    root: object


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The clips as PNG frames, the target latents and prompt the trainer uses (``prepare_sample``), the noise the
    pipeline starts from and the untrained model's samples (a 1-step run at lr 0: LoRA B = 0, the base model)."""
    from PIL import Image

    from train.diffhdr.task import window_masks

    root = tmp_path_factory.mktemp("consistency")
    items, videos = {}, {}
    for name in CLIPS:
        items[name], ldr8 = clip_item(name)
        videos[name] = root / f"video-{name}"
        videos[name].mkdir()
        for t in range(T):
            Image.fromarray(ldr8[t].permute(1, 2, 0).numpy()).save(videos[name] / f"frame_{t:04d}.png")
    cfg = run_config(tiny_vae_stats(), root / "cache")
    targets, base, prompts, noise = {}, {}, set(), None
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        base_cfg = copy.deepcopy(cfg)
        base_cfg["train"].update(steps=1, lr=0.0)
        task, _ = train_run(base_cfg, list(items.values()), root / "untrained", rec)
        for name in CLIPS:
            masks = window_masks(items[name]["ldr"], task.dcfg)        # the paper mask: under-exposed everywhere
            assert float(masks["under"].min()) == 1.0 and float(masks["over"].max()) == 0.0
            targets[name], _, prompt, _ = task.prepare_sample(items[name], torch.Generator().manual_seed(0))
            prompts.add(prompt)
            sample, calls = infer_run(root / "untrained", videos[name], root / f"pred-untrained-{name}", prompt, rec)
            assert calls[0]["t"] == pytest.approx(1000.0, abs=1.0)    # the sampler starts at sigma = 1 ...
            noise = calls[0]["h"][0] if noise is None else noise
            assert torch.equal(calls[0]["h"][0], noise)                # ... from the same noise for both clips ...
            assert float(targets[name].var()) > 0.5                    # ... and the target latent carries the image
            base[name] = mse(sample, targets[name])
    assert len(prompts) == 1                                           # the control alone tells the clips apart
    prompt = prompts.pop()
    print(f"\nuntrained: MSE(sample, target) = {base['A']:.4f} (A), {base['B']:.4f} (B); MSE(noise, target A) = "
          f"{mse(noise, targets['A']):.4f}; MSE(target A, target B) = {mse(targets['A'], targets['B']):.4f} = "
          f"{mse(targets['A'], targets['B']) / base['A']:.3f} x untrained (A); prompt {prompt!r}")
    return World(cfg, items, videos, noise, targets, prompt, base, root)


# ------------------------------------------------------------------------------------------------- the flips

def _with_noise(world: World, flow_pair):
    """flow_pair with the trainer's fresh noise replaced by the pipeline's starting noise (see the module doc)."""
    def f(x_data, noise, sigmas):
        return flow_pair(x_data, world.noise.to(x_data).expand_as(x_data), sigmas)
    return f


def flip_patches(name: str) -> dict:
    """The ONE convention flipped in training, as replacements of the functions the trainer calls."""
    fp, ss, cl = C.flow_pair, C.sample_sigmas, C.control_latents
    if name == "none":
        return {}
    if name == "sign":                    # train toward x_data - noise instead of noise - x_data
        return {"flow_pair": lambda x, n, s: (fp(x, n, s)[0], x - n)}
    if name == "timestep":                # the model is told t = 1000 (1 - sigma) for the latent at noise level sigma
        return {"sample_sigmas": lambda n, g, f: 1.0 - ss(n, g, f), "flow_pair": lambda x, n, s: fp(x, n, 1.0 - s)}
    if name == "interpolation":           # x = sigma x_data + (1 - sigma) noise at timestep 1000 sigma
        return {"flow_pair": lambda x, n, s: fp(x, n, 1.0 - s)}
    if name == "control-halves":          # reactive before inactive
        return {"control_latents": lambda *a, **k: (lambda z: torch.cat([z[:, 16:32], z[:, :16], z[:, 32:]], 1))(
            cl(*a, **k))}
    if name == "control-mask-first":      # the 64 mask channels before the 32 video-latent channels
        return {"control_latents": lambda *a, **k: (lambda z: torch.cat([z[:, 32:], z[:, :32]], 1))(cl(*a, **k))}
    raise KeyError(name)


@pytest.mark.parametrize("flip", ["none", "sign", "timestep", "interpolation", "control-halves",
                                  "control-mask-first"])
def test_training_and_inference_agree(world, flip, tmp_path):
    patches = flip_patches(flip)
    patches["flow_pair"] = _with_noise(world, patches.get("flow_pair", C.flow_pair))
    ratios, agrees = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        _, train_calls = train_run(world.cfg, list(world.items.values()), tmp_path / "run", rec, patches)
        assert C.flow_pair is not patches["flow_pair"]                # inference runs with the real functions
        assert len(train_calls) == STEPS
        for name in CLIPS:
            sample, infer_calls = infer_run(tmp_path / "run", world.videos[name], tmp_path / f"pred-{name}",
                                            world.prompt, rec)
            ratios[name] = mse(sample, world.targets[name]) / world.base_mse[name]
            agrees[name] = input_agreement([c for c in train_calls if c["clip"] == world.items[name]["key"]],
                                           infer_calls, mse(world.noise, world.targets[name]))
    ratio = max(ratios.values())                                      # the worse of the two clips
    agree = {k: max(a[k] for a in agrees.values()) for k in agrees["A"]}
    print(f"\n{flip:>18}: MSE(sample, target) / untrained = {ratios['A']:.4f} (A), {ratios['B']:.4f} (B); "
          f"inputs: path first {agree['path_first']:.3g}, mean {agree['path_mean']:.3g}, "
          f"control {agree['control']:.3g}, text {agree['text']:.3g}")
    inputs_agree = agree["path_first"] < 0.01 and agree["control"] < 1e-6 and agree["text"] < 1e-6
    if flip == "none":
        assert ratio <= 0.1, "the trained LoRA, sampled by the real pipeline, does not land on its clips' targets"
        assert inputs_agree and agree["path_mean"] < 0.02, agree     # the sampler walks the trained path
        return
    assert ratio > 0.1 or not inputs_agree, f"{flip}: the flipped convention went unnoticed"
    if flip == "sign":                        # output side: same inputs, the sample runs away from the target
        assert inputs_agree and ratio > 1.0, (ratio, agree)
    elif flip in ("timestep", "interpolation"):   # the trainer showed the target where the sampler starts (noise)
        assert agree["path_first"] > 0.5, agree
    else:                                     # the control the model was trained with is not the pipeline's: the
        assert agree["control"] > 0.01 and agree["path_first"] < 0.01, agree   # model cannot tell the clips apart
        assert ratio > 0.2, f"{flip}: the sample still lands ({ratios})"
