"""Wan2.1-VACE LoRA layouts (train.diffhdr.lora_layouts) on the tiny model: a LoRA exported by the DiffHDR task in
every layout and loaded back through train.infer's loading path gives the same transformer output; PEFT's
``.default`` adapter-name keys, DiffSynth's training keys, kohya names, alpha != rank; unknown layouts are one-line
errors; a DiffSynth-layout "released" LoRA runs over a manifest's test split and evaluate.run scores every clip."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from train.diffhdr import lora_layouts as L  # noqa: E402
from train.diffhdr.infer import build_pipeline, read_lora_any_layout  # noqa: E402
from train.diffhdr.model import load_backbone  # noqa: E402
from train.diffhdr.task import DiffHDRTask  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "train" / "configs" / "diffhdr_tiny.yaml"
RANK, ALPHA = 4, 8.0        # alpha != rank: the scale alpha/rank = 2 must survive every layout


def tiny_cfg(blocks="both") -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["model"]["lora"] = {"rank": RANK, "alpha": ALPHA, "blocks": blocks}
    return cfg


def inputs() -> dict:
    g = torch.Generator().manual_seed(3)
    return dict(hidden_states=torch.randn(1, 16, 2, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 16, 32, generator=g),
                control_hidden_states=torch.randn(1, 96, 2, 4, 4, generator=g), return_dict=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The DiffHDR task's export (main + VACE blocks, random non-zero LoRA) in all three layouts, with the output of
    the transformer that holds the LoRA and of the bare backbone."""
    run = tmp_path_factory.mktemp("lora") / "run"
    task = DiffHDRTask(tiny_cfg(), dataset=[{}])
    task.build(task.config, "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    for n, p in task.transformer.named_parameters():
        if "lora_" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    task.set_export_formats("comfyui,diffsynth")
    files = task.export(run, None)
    with torch.no_grad():
        ref = task.transformer(**inputs())[0]
        base = load_backbone({"tiny": True}, "cpu")[0](**inputs())[0]
    return run, files, ref, base


def output_through_infer(path: Path, cfg: dict | None = None) -> tuple[torch.Tensor, L.LoraInfo]:
    """Transformer output after train.infer's loading path: read any layout, convert, build the pipeline, load."""
    sd, info = read_lora_any_layout(path, quiet=True)
    pipe = build_pipeline(cfg or tiny_cfg(), torch.device("cpu"), 5.0, sd, path, quiet=True)
    with torch.no_grad():
        return pipe.transformer(**inputs())[0], info


def test_every_exported_layout_loads_back_to_the_same_numbers(exported):
    run, files, ref, base = exported
    assert sorted(Path(f).name for f in files) == ["lora.comfyui.safetensors", "lora.diffsynth.safetensors",
                                                   "lora.json", "lora.safetensors"]
    rec = json.loads((run / "lora.json").read_text())
    assert rec["files"] == {"diffusers": "lora.safetensors", "diffsynth": "lora.diffsynth.safetensors",
                            "comfyui": "lora.comfyui.safetensors"}
    assert (ref - base).abs().max() > 1e-2                                   # the LoRA changes the output
    for layout, name in rec["files"].items():
        sd = load_file(run / name)
        assert L.detect_layout(sd) == layout
        out, info = output_through_infer(run / name)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        assert info.layout == layout and info.modules == 50 and info.branches == "main + vace blocks"
        assert set(info.ranks) == {RANK}
    comfy = load_file(run / "lora.comfyui.safetensors")
    assert comfy["diffusion_model.vace_blocks.1.ffn.2.alpha"].item() == ALPHA
    assert "diffusion_model.blocks.2.cross_attn.o.lora_up.weight" in comfy
    ours = load_file(run / "lora.safetensors")
    syn = load_file(run / "lora.diffsynth.safetensors")                    # DiffSynth adds B @ A: scale folded in A
    torch.testing.assert_close(syn["vace_blocks.0.self_attn.q.lora_A.weight"],
                               ours["transformer.vace_blocks.0.attn1.to_q.lora_A.weight"] * (ALPHA / RANK))
    _, info = output_through_infer(run / "lora.comfyui.safetensors")
    assert set(info.alphas) == {ALPHA} and "diffusers _convert_non_diffusers_wan_lora" in info.converter


def test_convert_command_keeps_the_numbers(exported, tmp_path, capsys):
    """python -m train.diffhdr.lora_layouts FILE --to LAYOUT --out OUT: ComfyUI (alpha 8, rank 4) -> diffusers ->
    DiffSynth, each step the same transformer output."""
    run, _, ref, _ = exported
    src = run / "lora.comfyui.safetensors"
    assert L.main([str(src)]) == 0 and "comfyui (rank 4, alpha 8, 50 modules" in capsys.readouterr().out
    assert L.main([str(src), "--to", "diffusers", "--out", str(tmp_path / "d.safetensors")]) == 0
    assert L.main([str(tmp_path / "d.safetensors"), "--to", "diffsynth", "--out", str(tmp_path / "s.safetensors")]) == 0
    for name in ("d", "s"):
        out, info = output_through_infer(tmp_path / f"{name}.safetensors")
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert L.main([str(tmp_path / "none.safetensors"), "--to", "comfyui", "--out", str(tmp_path / "x")]) == 2
    assert "none.safetensors: LoRA file not found" in capsys.readouterr().err


def test_peft_default_adapter_name_and_diffsynth_training_keys(exported, tmp_path):
    """PEFT's ``lora_A.default.weight`` (what DiffSynth's trainer writes, here with its ``pipe.vace.``/``pipe.dit.``
    prefixes): diffusers' own loader leaves those weights unloaded; converted, they give the same numbers."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline

    run, _, ref, _ = exported
    ours = load_file(run / "lora.safetensors")
    peft = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
            for k, v in ours.items()}
    save_file(peft, tmp_path / "peft.safetensors", metadata={
        "lora_adapter_metadata": json.dumps({"transformer.r": RANK, "transformer.lora_alpha": ALPHA})})
    out, info = output_through_infer(tmp_path / "peft.safetensors")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert info.layout == "diffusers" and "peft-adapter-name" in info.variants

    tr, vae, te, tok = load_backbone({"tiny": True}, "cpu")
    pipe = WanVACEPipeline(tokenizer=tok, text_encoder=te, transformer=tr, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.load_lora_weights(dict(peft))
    assert any(p.is_meta for n, p in tr.named_parameters() if "lora_" in n)   # the bug the converter avoids

    syn = load_file(run / "lora.diffsynth.safetensors")
    train_keys = {("pipe.vace." if k.startswith("vace_") else "pipe.dit.")
                  + k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                  for k, v in syn.items()}
    save_file(train_keys, tmp_path / "ds.safetensors")
    out, info = output_through_infer(tmp_path / "ds.safetensors")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert info.layout == "diffsynth" and "peft-adapter-name" in info.variants


def test_kohya_names_and_alpha_keys(exported, tmp_path):
    """``lora_unet_blocks_0_self_attn_q.lora_down.weight`` + ``.alpha`` (ComfyUI/musubi) for main and VACE blocks;
    a DiffSynth file with (deprecated) ``.alpha`` keys is scaled by alpha/rank, as DiffSynth does."""
    run, _, ref, _ = exported
    comfy = load_file(run / "lora.comfyui.safetensors")
    kohya = {}
    for k, v in comfy.items():
        body = k.removeprefix("diffusion_model.")
        suffix = next(s for s in (".lora_down.weight", ".lora_up.weight", ".alpha") if body.endswith(s))
        kohya["lora_unet_" + body[:-len(suffix)].replace(".", "_") + suffix] = v
    save_file(kohya, tmp_path / "kohya.safetensors")
    assert L.detect_layout(kohya) == "comfyui"
    out, info = output_through_infer(tmp_path / "kohya.safetensors")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert "kohya" in info.variants and set(info.alphas) == {ALPHA}

    ours = load_file(run / "lora.safetensors")       # unscaled weights + alpha keys in Wan names
    wan = {}
    for k, v in ours.items():
        d = L._DIFFUSERS_MODULE.match(k.removeprefix("transformer.").rsplit(".lora_", 1)[0])
        name = f"{d['branch']}.{d['n']}.{L.DIFFUSERS_TO_WAN[d['inner']]}"
        wan[f"{name}.lora_{k.rsplit('.lora_', 1)[1]}"] = v
        wan[f"{name}.alpha"] = torch.tensor(ALPHA)
    save_file(wan, tmp_path / "alpha.safetensors")
    out, info = output_through_infer(tmp_path / "alpha.safetensors")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert info.layout == "diffsynth" and "alpha-keys" in info.variants


def test_unknown_layouts_and_wrong_models_are_one_line_errors(tmp_path, capsys):
    from train.infer import main

    a, b = torch.zeros(4, 24), torch.zeros(24, 4)
    with pytest.raises(L.LoraLayoutError) as e:
        L.detect_layout({"unet.down_blocks.0.attn.to_q.lora_A.weight": a, "vace_blocks.0.self_attn.q.lora_A.weight": a,
                         "te.lora.weight": b})
    msg = str(e.value)
    assert "\n" not in msg and "2 of 3 keys" in msg and "te.lora.weight, unet.down_blocks.0" in msg
    with pytest.raises(L.LoraLayoutError, match="mixes LoRA layouts"):
        L.detect_layout({"blocks.0.attn1.to_q.lora_A.weight": a, "blocks.0.self_attn.q.lora_A.weight": a})
    with pytest.raises(L.LoraLayoutError, match="not both lora_A and lora_B"):
        L.to_diffusers({"vace_blocks.0.self_attn.q.lora_A.weight": a})
    with pytest.raises(L.LoraLayoutError, match="export format dora"):
        L.parse_formats("diffsynth,dora")
    # a 14B-sized LoRA on the tiny model: the sizes do not fit
    with pytest.raises(L.LoraLayoutError, match="another Wan size"):
        L.check_modules({"transformer.vace_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 5120)},
                        load_backbone({"tiny": True}, "cpu")[0])
    # through the CLI: the file is named, one line, exit 2
    save_file({"unet.mid.lora_A.weight": a}, tmp_path / "x.safetensors")
    (tmp_path / "in").mkdir()
    rc = main(["--model", "diffhdr", "--lora", str(tmp_path / "x.safetensors"), "--config", str(TINY),
               "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "x.safetensors: unknown LoRA layout" in err and "unet.mid" in err


def test_export_formats_flag_and_config():
    from train.engine import TrainError
    from train.run import export_formats

    assert export_formats({"formats": ["comfyui"]}, None) == ["comfyui"]
    assert export_formats({"formats": ["comfyui"]}, "diffsynth") == "diffsynth"          # the flag wins
    assert export_formats(None, None) is None
    with pytest.raises(TrainError, match="only the key formats"):
        export_formats({"format": "x"}, None)
    task = DiffHDRTask(tiny_cfg(), dataset=[{}])
    task.set_export_formats(["comfyui", "diffusers"])
    assert task.export_formats == ("diffusers", "comfyui")
    with pytest.raises(TrainError, match="one of diffusers, diffsynth, comfyui"):
        task.set_export_formats("safetensors")


@pytest.fixture(scope="module")
def manifest(tiny_dataset_src, tmp_path_factory) -> Path:
    """A manifest of the tiny dataset with 2 test clips (one HDRI)."""
    import shutil

    from manifests.__main__ import main as manifests_main

    root = tmp_path_factory.mktemp("m") / "data"
    shutil.copytree(tiny_dataset_src, root, ignore=shutil.ignore_patterns(".tmp"))
    assert manifests_main(["build", "--root", str(root), "--test", "2", "--quiet"]) == 0
    return root / "manifests" / "v0001.parquet"


def test_train_run_exports_the_requested_layouts(manifest, tmp_path, capsys):
    """train.run --export-format (over the config's export.formats) writes the layouts beside lora.safetensors;
    the diffsynth file loads back to the numbers of the run's own LoRA."""
    from train.run import main as run_main

    cfg = tiny_cfg("vace")
    cfg["export"] = {"formats": ["comfyui"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert run_main(["--manifest", str(manifest), "--model", "diffhdr", "--config", str(tmp_path / "c.yaml"),
                     "--run", str(run), "--set", "train.steps=1", "--export-format", "diffsynth", "--quiet"]) == 0
    assert "lora.diffsynth.safetensors" in capsys.readouterr().out
    assert not (run / "lora.comfyui.safetensors").exists()                      # the flag wins
    assert "export" not in yaml.safe_load((run / "config.yaml").read_text())   # not part of the resume fingerprint
    assert json.loads((run / "lora.json").read_text())["files"]["diffsynth"] == "lora.diffsynth.safetensors"
    a, _ = output_through_infer(run / "lora.safetensors", cfg)
    b, info = output_through_infer(run / "lora.diffsynth.safetensors", cfg)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert info.modules == 20 and info.branches == "vace blocks"


def test_released_diffsynth_lora_over_a_manifest_test_split_then_evaluate(manifest, tmp_path, capsys):
    """The documented command: a DiffSynth-layout LoRA without a config.yaml (as released) + --config, train.infer
    over the manifest's test split into PRED/<hdri>/<clip>/, then evaluate.run scores every test clip."""
    from evaluate.run import main as evaluate_main
    from train.infer import main as infer_main

    # a stand-in for the released LoRA: VACE blocks only, DiffSynth's training keys (pipe.vace. removed, .default)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for n in (0, 1):
        for wan, (i, o) in {"self_attn.q": (24, 24), "cross_attn.o": (24, 24), "ffn.0": (24, 32),
                            "ffn.2": (32, 24)}.items():
            sd[f"vace_blocks.{n}.{wan}.lora_A.default.weight"] = torch.randn(RANK, i, generator=g) * 0.1
            sd[f"vace_blocks.{n}.{wan}.lora_B.default.weight"] = torch.randn(o, RANK, generator=g) * 0.1
    released = tmp_path / "released" / "diffhdr_lora.safetensors"
    released.parent.mkdir()
    save_file(sd, released)
    pred, ev = tmp_path / "pred", tmp_path / "eval"
    cmd = ["--model", "diffhdr", "--lora", str(released), "--manifest", str(manifest), "--split", "test", "--out",
           str(pred), "--steps", "2", "--window", "5", "--device", "cpu", "--quiet"]
    assert infer_main(cmd) == 2                                                    # no config.yaml beside it
    err = capsys.readouterr().err
    assert "no config.yaml beside this LoRA" in err and "--config" in err
    assert infer_main(cmd[:-1] + ["--config", str(TINY)]) == 0
    err = capsys.readouterr().err
    assert "LoRA layout: diffsynth (rank 4, alpha 4, 8 modules: vace blocks, peft-adapter-name)" in err
    test_keys = sorted(json.loads((pred / "infer_split.json").read_text())["clips"])
    assert len(test_keys) == 2
    for key in test_keys:
        frames = sorted((pred / key).glob("frame_*.exr"))
        assert len(frames) == 9
        assert json.loads((pred / key / "infer.json").read_text())["lora_layout"]["layout"] == "diffsynth"
    assert evaluate_main(["--manifest", str(manifest), "--split", "test", "--predictions", str(pred), "--out",
                          str(ev), "--metrics", "psnr_t,ssim_t,psnr_pu21", "--quiet"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_clips"] == 2 and not metrics["missing"] and not metrics["failures"]
    assert sorted(c["rel"] for c in metrics["clips"]) == test_keys
    for c in metrics["clips"]:
        assert all(np.isfinite(c["metrics"][m]) for m in ("psnr_t", "ssim_t", "psnr_pu21")), c


def test_the_released_diffhdr_lora_key_names_are_recognised_and_converted():
    """The released DiffHDR LoRA (DiffSynth, --lora_base_model vace): rank 32 on the 8 VACE blocks of the 14B model,
    self/cross attention q, k, v, o and ffn.0/ffn.2, PEFT's adapter name kept (the key names a ComfyUI node
    for it lists in its test fixture); tiny shapes here."""
    import torch

    from train.diffhdr.lora_layouts import detect_layout, to_diffusers

    sd = {}
    for n in range(8):
        for mod in [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]:
            sd[f"vace_blocks.{n}.{mod}.lora_A.default.weight"] = torch.randn(4, 6)
            sd[f"vace_blocks.{n}.{mod}.lora_B.default.weight"] = torch.randn(6, 4)
    assert detect_layout(sd) == "diffsynth"
    out, info = to_diffusers(sd)
    assert len(out) == len(sd) == 160
    o_b = sd["vace_blocks.7.cross_attn.o.lora_B.default.weight"]
    assert torch.equal(out["transformer.vace_blocks.7.attn2.to_out.0.lora_B.weight"], o_b)
    assert {"transformer.vace_blocks.0.ffn.net.0.proj.lora_A.weight",
            "transformer.vace_blocks.3.attn1.to_k.lora_A.weight"} <= out.keys()
    assert set(info.ranks) == {4} and info.modules == 80 and info.branches == "vace blocks"
    assert "peft-adapter-name" in info.variants
