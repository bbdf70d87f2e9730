"""HDR-V-Diff training stages on a real tiny manifest (render -> augment -> manifests build), the CLI under two
minutes, inference to EXR, freezing, overfitting a fixed batch. CPU, tiny, single-threaded."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hdr.io import read_image
from train.engine import TrainError, train
from train.hdrvdiff import stage_config, train_all_stages
from train.hdrvdiff.stages import HDRVDiffTask, build_stage, build_vae, model_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "train/configs/hdrvdiff_tiny.yaml"
TINY = yaml.safe_load(CONFIG.read_text())
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is faster than two on this shared 2-core machine."""


@pytest.fixture(scope="module")
def manifest_path(tiny_dataset_src, tmp_path_factory) -> Path:
    """A private copy of the tiny dataset and its manifest, built by the manifests CLI (one HDRI held out)."""
    root = tmp_path_factory.mktemp("hv") / "data"
    shutil.copytree(tiny_dataset_src, root, ignore=shutil.ignore_patterns(".tmp"))
    subprocess.run([sys.executable, "-m", "manifests", "build", "--root", str(root), "--test", "1", "--quiet"],
                   check=True, cwd=REPO, env=ENV, capture_output=True, text=True)
    (path,) = sorted((root / "manifests").glob("v*.parquet"))
    return path


def _cfg(stage: str, steps: int, **model) -> dict:
    c = stage_config(TINY, stage)
    c["train"].update(steps=steps, checkpoint_every=steps)
    c["model"].update(model)
    return c


class SnapTask(HDRVDiffTask):
    """Remembers every parameter right after the engine built the stage."""

    def build(self, *a, **k):
        super().build(*a, **k)
        self.before = {n: p.detach().clone() for n, p in self._module.named_parameters()}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_stage_three_real_steps_from_manifest_and_freezing(manifest_path, tmp_path):
    from manifests import open_manifest

    m = open_manifest(str(manifest_path))
    runs, tasks = {}, {}
    for stage in ("ldm", "tcam", "recon"):
        extra = {"ldm_dir": str(runs["ldm"]), "temporal_dir": str(runs["tcam"])} if stage == "recon" else {}
        cfg = _cfg(stage, 3, **extra)
        runs[stage], tasks[stage] = tmp_path / stage, SnapTask(cfg, m)
        res = train(tasks[stage], cfg, runs[stage], manifest=m, progress=False)
        assert res.step == 3 and res.exported
        rows = _metrics(runs[stage])
        assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
        assert json.loads((runs[stage] / "manifest.json").read_text())["version"] == m.version
        mod = tasks[stage]._module
        frozen = {n for n, p in mod.named_parameters() if not p.requires_grad}
        trainable = {n for n, p in mod.named_parameters() if p.requires_grad}
        after = dict(mod.named_parameters())
        # frozen parameters are bit-identical after the stage; the stage's own model did change
        assert frozen and all(torch.equal(tasks[stage].before[n], after[n]) for n in frozen)
        assert any(not torch.equal(tasks[stage].before[n], after[n]) for n in trainable)
        assert {n.split(".")[0] for n in trainable} == {{"ldm": "ldm", "tcam": "temporal", "recon": "recon"}[stage]}
    assert set(tasks["tcam"]._module.loss_fn.state_dict()) and rows[0].keys() >= {"l1", "temporal", "perceptual"}
    # ldm: the VAE is the seeded tiny one, untouched, and exported next to the U-Net for the later stages
    fresh = build_vae(model_config(TINY))
    vae_file = load_file(str(runs["ldm"] / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(vae_file[n], p) for n, p in fresh.state_dict().items())
    assert (runs["ldm"] / "unet" / "config.json").is_file()
    # recon: the frozen U-Net and temporal branch are exactly the exports of stages ldm and tcam
    rec = tasks["recon"]._module
    unet_file = load_file(str(runs["ldm"] / "unet" / "diffusion_pytorch_model.safetensors"))
    temp_file = load_file(str(runs["tcam"] / "temporal" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(unet_file[n], p) for n, p in rec.ldm.unet.state_dict().items())
    assert all(torch.equal(temp_file[n], p) for n, p in rec.temporal.state_dict().items())
    record = json.loads((runs["recon"] / "hdrvdiff.json").read_text())
    assert record["stage"] == "recon" and record["ddim_steps"] == 10


def _fixed_batch(manifest_path):
    from manifests import open_manifest

    task = HDRVDiffTask(stage_config(TINY, "ldm"), open_manifest(str(manifest_path)))
    ds = task.dataset()
    assert ds.window == TINY["model"]["temporal"]["n_frames"] + 1
    batch = task.collate([ds[0], ds[1]])
    assert batch["ldr"].shape == (2, 4, 3, 32, 32) and batch["exposures"].shape == (2, 4)
    assert sorted(set(batch["exposures"].flatten().tolist())) == [0.25, 1.0, 4.0]  # alt3: EV -2, 0, +2
    return batch


def _overfit(stage_module, batch, steps, lr):
    params = [p for p in stage_module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        out = stage_module(batch, torch.Generator().manual_seed(0))  # the same noise/timesteps every step
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    return losses


def test_each_stage_overfits_a_fixed_batch(manifest_path, tmp_path):
    batch = _fixed_batch(manifest_path)
    torch.manual_seed(0)
    ldm = build_stage("ldm", _cfg("ldm", 1))
    losses = _overfit(ldm, batch, 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    torch.manual_seed(0)
    tcam = build_stage("tcam", _cfg("tcam", 1))
    losses = _overfit(tcam, batch, 12, 3e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    # recon on top of the (barely trained) exports of the two other stages
    for name, stage in (("ldm", ldm), ("tcam", tcam)):
        t = HDRVDiffTask(_cfg(name, 1))
        t._module = stage
        t.export(tmp_path / name, {n: p.detach() for n, p in stage.named_parameters() if p.requires_grad})
    torch.manual_seed(0)
    recon = build_stage("recon", _cfg("recon", 1, ldm_dir=str(tmp_path / "ldm"), temporal_dir=str(tmp_path / "tcam")))
    # ZiCA + zero fusion + copied output conv: at the start of stage recon the prediction is the temporal branch's
    from train.hdrvdiff.data import prepare

    d = prepare(batch)
    with torch.no_grad():
        windows = d["L"][:, 0:3]
        start = recon.predict(windows, d["ldr"][:, 1], d["exposures"][:, 1], torch.Generator().manual_seed(0))
        assert torch.allclose(start, recon.temporal(windows)[0], atol=1e-5)
    losses = _overfit(recon, batch, 20, 3e-3)  # (it starts from the temporal branch's prediction: a good start)
    assert np.mean(losses[-5:]) < 0.85 * losses[0], losses
    # the GPU path on the CPU: frozen weights in bf16 (the engine's weight_dtype) under bf16 autocast
    dirs = {"ldm_dir": str(tmp_path / "ldm"), "temporal_dir": str(tmp_path / "tcam")}
    for stage in ("ldm", "tcam", "recon"):
        cfg = _cfg(stage, 1, **(dirs if stage == "recon" else {}))
        task = HDRVDiffTask(cfg)
        task.build(cfg, torch.device("cpu"), torch.bfloat16)
        mod = task.module()
        assert all(next(getattr(mod, n).parameters()).dtype == torch.bfloat16 for n in mod.frozen if n != "loss_fn")
        assert all(p.dtype == torch.float32 for p in mod.parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = task.training_step(mod, batch, torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in mod.parameters() if p.requires_grad)


def test_all_stages_stop_after_then_resume(manifest_path, tmp_path):
    from manifests import open_manifest

    m = open_manifest(str(manifest_path))
    cfg = copy.deepcopy(TINY)
    cfg["stages"] = {s: {"train": {"steps": 3, "checkpoint_every": 1}} for s in ("ldm", "tcam", "recon")}
    run = tmp_path / "RUN"
    res = train_all_stages(cfg, m, run, stop_after=2, progress=False)
    assert res.step == 2 and not res.exported and not (run / "tcam").exists()  # later stages wait for ldm
    res = train_all_stages(cfg, m, run, progress=False)
    assert res.step == 3 and res.exported
    assert [r["step"] for r in _metrics(run / "ldm")] == [1, 2, 3]  # ldm resumed at step 2, not restarted
    assert [r["step"] for r in _metrics(run / "recon")] == [1, 2, 3]


def test_make_task_applies_the_stage_overrides_in_place():
    from train.hdrvdiff import make_task

    cfg = {**copy.deepcopy(TINY), "stage": "recon"}
    task = make_task(cfg, None)
    assert task.stage == "recon" and cfg["train"]["steps"] == TINY["stages"]["recon"]["train"]["steps"]
    assert cfg["train"]["lr"] == TINY["train"]["lr"]  # the engine reads this same dict
    with pytest.raises(TrainError, match="stages.tcam: unknown key"):
        make_task({**copy.deepcopy(TINY), "stage": "tcam", "stages": {"tcam": {"optim": {}}}}, None)


def test_stage_errors_are_one_line():
    with pytest.raises(TrainError, match="stage recon needs model.ldm_dir"):
        build_stage("recon", stage_config(TINY, "recon"))
    with pytest.raises(TrainError, match="stage must be one of"):
        HDRVDiffTask({"stage": "all"})
    with pytest.raises(TrainError, match="unknown key"):
        build_stage("ldm", {**TINY, "model": {**TINY["model"], "unet_size": 3}})
    with pytest.raises(TrainError, match="no exported HDR-LDM U-Net"):
        build_stage("recon", _cfg("recon", 1, ldm_dir="/nonexistent", temporal_dir="/nonexistent"))
    cfg = copy.deepcopy(TINY)
    cfg["model"]["vae"] = "/nonexistent/vae"
    with pytest.raises(TrainError, match="VAE folder not found"):
        build_stage("ldm", cfg)


def test_cli_trains_all_stages_under_two_minutes_then_infers_exr(manifest_path, tmp_path, capsys):
    run = tmp_path / "RUN"
    cmd = [sys.executable, "-m", "train.run", "--manifest", str(manifest_path), "--model", "hdrvdiff",
           "--config", str(CONFIG), "--out", str(run), "--no-progress"]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    seconds = time.time() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    assert seconds < 120, seconds
    for stage, steps in (("ldm", 16), ("tcam", 16), ("recon", 8)):
        assert TINY["stages"][stage]["train"]["steps"] == steps
        rows = _metrics(run / stage)
        assert len(rows) == steps and rows[-1]["step"] == steps
    # the diffusion stage learnt something: mean eps-loss of the last quarter below the first quarter
    ldm = [r["loss"] for r in _metrics(run / "ldm")]
    assert np.mean(ldm[-4:]) < np.mean(ldm[:4]), ldm
    assert "finished at step 8" in p.stdout
    # rerunning resumes: every stage is finished, nothing is trained again (in-process: same code as the CLI)
    from manifests import open_manifest

    cfg = {**yaml.safe_load(CONFIG.read_text()), "model_name": "hdrvdiff", "stage": None,
           "manifest": str(manifest_path)}  # what train.run adds
    res = train_all_stages(cfg, open_manifest(str(manifest_path)), run, progress=False)
    assert res.step == 8 and res.resumed_from == 8
    assert len(_metrics(run / "ldm")) == 16 and len(_metrics(run / "recon")) == 8
    # inference on an alternating-exposure sequence -> HDR EXR frames
    seq = manifest_path.parents[1] / "forest" / "rotation_000" / "ldr" / "alt3_00"
    out = tmp_path / "hdr"
    infer = [sys.executable, "-m", "train.infer", "--model", "hdrvdiff", "--run", str(run), "--input", str(seq),
             "--out", str(out), "--frames", "4", "--threads", "1"]
    q = subprocess.run(infer, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert q.returncode == 0, q.stderr[-2000:]
    frames = sorted(out.glob("frame_*.exr"))
    assert [f.name for f in frames] == [f"frame_{i:04d}.exr" for i in range(4)]
    imgs = [read_image(f) for f in frames]
    assert all(i.shape == (32, 32, 3) and np.isfinite(i).all() and i.min() >= 0 for i in imgs)
    rec = json.loads((out / "hdrvdiff_infer.json").read_text())
    assert rec["exposures"] == [0.25, 1.0, 4.0, 0.25] and rec["ddim_steps"] == 10
    # existing outputs are a conflict without --overwrite; the same seed gives the same frames
    from train.hdrvdiff import infer as hv_infer

    args = hv_infer.build_parser().parse_args(infer[5:])
    assert hv_infer.main(args) == 2
    assert "exists" in capsys.readouterr().err
    args.overwrite = True
    assert hv_infer.main(args) == 0
    # (this process runs single-threaded, the CLI did not: equal up to float summation order)
    assert all(np.allclose(a, read_image(f), rtol=1e-4, atol=1e-7) for a, f in zip(imgs, frames))
    # the pipeline output is radiance: its mu-law, times e_min, is the reconstruction module's [0, 1] prediction
    from train.hdrvdiff.pipeline import HDRVDiffPipeline

    pipe = HDRVDiffPipeline.from_run(run)
    assert pipe.stage.ddim_steps == 10 and not any(p.requires_grad for p in pipe.stage.ldm.parameters())
