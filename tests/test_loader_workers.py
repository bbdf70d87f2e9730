"""Loader workers for the on-the-fly LDR (issue 17): ``train.num_workers: auto`` runs the CPU-only steps of a preset
in persistent, seeded DataLoader workers, says so in one line, warns when a GPU run forces 0, and the batches are
byte-identical for any number of workers (every draw comes from derive_seed(seed, clip key, ...))."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hdr.dataset.loader import ClipWindowDataset, collate_windows, seed_worker, worker_plan
from hdr.degrade.presets import PRESETS
from train.engine import ResumableSampler, TrainConfig, TrainError, build_loader, train

V1 = Path(__file__).parent / "fixtures" / "dataset_v1"
CLIP = "sunrise/highlight_zoom_in"
# a cheap preset with one CPU-only step (Pillow's JPEG)
JPEG = dataclasses.replace(PRESETS["paper"], name="cam-jpeg", steps=({"step": "jpeg", "quality": [30, 90]},))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """4 one-clip HDRIs (the v1 fixture's 3 frames of 16x8, renamed h0..h3), all in the train split."""
    from hdr.dataset import open_manifest
    from manifests.build import build

    root = tmp_path_factory.mktemp("workers") / "data"
    for i in range(4):
        clip = root / f"h{i}" / "highlight_zoom_in"
        shutil.copytree(V1 / CLIP, clip, ignore=shutil.ignore_patterns("ldr", "caption.json"))
        rec = json.loads((clip / "clip.json").read_text())
        rec["hdri_id"] = f"h{i}"
        (clip / "clip.json").write_text(json.dumps(rec, indent=1) + "\n")
    res = build(str(root), test="0", progress=False)
    assert not res.record["problems"], res.record["problems"]
    return open_manifest(str(root), res.version)


def dataset(m, preset=JPEG, **kw):
    return ClipWindowDataset(m, "train", window=2, ldr="augment", preset=preset, seed=5, **kw)


def batches(ds, num_workers: int, epochs=(0, 1)) -> list[dict]:
    """Every batch of ``epochs`` as the engine iterates them (set_epoch on the main copy, the sampler's position)."""
    sampler = ResumableSampler(len(ds), seed=3)
    loader = build_loader(ds, sampler, 2, num_workers, collate_windows, torch.Generator(), worker_seed=1)
    out = []
    for e in epochs:
        ds.set_epoch(e)
        sampler.set_position(e, 0)
        out += list(loader)
    return out


def test_auto_runs_cpu_only_steps_in_workers_and_batches_do_not_depend_on_them(manifest):
    plan = worker_plan(dataset(manifest), "auto", "cpu", batches=2)
    assert plan.cpu_steps == ("jpeg",) and plan.num_workers >= 1
    ref, two = batches(dataset(manifest), 0), batches(dataset(manifest), 2)
    assert len(ref) == len(two) == 4
    for a, b in zip(ref, two):
        assert a["key"] == b["key"] and a["start"] == b["start"] and a["params"] == b["params"]
        for k in ("hdr", "ldr", "over", "under", "exposures"):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert all(p["steps"][0]["step"] == "jpeg" for b in ref for p in b["params"])
    # epoch 1 drew new parameters in the persistent workers too (the epoch travels with each index)
    seeds = [{p["seed"] for p in b["params"]} for b in two]
    assert (seeds[0] | seeds[1]).isdisjoint(seeds[2] | seeds[3])


def test_auto_is_zero_without_cpu_only_steps(manifest):
    paper = worker_plan(dataset(manifest, "paper"), "auto", "cuda")
    assert (paper.num_workers, paper.cpu_steps, paper.message(), paper.warning()) == (0, (), None, None)
    stored = dataset(manifest)
    stored.ldr = "stored"  # read from PNGs: no step runs in the loader
    assert stored.cpu_only_steps() == [] and worker_plan(stored, "auto", "cuda").num_workers == 0
    assert worker_plan(torch.utils.data.TensorDataset(torch.zeros(3)), "auto").num_workers == 0
    assert worker_plan(dataset(manifest, "paper"), 3).num_workers == 3  # a number is used as given


def test_the_log_line_and_the_warning_for_zero_workers_on_a_gpu(manifest):
    video = dataset(manifest, "realistic-video")  # nothing is loaded: no codec runs here
    assert worker_plan(video, 2, "cuda").message() == \
        "augment preset realistic-video: steps video run on the CPU in 2 loader workers"
    auto = worker_plan(video, "auto", "cuda", batches=8, processes=1)
    assert auto.num_workers >= 1 and auto.warning() is None
    assert auto.message().endswith(f"in {auto.num_workers} loader worker" + "s" * (auto.num_workers > 1))
    forced = worker_plan(video, 0, "cuda:0")
    assert forced.message() == "augment preset realistic-video: steps video run on the CPU in the training process " \
                               "(num_workers 0)"
    w = forced.warning()
    assert "\n" not in w and "video (the codec) will run in the training process" in w and "auto" in w
    assert worker_plan(video, 0, "cpu").warning() is None  # on the CPU there is nothing to stall
    assert worker_plan(video, "auto", "cuda", batches=1).num_workers == 1  # never more workers than batches
    assert worker_plan(video, "auto", "cuda", processes=64).num_workers == 1  # at least one


def test_items_draw_nothing_from_the_global_rngs(manifest):
    def item(s):
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        return dataset(manifest)[1]

    a, b = item(1), item(2)
    assert torch.equal(a["ldr"], b["ldr"]) and a["params"] == b["params"] and a["start"] == b["start"]
    seed_worker(7, 1)
    x = (random.random(), np.random.random(), torch.rand(1).item())
    seed_worker(7, 1)
    assert x == (random.random(), np.random.random(), torch.rand(1).item())


def test_num_workers_config():
    assert TrainConfig.from_dict({}).num_workers == "auto"
    assert TrainConfig.from_dict({"num_workers": 2}).num_workers == 2
    for bad in ("four", -1):
        with pytest.raises(TrainError, match="train.num_workers must be auto or an integer >= 0"):
            TrainConfig.from_dict({"num_workers": bad})


class WindowTask:
    """A one-parameter model on ClipWindowDataset batches (the engine's loader path, nothing else)."""

    name = "windows"

    def __init__(self, ds):
        self.ds = ds

    def build(self, config, device, weight_dtype):
        self.net = torch.nn.Linear(1, 1)

    def module(self):
        return self.net

    def dataset(self):
        return self.ds

    def collate(self, items):
        return collate_windows(items)

    def training_step(self, model, batch, generator):
        return {"loss": (model(batch["ldr"].mean().view(1, 1)) - 0.5).pow(2).sum()}

    def export(self, run_dir, state):
        return []


def test_the_engine_says_where_the_steps_run_and_records_it(manifest, tmp_path, capsys):
    ds = dataset(manifest)
    expected = worker_plan(ds, "auto", "cpu", batches=2)
    cfg = {"train": {"steps": 3, "batch_size": 2, "checkpoint_every": 10, "seed": 1}}
    res = train(WindowTask(ds), cfg, tmp_path / "run", device="cpu", progress=False)
    assert res.step == 3  # two epochs of two batches
    err = capsys.readouterr().err
    assert err.count("augment preset cam-jpeg: steps jpeg run on the CPU in ") == 1
    assert expected.message() in err and "warning" not in err
    rec = json.loads((tmp_path / "run" / "env.json").read_text())["loader"]
    assert rec["num_workers"] == expected.num_workers >= 1 and rec["requested"] == "auto"
    assert rec["cpu_only_steps"] == ["jpeg"] and rec["persistent_workers"] is True


def test_content_dependent_exposure_on_the_fly_uses_the_window(manifest):
    """hdrcnn's exposure is computed on what the loader reads: the window's frames."""
    from hdr.degrade.presets import clip_fraction_exposure

    ds = dataset(manifest, preset="hdrcnn")
    item = ds[0]
    exp = item["params"]["exposure"]
    assert exp["mode"] == "clip_fraction" and 0.05 <= exp["target_fraction"] <= 0.15
    stops, _ = clip_fraction_exposure(item["hdr"].numpy(), exp["target_fraction"], "values")
    assert item["params"]["exposure_stops"] == pytest.approx(stops)
