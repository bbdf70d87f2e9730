"""DiffHDR trainer on tiny random diffusers models (CPU): VACE input layout against diffusers' own pipeline code,
flow matching, the data recipes, LoRA training/saving/loading into WanVACEPipeline, exact resume, latent cache,
context-focused cross-attention."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hdr.color import LOG_GAMMA_M, log_gamma, srgb_eotf  # noqa: E402
from train.diffhdr import conditioning as C  # noqa: E402
from train.diffhdr.cfa import CFAState, install_cfa, token_mask, uninstall_cfa  # noqa: E402
from train.diffhdr.model import add_lora, load_backbone, lora_target_regex  # noqa: E402
from train.diffhdr.task import (DiffHDRTask, LatentCache, control_video, draw_prompt,  # noqa: E402
                                recompute_masks, resolve_data_config, window_masks)
from train.engine import TrainError, train  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "train" / "configs" / "diffhdr_tiny.yaml"


def tiny_config(**train_over) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"].update(dict(steps=3, checkpoint_every=1, checkpoints_keep=5), **train_over)
    return cfg


class Synth(torch.utils.data.Dataset):
    """Items in the hdr.dataset.loader.ClipWindowDataset contract (random HDR, LDR and masks derived from it)."""

    def __init__(self, n=3, t=5, hw=32, stops=1.0):
        self.n, self.t, self.hw, self.stops = n, t, hw, stops

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        hdr = torch.rand(self.t, 3, self.hw, self.hw, generator=g) ** 4 * 20
        ldr = (hdr * 2 ** self.stops).clamp(0, 1) ** (1 / 2.2)
        y = ldr.mean(1, keepdim=True)
        return {"hdr": hdr, "ldr": ldr, "over": (y > 0.9).float(), "under": (y < 0.1).float(),
                "caption": "[overexposed: sky]; [underexposed: floor]", "overexposed": "sky",
                "underexposed": "floor", "key": f"h{i}/c", "start": 0, "exposures": torch.ones(self.t),
                "params": {"exposure_stops": self.stops}}


@pytest.fixture(scope="module")
def backbone():
    return load_backbone({"tiny": True}, "cpu")


def base_weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items() if "lora_" not in k}


# --------------------------------------------------------------------------------------------------- layout / math

def test_control_layout_matches_wan_vace_pipeline(backbone):
    """control_latents == WanVACEPipeline.prepare_video_latents + prepare_masks on the same video and mask."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    tr, vae, te, tok = backbone
    pipe = WanVACEPipeline(tokenizer=tok, text_encoder=te, transformer=tr, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    g = torch.Generator().manual_seed(0)
    unit = torch.rand(1, 9, 3, 32, 32, generator=g)
    mask = (torch.rand(1, 9, 32, 32, generator=g) > 0.7).float()
    ours = C.control_latents(vae, unit, mask, patch_hw=2)
    video = C.to_vae_video(unit)
    m3 = mask[:, None].expand(-1, 3, -1, -1, -1)
    ref = torch.cat([pipe.prepare_video_latents(video, m3, [[]], None, "cpu"), pipe.prepare_masks(m3, [[]], None)], 1)
    assert ours.shape == (1, 96, 3, 4, 4) and ref.shape == ours.shape
    torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-5)
    # the mask channels really are the 8x8-unshuffled mask: channel k = pixel (k // 8, k % 8) of each 8x8 cell;
    # in time nearest-exact 9 -> 3 frames picks frames 1, 4, 7 (the pipeline's choice, kept for compatibility)
    mc = C.mask_channels(mask, 2)
    for f, src in ((0, 1), (1, 4), (2, 7)):
        assert torch.equal(mc[0, 8 * 3 + 5, f], mask[0, src, 3::8, 5::8])


def test_log_gamma_target_and_control_transfer():
    hdr = torch.tensor([0.0, 1.0, LOG_GAMMA_M, 4 * LOG_GAMMA_M])
    u = C.hdr_to_unit(hdr)
    assert u[0] == 0 and u[2] == pytest.approx(1.0) and u[3] == u[2]     # clamp at M
    srgb = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(C.ldr_to_unit(srgb), log_gamma(srgb_eotf(srgb)))


def test_flow_matching_convention_and_sampling():
    x, n = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    xs, target = C.flow_pair(x, n, torch.tensor([0.0, 1.0]))
    assert torch.equal(xs[0], x[0]) and torch.equal(xs[1], n[1]) and torch.equal(target, n - x)
    g = torch.Generator().manual_seed(0)
    s = C.sample_sigmas(20000, g, {"sampling": "uniform", "shift": 5.0})
    # shifted uniform: P(sigma <= shift(u)) = u, e.g. median = 5 * 0.5 / (1 + 4 * 0.5) = 0.8333
    assert s.median().item() == pytest.approx(5 * 0.5 / 3, abs=0.01)
    assert s.min() >= 0 and s.max() <= 1
    grid = C.sample_sigmas(20000, g, {"sampling": "grid", "shift": 1.0})
    assert grid.mean().item() == pytest.approx(0.5005, abs=0.01) and len(grid.unique()) > 900
    ln = C.sample_sigmas(20000, g, {"sampling": "logit_normal", "shift": 1.0})
    assert ln.median().item() == pytest.approx(0.5, abs=0.01)
    w = C.loss_weights(C.sample_sigmas(20000, g, {"sampling": "grid"}), {"weighting": "bell"})
    assert w.mean().item() == pytest.approx(1.0, abs=0.03) and (w >= 0).all()


def test_prompt_mix_frequencies():
    item = {"caption": "full", "overexposed": "sky", "underexposed": "floor"}
    g = torch.Generator().manual_seed(1)
    r = torch.rand(20000, 2, generator=g)
    out = [draw_prompt(float(a), float(b), "code-mix", item) for a, b in r]
    t2h = sum(t for _, t in out) / len(out)
    structured = sum(p == "[overexposed: sky]; [underexposed: floor]" for p, _ in out) / len(out)
    empty = sum(p == "" for p, _ in out) / len(out)
    assert t2h == pytest.approx(1 / 8, abs=0.01) and structured == pytest.approx(1 / 2, abs=0.01)
    assert empty == pytest.approx(3 / 8, abs=0.01)
    assert all(p == "full" for p, t in out if t)
    assert draw_prompt(0.9, 0.9, "caption", item) == ("[overexposed: sky]; [underexposed: floor]", False)
    assert draw_prompt(0.9, 0.05, "caption", item, dropout=0.1) == ("", False)


def test_control_recipes():
    item = Synth()[0]
    under, over = item["under"][:, 0] > 0.5, item["over"][:, 0] > 0.5
    assert under.any() and over.any()
    code = resolve_data_config({"recipe": "diffhdr-code"})
    ctrl, mask = control_video(item, code, gray_over=False, text_to_hdr=False)
    gray = C.ldr_to_unit(torch.tensor(0.5))
    assert torch.allclose(ctrl.permute(1, 0, 2, 3)[:, under], gray)           # under painted gray
    assert torch.allclose(ctrl.permute(1, 0, 2, 3)[:, over], C.ldr_to_unit(item["ldr"]).permute(1, 0, 2, 3)[:, over])
    assert torch.equal(mask, (over | under).float())
    ctrl2, _ = control_video(item, code, gray_over=True, text_to_hdr=False)
    assert torch.allclose(ctrl2.permute(1, 0, 2, 3)[:, over], gray)
    t2h, m2 = control_video(item, code, gray_over=False, text_to_hdr=True)
    assert torch.allclose(t2h, gray.expand_as(t2h)) and m2.min() == 1
    paper = resolve_data_config({"recipe": "paper"})
    assert paper["gray_over_prob"] == 0 and not paper["gray_under"]
    ctrl3, _ = control_video(item, paper, gray_over=False, text_to_hdr=False)   # paper: plain LDR everywhere
    torch.testing.assert_close(ctrl3, C.ldr_to_unit(item["ldr"]))
    # masks recomputed by the augment library's named mode from the 8-bit LDR
    from hdr.degrade.masks import exposure_masks

    u8 = (item["ldr"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for mode in ("paper", "diffhdr-code"):
        got = recompute_masks(item["ldr"], mode)
        ref = exposure_masks(u8, mode=mode)
        assert torch.equal(got["over"][:, 0], torch.as_tensor(ref[0])) and got["under"].shape == item["under"].shape
    assert code["mask_mode"] == "diffhdr-code" and paper["mask_mode"] == "paper"
    with pytest.raises(TrainError, match="4k\\+1"):
        resolve_data_config({"window": 8})


def test_lora_targets(backbone):
    from train.diffhdr.model import TINY_TRANSFORMER
    from diffusers import WanVACETransformer3DModel
    import re

    names = [n for n, _ in WanVACETransformer3DModel(**TINY_TRANSFORMER).named_modules()]
    for blocks, prefixes in (("vace", {"vace_blocks"}), ("main", {"blocks"}), ("both", {"blocks", "vace_blocks"})):
        hit = [n for n in names if re.fullmatch(lora_target_regex(blocks), n)]
        assert {n.split(".")[0] for n in hit} == prefixes
        per_block = {n.split(".", 2)[2] for n in hit}
        assert per_block == {f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")} | {
            "ffn.net.0.proj", "ffn.net.2"}


# ------------------------------------------------------------------------------------------------------ training

def test_three_steps_lora_trains_base_frozen_and_loads_into_pipeline(tmp_path, backbone):
    """3 real optimisation steps: finite loss, LoRA changed, base unchanged; the exported safetensors loads into a
    WanVACEPipeline with load_lora_weights and gives identical transformer outputs (and differs from the base)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    cfg = tiny_config()
    task = DiffHDRTask(cfg, dataset=Synth())
    res = train(task, cfg, tmp_path / "run", device="cpu", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    fresh = load_backbone({"tiny": True}, "cpu")[0]
    info = add_lora(fresh, cfg["model"]["lora"])
    init = {k: v for k, v in fresh.state_dict().items() if "lora_" in k}
    trained = {k: v for k, v in task.transformer.state_dict().items() if "lora_" in k}
    assert set(init) == set(trained) and info["modules"] == 20     # 2 VACE blocks x 10 projections
    assert all(not torch.equal(init[k], trained[k]) for k in trained if "lora_B" in k)   # every B moved off zero
    base = base_weights(load_backbone({"tiny": True}, "cpu")[0])
    now = {k.replace(".base_layer", ""): v for k, v in task.transformer.state_dict().items() if "lora_" not in k}
    assert set(base) == set(now) and all(torch.equal(base[k], now[k]) for k in base)
    assert res.exported and (tmp_path / "run" / "lora.safetensors").is_file()
    # every choice is in the run's config record: the recipe's keys, its loss weight, no gradient clipping
    rec = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert rec["data"]["recipe"] == "diffhdr-code" and rec["data"]["target_exposure"] == "shifted"
    assert rec["data"]["mask_values"] == "soft" and rec["data"]["reference_mapping"] == "linear"
    assert rec["flow"]["weighting"] == "bell" and rec["train"]["max_grad_norm"] is None
    assert rec["train"]["steps"] == 3 and all("grad_norm" not in r for r in rows)
    sd = load_file(tmp_path / "run" / "lora.safetensors")
    assert len(sd) == 40 and all(k.startswith("transformer.vace_blocks.") for k in sd)

    # reload into a fresh tiny pipeline through diffusers' own loader
    tr, vae, te, tok = load_backbone({"tiny": True}, "cpu")
    pipe = WanVACEPipeline(tokenizer=tok, text_encoder=te, transformer=tr, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=g),
                  control_hidden_states=torch.randn(1, 96, 2, 4, 4, generator=g), return_dict=False)
    with torch.no_grad():
        before = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(str(tmp_path / "run"), weight_name="lora.safetensors")
        after = pipe.transformer(**inputs)[0]
        ours = task.transformer(**inputs)[0]
    torch.testing.assert_close(after, ours, rtol=1e-5, atol=1e-6)
    assert (after - before).abs().max() > 1e-4


def test_resume_continues_at_the_right_step(tmp_path):
    cfg = tiny_config(steps=4)
    full = DiffHDRTask(cfg, dataset=Synth())
    train(full, cfg, tmp_path / "full", device="cpu", progress=False)
    part = DiffHDRTask(cfg, dataset=Synth())
    r1 = train(part, cfg, tmp_path / "part", device="cpu", stop_after=2, progress=False)
    assert r1.step == 2 and not (tmp_path / "part" / "lora.safetensors").exists()
    torch.manual_seed(123)
    again = DiffHDRTask(cfg, dataset=Synth())
    r2 = train(again, cfg, tmp_path / "part", device="cpu", progress=False)
    assert r2.resumed_from == 2 and r2.step == 4
    a, b = load_file(tmp_path / "full" / "lora.safetensors"), load_file(tmp_path / "part" / "lora.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(l)["loss"] for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(lb) == 4


def test_latent_cache(tmp_path):
    cfg = tiny_config(steps=6)
    cfg["data"].update(cache_latents=True, cache_dir=str(tmp_path / "cache"), recipe="paper")
    task = DiffHDRTask(cfg, dataset=Synth(n=2))
    train(task, cfg, tmp_path / "run", device="cpu", progress=False)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2                      # 2 windows, each at its one exposure shift -> 2 entries
    assert task.cache.misses == 2 and task.cache.hits == 4
    item = Synth(n=2)[0]
    key = LatentCache.key("h0/c", 0, 5, 1.0, LOG_GAMMA_M, 2.2, (32, 32))    # shifted target: Delta = 1 stop
    torch.testing.assert_close(task.cache.get(key), task.target_latent(item["hdr"], 1.0))
    assert key != LatentCache.key("h0/c", 0, 5, 0.0, LOG_GAMMA_M, 2.2, (32, 32))
    # a different VAE (weights) -> a different cache folder
    cfg2 = copy.deepcopy(cfg)
    cfg2["model"]["init_seed"] = 1
    t2 = DiffHDRTask(cfg2, dataset=Synth(n=2))
    t2.build(cfg2, "cpu", torch.float32)
    assert t2.cache.dir != task.cache.dir


def test_errors(tmp_path):
    cfg = tiny_config()
    cfg["model"] = {"lora": {"rank": 4}}
    with pytest.raises(TrainError, match="model.pretrained"):
        train(DiffHDRTask(cfg, dataset=Synth()), cfg, tmp_path / "a", device="cpu", progress=False)
    cfg = tiny_config()
    cfg["model"]["lora"]["blocks"] = "decoder"
    with pytest.raises(TrainError, match="lora.blocks"):
        train(DiffHDRTask(cfg, dataset=Synth()), cfg, tmp_path / "b", device="cpu", progress=False)
    cfg = tiny_config()
    cfg["data"]["recipe"] = "mine"
    with pytest.raises(TrainError, match="data.recipe"):
        DiffHDRTask(cfg, dataset=Synth())


# ------------------------------------------------------------------------------------------------------------ CFA

def test_context_focused_cross_attention(backbone):
    """alpha = 0 -> plain cross-attention; masks of zeros -> base; alpha = 1 with a full mask -> the over prompt's
    cross-attention (eq. 8); only the selected branches are touched and uninstall restores the processors."""
    tr = load_backbone({"tiny": True}, "cpu")[0]
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([300.0]),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=g),
                  control_hidden_states=torch.randn(1, 96, 2, 4, 4, generator=g), return_dict=False)
    e_over, e_under = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    n = 2 * 2 * 2
    with torch.no_grad():
        plain = tr(**inputs)[0]
        with_over = tr(**{**inputs, "encoder_hidden_states": e_over})[0]
        st = CFAState(alpha_over=0.0, alpha_under=0.0, over_embeds=e_over, under_embeds=e_under,
                      over_mask=torch.ones(1, n, 1), under_mask=torch.ones(1, n, 1))
        old = install_cfa(tr, st, "both")
        assert len(old) == 3 + 2
        assert torch.equal(tr(**inputs)[0], plain)                     # alpha = 0
        st.alpha_over, st.alpha_under = 2.0, -1.5
        st.over_mask, st.under_mask = torch.zeros(1, n, 1), torch.zeros(1, n, 1)
        assert torch.equal(tr(**inputs)[0], plain)                     # masks of zeros
        st.alpha_over, st.alpha_under, st.over_mask = 1.0, 0.0, torch.ones(1, n, 1)
        torch.testing.assert_close(tr(**inputs)[0], with_over, rtol=1e-4, atol=1e-5)
        st.alpha_over = 0.5
        half = tr(**inputs)[0]
        assert (half - plain).abs().max() > 1e-4 and (half - with_over).abs().max() > 1e-4
        assert st.calls > 0
        uninstall_cfa(tr, old)
        assert torch.equal(tr(**inputs)[0], plain)
        install_cfa(tr, st, "vace")
        assert tr(**inputs)[0].sub(plain).abs().max() > 1e-5          # vace branch only still changes the output


def test_token_mask_layout():
    m = torch.zeros(9, 32, 32)
    m[0, :16, :16] = 1                 # frame 0, top-left token of latent frame 0
    m[5:9, 16:, 16:] = 1               # frames 5..8 = latent frame 2, bottom-right token
    tm = token_mask(m)
    assert tm.shape == (1, 3 * 2 * 2, 1)
    assert tm[0, :, 0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert token_mask(m, n_reference=1).shape == (1, 16, 1)


def test_reference_frame(tmp_path):
    """VACE reference (public code's recipe): the first GT frame's latent is prepended to target and context (with
    zeros for the reactive half and the mask), and a step trains with it; under code-mix 3/8 of samples get it."""
    from train.diffhdr.task import use_reference

    d = resolve_data_config({"recipe": "diffhdr-code"})
    r = torch.rand(20000, 2, generator=torch.Generator().manual_seed(2))
    share = sum(use_reference(float(a), float(b), d) for a, b in r) / len(r)
    assert share == pytest.approx(3 / 8, abs=0.01) and not use_reference(0.1, 0.0, d)
    assert not use_reference(0.9, 0.0, resolve_data_config({"recipe": "paper"}))

    cfg = tiny_config(steps=2)
    cfg["data"].update(recipe="paper", reference_prob=1.0)
    task = DiffHDRTask(cfg, dataset=Synth(stops=0.0))
    res = train(task, cfg, tmp_path / "run", device="cpu", progress=False)
    assert res.last_metrics["reference"] == 1.0 and torch.isfinite(torch.tensor(res.last_metrics["loss"]))
    item = Synth(stops=0.0)[0]
    latent, ctrl, _, info = task.prepare_sample(item, torch.Generator().manual_seed(0))
    assert info["reference"] == 1.0 and latent.shape[1] == 2 + 1 and ctrl.shape[1] == 2 + 1
    ref = task.target_latent(item["hdr"][:1])
    torch.testing.assert_close(latent[:, :1], ref)
    torch.testing.assert_close(latent[:, 1:], task.target_latent(item["hdr"]))
    torch.testing.assert_close(ctrl[:16, :1], ref)
    assert ctrl[16:, :1].abs().max() == 0


# ----------------------------------------------------------------------------------------- recipes as published

def ramp_clip(t=5, hw=32):
    """A window whose exposure changes over time: the left half brightens by one stop per frame, the right half
    darkens by one, so pixels enter and leave the over/under masks (where the EMA of eq. 6 matters)."""
    from hdr.color import srgb_oetf

    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, hw, hw, generator=g) * 0.6 + 0.2
    gain = torch.tensor([2.0 ** (k - t // 2) for k in range(t)]).view(t, 1, 1, 1)
    hdr = torch.cat([base[..., : hw // 2] * gain, base[..., hw // 2:] / gain], dim=-1)
    ldr = (srgb_oetf(hdr.clamp(0, 1)) * 255).round() / 255
    zeros = torch.zeros(t, 1, hw, hw)
    return {"hdr": hdr, "ldr": ldr, "over": zeros, "under": zeros, "caption": "", "overexposed": "sky",
            "underexposed": "floor", "key": "h/c", "start": 0, "params": {"exposure_stops": 0.0}}


def test_ema_reaches_the_model_identically_in_training_and_inference():
    """DiffHDR eq. 6: with alpha = 0.7 the VACE mask channels carry the smoothed mask (they differ from alpha = 1 by
    up to 0.3 on a clip whose exposure changes), while the inactive/reactive split stays the current frame's
    detection (diffusers cuts it at 0.5). The control tensor the trainer builds is the one the transformer receives
    from WanVACEPipeline in inference (train.diffhdr.infer.convert_windows, masks computed per window). Cutting the
    masks first (mask_values: binary, the old behaviour) makes the EMA vanish."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    from train.diffhdr.infer import convert_windows

    item = ramp_clip()
    t, hw = item["ldr"].shape[0], item["ldr"].shape[-1]
    frames8 = (item["ldr"].permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    cfg = tiny_config()
    cfg["data"].update(recipe="paper", window=t)
    task = DiffHDRTask(cfg, dataset=[item])
    task.build(cfg, "cpu", torch.float32)
    pipe = WanVACEPipeline(tokenizer=task.tokenizer, text_encoder=task.text_encoder, transformer=task.transformer,
                           vae=task.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    emb, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=16, device="cpu")
    seen = []
    task.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["control_hidden_states"].detach().clone()), with_kwargs=True)
    ctrl = {}
    for alpha, values in ((0.7, "soft"), (1.0, "soft"), (0.7, "binary"), (1.0, "binary")):
        task.dcfg = resolve_data_config({**cfg["data"], "mask_ema_alpha": alpha, "mask_values": values})
        ctrl[alpha, values] = task.prepare_sample(item, torch.Generator().manual_seed(0))[1]
        if values == "soft":
            seen.clear()
            convert_windows(pipe, frames8, None, None, task.dcfg, window=t, starts=[0], seed=0, emit=lambda *a: None,
                            call=dict(prompt_embeds=emb, height=hw, width=hw, num_inference_steps=1,
                                      guidance_scale=1.0, max_sequence_length=16), progress=False)
            assert len(seen) == 1
            torch.testing.assert_close(seen[0][0], ctrl[alpha, values], rtol=0, atol=1e-6)  # inference == training
    soft, plain = ctrl[0.7, "soft"], ctrl[1.0, "soft"]
    assert torch.equal(soft[:32], plain[:32])                        # split: the current frame's detection
    diff = (soft[32:] - plain[32:]).abs()
    assert diff.max().item() == pytest.approx(0.3, abs=1e-5) and diff.mean().item() > 0.05
    assert ((soft[32:] > 0) & (soft[32:] < 1)).any() and not ((plain[32:] > 0) & (plain[32:] < 1)).any()
    assert torch.equal(ctrl[0.7, "binary"], ctrl[1.0, "binary"])     # cut first: alpha has no effect
    torch.testing.assert_close(ctrl[1.0, "binary"], plain)
    # the public code's masks are binarised at 0.2 by design: binary mask channels under that recipe
    code = resolve_data_config({"recipe": "diffhdr-code", "window": t})
    _, mask = control_video({**item, **window_masks(item["ldr"], code)}, code, gray_over=False, text_to_hdr=False)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.max() == 1
    with pytest.raises(TrainError, match="mask_ema_alpha"):
        resolve_data_config({"mask_mode": "dataset", "mask_ema_alpha": 1.0})


def test_target_exposure_shifted_in_both_recipes():
    """Default: the target is the radiance times 2^Delta, like the LDR input (public code's use_exposured_gt);
    data.target_exposure: original keeps the paper's literal reading."""
    for recipe in ("paper", "diffhdr-code"):
        assert resolve_data_config({"recipe": recipe})["target_exposure"] == "shifted"
    item = Synth(stops=1.0)[0]
    lat = {}
    for mode in ("shifted", "original"):
        cfg = tiny_config()
        cfg["data"].update(recipe="paper", target_exposure=mode)
        task = DiffHDRTask(cfg, dataset=Synth())
        task.build(cfg, "cpu", torch.float32)
        lat[mode] = task.prepare_sample(item, torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(lat["shifted"], task.target_latent(item["hdr"] * 2.0))
    torch.testing.assert_close(lat["original"], task.target_latent(item["hdr"]))
    assert (lat["shifted"] - lat["original"]).abs().mean() > 1e-3          # 4.6e-3 with the tiny random VAE


def test_code_recipe_prompts_reference_and_loss_weight(backbone):
    """diffhdr-code: over + " " + under prompts with the "silhouette" rule; the VACE reference frame fed linear
    (2 lin - 1, the public training code); DiffSynth's bell-shaped timestep weight (checked against its formula)."""
    from train.diffhdr.task import code_prompt, code_region_prompt, reference_unit, resolve_flow_config

    assert code_prompt("the sun", "dark trees") == "over-exposed: the sun under-exposed: dark trees"
    assert code_region_prompt("a dark silhouette of hills", "under") == \
        "under-exposed: Recover the content in the under-exposed area."
    assert code_region_prompt("over-exposed: sky", "over") == "over-exposed: sky"
    assert code_region_prompt("A Silhouette", "over") == "over-exposed: A Silhouette"      # case-sensitive, as there
    item = {"caption": "full", "overexposed": "sky", "underexposed": "floor"}
    assert draw_prompt(0.5, 0.9, "code-mix", item, region_prompts="code") == (
        "over-exposed: sky under-exposed: floor", False)
    d = resolve_data_config({"recipe": "diffhdr-code"})
    assert d["region_prompts"] == "code" and d["reference_mapping"] == "linear" and d["max_sequence_length"] == 512
    assert resolve_data_config({"recipe": "paper"})["region_prompts"] == "structured"

    lin = torch.tensor([0.0, 0.5, 4.0, 1e6]).view(1, 1, 4, 1).expand(1, 3, 4, 1)
    assert reference_unit(lin, d)[0, 0, :, 0].tolist() == [0.0, 0.5, 4.0, LOG_GAMMA_M]
    lg = reference_unit(lin, resolve_data_config({"recipe": "paper"}))
    torch.testing.assert_close(lg, C.hdr_to_unit(lin))
    cfg = tiny_config()
    cfg["data"].update(prompt_mode="caption", reference_prob=1.0)
    task = DiffHDRTask(cfg, dataset=Synth(stops=0.0))
    task.build(cfg, "cpu", torch.float32)
    it = Synth(stops=0.0)[0]
    latent, ctrl, prompt, info = task.prepare_sample(it, torch.Generator().manual_seed(0))
    ref = C.encode(task.vae, C.to_vae_video(it["hdr"][:1][None]))[0]          # 2 lin - 1 into the VAE
    assert info["reference"] == 1.0 and prompt == "over-exposed: sky under-exposed: floor"
    torch.testing.assert_close(latent[:, :1], ref)
    torch.testing.assert_close(ctrl[:16, :1], ref)
    assert (ref - task.target_latent(it["hdr"][:1])).abs().mean() > 0.01       # not the Log-Gamma reading

    # loss weight: diffsynth/schedulers/flow_match.py set_timesteps(1000, training=True) with shift 5, sigma_min 0
    assert resolve_flow_config(None, "diffhdr-code")["weighting"] == "bell"
    assert resolve_flow_config(None, "paper")["weighting"] == "none"
    assert resolve_flow_config({"weighting": "none"}, "diffhdr-code")["weighting"] == "none"
    sig = torch.linspace(1.0, 0.0, 1001)[:-1]
    x = 5.0 * sig / (1 + 4.0 * sig) * 1000
    y = torch.exp(-2 * ((x - 500) / 1000) ** 2)
    ref_w = (y - y.min()) * (1000 / (y - y.min()).sum())
    ours = C.loss_weights(x / 1000, resolve_flow_config(None, "diffhdr-code"))
    torch.testing.assert_close(ours, ref_w, rtol=1e-5, atol=1e-6)
    assert ours.max().item() == pytest.approx(ref_w.max().item()) and ours.min().item() == 0.0
