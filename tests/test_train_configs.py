"""Typed run configs of the trainers (train.engine.ConfigSection: TrainConfig, DiffHDR's and HDR-V-Diff's data/model
sections) and the one CLI vocabulary of train.run / train.infer. Fast: nothing is trained."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from train.diffhdr.task import RECIPES, DiffHDRData, DiffHDRModel, DiffHDRTask, resolve_data_config  # noqa: E402
from train.engine import (ConfigDeprecationWarning, TrainConfig, TrainError, load_config,  # noqa: E402
                          one_line_config_warnings, prepare_run_dir, resolve_device)
from train.hdrvdiff.stages import HDRVDiffData, HDRVDiffModel, HDRVDiffTask, data_config, model_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"

# what RUN/config.yaml records of a DiffHDR data section, in this order (a resume compares it)
DIFFHDR_DATA_KEYS = ["recipe", "split", "window", "ldr", "kind", "seed", "cache_latents", "cache_dir",
                     "max_sequence_length", "text_cache_size", "log_gamma_m", "log_gamma_g", "caption_dropout",
                     "preset", "target_exposure", "prompt_mode", "region_prompts", "gray_under", "gray_over_prob",
                     "gray_level", "mask_mode", "mask_values", "mask_ema_alpha", "reference_prob", "reference_mapping"]


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(TrainError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------ unknown keys

@pytest.mark.parametrize("section, build, key, suggestion", [
    ("config data:", lambda: DiffHDRData.from_dict({"recipe": "paper", "windw": 9}), "windw", "window"),
    ("config data:", lambda: resolve_data_config({"mask_mod": "paper"}), "mask_mod", "mask_mode"),
    ("config model:", lambda: DiffHDRModel.from_dict({"pretraind": "x"}), "pretraind", "pretrained"),
    ("config model.lora:", lambda: DiffHDRModel.from_dict({"lora": {"rnak": 4}}), "rnak", "rank"),
    ("config data:", lambda: data_config({"data": {"corp": 32}}), "corp", "crop"),
    ("config model:", lambda: model_config({"model": {"ddim_step": 5}}), "ddim_step", "ddim_steps"),
    ("config model.loss_weights:", lambda: model_config({"model": {"loss_weights": {"perceptul": 1}}}), "perceptul",
     "perceptual"),
    ("config train:", lambda: TrainConfig.from_dict({"stepz": 3}), "stepz", "steps"),
])
def test_unknown_key_names_section_key_suggestion_and_known_keys(section, build, key, suggestion):
    msg = one_line_error(build)
    assert msg.startswith(section), msg
    assert f"unknown key {key!r} (did you mean {suggestion!r}?)" in msg, msg
    assert "; known: " in msg and suggestion in msg.split("; known: ")[1].split(", ")


def test_unknown_key_without_a_close_match_and_several_keys():
    msg = one_line_error(DiffHDRData.from_dict, {"zzzzzz": 1})
    assert "unknown key 'zzzzzz';" in msg and "did you mean" not in msg
    msg = one_line_error(HDRVDiffModel.from_dict, {"unett": {}, "vae_sed": 1})
    assert "unknown keys 'unett' (did you mean 'unet'?), 'vae_sed' (did you mean 'vae_seed'?)" in msg


def test_unknown_keys_fail_when_a_task_is_made_or_run():
    cfg = yaml.safe_load((CONFIGS / "diffhdr_tiny.yaml").read_text())
    cfg["data"]["windw"] = 5
    assert "'windw'" in one_line_error(DiffHDRTask, cfg, dataset=[])
    cfg = yaml.safe_load((CONFIGS / "hdrvdiff_tiny.yaml").read_text())
    cfg["model"]["unet_size"] = 3
    assert "'unet_size'" in one_line_error(HDRVDiffTask({"stage": "ldm"}).resolve_config, cfg)


# ------------------------------------------------------------------------------------------------- wrong types

@pytest.mark.parametrize("build, where", [
    (lambda: resolve_data_config({"window": "33"}), "config data.window: expected int, got str '33'"),
    (lambda: resolve_data_config({"gray_under": 1}), "config data.gray_under: expected bool"),
    (lambda: resolve_data_config({"cache_dir": 3}), "config data.cache_dir: expected str or null"),
    (lambda: DiffHDRModel.from_dict({"lora": {"rank": "4"}}), "config model.lora.rank: expected int"),
    (lambda: DiffHDRModel.from_dict({"lora": 4}), "config model.lora: expected mapping or null"),
    (lambda: DiffHDRModel.from_dict({"tiny_vae": [1]}), "config model.tiny_vae: expected mapping"),
    (lambda: data_config({"data": {"crop": "32"}}), "config data.crop: expected int or null"),
    (lambda: model_config({"model": {"ddim_steps": 2.5}}), "config model.ddim_steps: expected int"),
    (lambda: model_config({"model": {"vae": 3}}), "config model.vae: expected str or mapping or null"),
    (lambda: TrainConfig.from_dict({"steps": True}), "config train.steps: expected int"),
    (lambda: TrainConfig.from_dict({"lr": "1e-4"}), "config train.lr: expected float, got str '1e-4'"),
])
def test_wrong_type_names_the_key(build, where):
    assert one_line_error(build).startswith(where)


def test_a_float_key_takes_an_int_and_values_are_kept_as_written():
    d = resolve_data_config({"gray_over_prob": 0, "log_gamma_m": 65536})
    assert d["gray_over_prob"] == 0 and type(d["gray_over_prob"]) is int and d["log_gamma_m"] == 65536
    assert TrainConfig.from_dict({"lr": 1, "betas": [0.9, 0.99]}).betas == (0.9, 0.99)


def test_choices_and_ranges():
    assert "config data.kind must be one of single, alt2, alt3, got 'alt4'" in one_line_error(
        resolve_data_config, {"kind": "alt4"})
    assert "config data.kind must be one of alt2, alt3, got 'single'" in one_line_error(
        data_config, {"data": {"kind": "single"}})
    assert "data.recipe must be one of paper, diffhdr-code" in one_line_error(DiffHDRData.from_dict, {"recipe": "x"})
    assert "model.lora.blocks must be one of vace, main, both" in one_line_error(
        DiffHDRModel.from_dict, {"lora": {"blocks": "decoder"}})
    assert "4k+1" in one_line_error(resolve_data_config, {"window": 8})
    assert "train.steps must be >= 1" in one_line_error(TrainConfig.from_dict, {"steps": 0})


# ------------------------------------------------------------------------------------------ old key spellings

def test_diffhdr_aug_kind_still_loads_as_kind_with_a_warning():
    with pytest.warns(ConfigDeprecationWarning, match="data.aug_kind is deprecated: write data.kind: alt2"):
        d = resolve_data_config({"recipe": "paper", "aug_kind": "alt2"})
    assert d["kind"] == "alt2" and "aug_kind" not in d and list(d) == DIFFHDR_DATA_KEYS
    with pytest.warns(FutureWarning):                       # shown by default (not a hidden DeprecationWarning)
        assert resolve_data_config({"exposures": 3})["kind"] == "alt3"
    with pytest.warns(ConfigDeprecationWarning):
        assert resolve_data_config({"aug_kind": "alt3", "kind": "alt3"})["kind"] == "alt3"
    with pytest.raises(TrainError, match="kind: alt2, aug_kind: single disagree; write only data.kind"):
        resolve_data_config({"aug_kind": "single", "kind": "alt2"})


def test_hdrvdiff_exposures_still_loads_as_kind_with_a_warning():
    with pytest.warns(ConfigDeprecationWarning, match="data.exposures is deprecated: write data.kind: alt2"):
        d = data_config({"data": {"exposures": 2, "crop": 32}})
    assert d == {"kind": "alt2", "ldr": "stored", "preset": "paper", "crop": 32, "split": "train"}
    with pytest.warns(ConfigDeprecationWarning):
        assert data_config({"data": {"aug_kind": "alt3"}})["kind"] == "alt3"
    assert "data.exposures (deprecated: use data.kind) must be 2 or 3, got 4" in one_line_error(
        data_config, {"data": {"exposures": 4}})
    # the resolved config (RUN/config.yaml) spells it kind, in the old key's place; nothing else is filled in
    cfg = {"data": {"ldr": "stored", "exposures": 3, "crop": 32}, "model": {"ddim_steps": 5}, "train": {"steps": 2}}
    with pytest.warns(ConfigDeprecationWarning):
        out = HDRVDiffTask({"stage": "ldm"}).resolve_config(cfg)
    assert out == {"data": {"ldr": "stored", "kind": "alt3", "crop": 32}, "model": {"ddim_steps": 5},
                   "train": {"steps": 2}}
    assert list(out["data"]) == ["ldr", "kind", "crop"]


def test_deprecation_warnings_print_as_one_line_in_the_clis(capsys):
    with one_line_config_warnings():
        resolve_data_config({"aug_kind": "single"})
    assert capsys.readouterr().err == "warning: config data.aug_kind is deprecated: write data.kind: single\n"


def test_old_run_folders_resume(tmp_path):
    """A run folder written before the rename (data.aug_kind / data.exposures in its config.yaml) is the same run
    as today's config: the engine passes the stored config through the task's resolve_config before comparing."""
    diff = yaml.safe_load((CONFIGS / "diffhdr_tiny.yaml").read_text())
    task = DiffHDRTask(diff, dataset=[])
    new = task.resolve_config(diff)
    old = {**new, "data": {("aug_kind" if k == "kind" else k): v for k, v in new["data"].items()}}
    hv = yaml.safe_load((CONFIGS / "hdrvdiff_tiny.yaml").read_text())
    hv_task = HDRVDiffTask({"stage": "ldm"})
    hv_new = hv_task.resolve_config(hv)
    hv_old = {**hv_new, "data": {("exposures" if k == "kind" else k): (3 if k == "kind" else v)
                                 for k, v in hv_new["data"].items()}}
    for name, stored, config, normalize in (("d", old, new, task.resolve_config),
                                            ("h", hv_old, hv_new, hv_task.resolve_config)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
        with pytest.raises(TrainError, match="different config"):          # without the task's normalisation
            prepare_run_dir(run, config)
        with warnings.catch_warnings():
            warnings.simplefilter("error")                                # the stored spelling warns nobody
            assert prepare_run_dir(run, config, normalize=normalize) is True
        assert yaml.safe_load((run / "config.yaml").read_text()) == config  # rewritten in today's spelling


def test_shipped_configs_use_the_new_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diff = DiffHDRTask(yaml.safe_load((CONFIGS / "diffhdr_tiny.yaml").read_text()), dataset=[])
        paper = yaml.safe_load((CONFIGS / "diffhdr_paper.yaml").read_text())
        assert paper["data"]["kind"] == "single" and resolve_data_config(paper["data"])["kind"] == "single"
        DiffHDRModel.from_dict(paper["model"])
        hv = yaml.safe_load((CONFIGS / "hdrvdiff_tiny.yaml").read_text())
        assert data_config(hv)["kind"] == "alt3" and HDRVDiffTask({"stage": "ldm"}).resolve_config(hv) == hv
    assert diff.dcfg["kind"] == "single"


# ------------------------------------------------------------------------------------------ the recipe mechanism

def test_recipes_fill_defaults_and_explicit_keys_win():
    for name, recipe in RECIPES.items():
        d = resolve_data_config({"recipe": name})
        assert list(d) == DIFFHDR_DATA_KEYS and all(d[k] == v for k, v in recipe.items())
    d = resolve_data_config({"recipe": "diffhdr-code", "gray_under": False, "reference_prob": 0.0})
    assert d["gray_under"] is False and d["reference_prob"] == 0.0 and d["gray_over_prob"] == 0.1
    assert resolve_data_config({})["recipe"] == "paper" and resolve_data_config(None) == resolve_data_config({})
    # a resolved section resolves to itself (inference re-reads RUN/config.yaml)
    assert resolve_data_config(d) == d


def test_diffhdr_model_section_is_kept_as_written():
    raw = {"tiny": True, "lora": {"rank": 4, "alpha": 4, "blocks": "vace"}}
    m = DiffHDRModel.from_dict(raw)
    assert m.to_dict(given_only=True) == raw
    full = m.backbone_config()
    assert full["lora"] == {"rank": 4, "alpha": 4, "blocks": "vace", "targets": m.lora.targets, "dropout": 0.0}
    assert DiffHDRModel.from_dict({}).backbone_config()["lora"]["alpha"] == 32      # alpha defaults to the rank
    cfg = yaml.safe_load((CONFIGS / "diffhdr_tiny.yaml").read_text())
    assert DiffHDRTask(cfg, dataset=[]).resolve_config(cfg)["model"] == cfg["model"]


def test_hdrvdiff_model_defaults_and_partial_loss_weights():
    m = model_config({})
    assert m["ddim_steps"] == 10 and m["loss_weights"] == {"l1": 1.0, "temp": 0.1, "perceptual": 0.1}
    assert model_config({"model": {"loss_weights": {"temp": 0.5}}})["loss_weights"]["temp"] == 0.5
    assert model_config({"model": {"loss_weights": {"temp": 0.5}}})["loss_weights"]["l1"] == 1.0
    assert HDRVDiffModel().scheduler is not HDRVDiffModel().scheduler                # no shared defaults
    assert data_config({"data": {"cache_latents": True}}) == HDRVDiffData().to_dict()  # --cache-latents: ignored


# ------------------------------------------------------------------------------------------------------- CLIs

def test_set_data_kind(tmp_path):
    from train.run import build_parser

    p = tmp_path / "c.yaml"
    p.write_text("data: {recipe: paper, kind: single}\n")
    args = build_parser().parse_args(["--manifest", "m", "--model", "diffhdr", "--config", str(p), "--out", "R",
                                      "--set", "data.kind=alt2", "--no-progress"])
    assert args.run == "R" and args.quiet                                             # the old spellings
    cfg = load_config(args.config, args.overrides)
    assert cfg["data"]["kind"] == "alt2" and resolve_data_config(cfg["data"])["kind"] == "alt2"
    assert data_config(load_config(None, ["data.kind=alt2"]))["kind"] == "alt2"
    with pytest.raises(TrainError, match="expected KEY=VALUE"):
        load_config(None, ["data.kind"])


def test_device_cuda_1_is_a_one_line_error(tmp_path, capsys, no_cuda):
    from train.infer import main as infer_main
    from train.run import main as run_main

    assert "--device cuda:1: torch sees no CUDA device" in one_line_error(resolve_device, "cuda:1")
    assert resolve_device("auto") == "cpu"
    assert run_main(["--manifest", str(tmp_path / "m.parquet"), "--model", "diffhdr", "--config", "c.yaml",
                     "--run", str(tmp_path / "r"), "--device", "cuda:1"]) == 2
    for model in ("diffhdr", "hdrvdiff"):
        assert infer_main(["--model", model, "--run", str(tmp_path), "--input", str(tmp_path), "--out",
                           str(tmp_path / "o"), "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: --device cuda:1: ") for e in err), err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("model", ["diffhdr", "hdrvdiff"])
def test_infer_help_shows_the_shared_flags(model, capsys):
    from train.infer import main as infer_main

    with pytest.raises(SystemExit) as e:
        infer_main(["--model", model, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--run", "--input", "--out", "--steps", "--quiet", "--device", "--seed", "--frames", "--half",
                 "--overwrite"):
        assert f"{flag} " in out or f"{flag}," in out, flag
    assert "cuda:N" in out and "--no-progress" in out


def test_infer_old_flag_spellings():
    import argparse

    from train.diffhdr import infer as d_infer
    from train.hdrvdiff import infer as h_infer

    p = argparse.ArgumentParser()
    d_infer.add_arguments(p)
    a = p.parse_args(["--lora", "L.safetensors", "--video", "v.mp4", "--out", "o", "--no-progress"])
    assert (a.lora, a.run, a.input, a.quiet, a.steps, a.device) == ("L.safetensors", None, "v.mp4", True, 50, "auto")
    with pytest.raises(SystemExit):                                        # exactly one of --run / --lora
        p.parse_args(["--lora", "L", "--run", "R", "--input", "v", "--out", "o"])
    a = h_infer.build_parser().parse_args(["--run", "R", "--input", "i", "--out", "o", "--ddim-steps", "3"])
    assert (a.steps, a.quiet, a.device) == (3, False, "auto")


def test_diffhdr_infer_run_folder_gives_its_lora(tmp_path):
    import argparse

    from train.diffhdr.infer import InferError, lora_path

    with pytest.raises(InferError, match="run folder not found"):
        lora_path(argparse.Namespace(run=str(tmp_path / "none"), lora=None))
    with pytest.raises(InferError, match="is the run finished"):
        lora_path(argparse.Namespace(run=str(tmp_path), lora=None))
    (tmp_path / "lora.safetensors").write_bytes(b"")
    assert lora_path(argparse.Namespace(run=str(tmp_path), lora=None)) == tmp_path / "lora.safetensors"
    assert lora_path(argparse.Namespace(run=None, lora=str(tmp_path / "lora.safetensors"))).is_file()


def test_diffhdr_flow_section_is_typed():
    from train.diffhdr.task import resolve_flow_config

    assert resolve_flow_config(None, "paper") == {"sampling": "grid", "shift": 5.0, "num_train_timesteps": 1000,
                                                  "sigma_min": 0.0, "weighting": "none"}
    assert resolve_flow_config({"shift": 3.0}, "diffhdr-code")["weighting"] == "bell"
    with pytest.raises(TrainError, match=r"config flow: unknown key 'shfit' \(did you mean 'shift'\?\)"):
        resolve_flow_config({"shfit": 3.0})
    with pytest.raises(TrainError, match="config flow.weighting must be one of none, bell"):
        resolve_flow_config({"weighting": "cos"})
    with pytest.raises(TrainError, match="config flow.sampling must be one of"):
        resolve_flow_config({"sampling": "gird"})
