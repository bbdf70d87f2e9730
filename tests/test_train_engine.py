"""The shared training engine (train/engine.py) with a trivial task: optimisation, run folder, checkpoints with
retention, exact resume (weights, optimizer, RNG, data position), clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from train.engine import ResumableSampler, TrainError, list_checkpoints, load_config, train


class ToyData(torch.utils.data.Dataset):
    """y = x @ w_true + epoch-dependent offset (so set_epoch matters); items remember their index."""

    def __init__(self, n=10):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.epoch = 0
        self.epochs_seen = []

    def set_epoch(self, e):
        self.epoch = e
        self.epochs_seen.append(e)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.x[i] @ self.w, "index": i}


class ToyTask:
    """A frozen linear 'backbone' plus a trainable head. The step draws noise from the step generator AND from the
    global torch RNG, so an inexact resume (generator or RNG state) changes the weights."""

    name = "toy"

    def __init__(self, n=10, nan_at=None):
        self.n, self.nan_at = n, nan_at
        self.seen: list[int] = []
        self.exported = None
        self.gc = False

    def build(self, config, device, weight_dtype):
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).to(device)
        self.net[0].requires_grad_(False)
        self.data = ToyData(self.n)
        self.calls = 0

    def module(self):
        return self.net

    def dataset(self):
        return self.data

    def enable_gradient_checkpointing(self):
        self.gc = True

    def training_step(self, model, batch, generator):
        self.calls += 1
        self.seen += batch["index"].tolist()
        x = batch["x"] + 0.01 * torch.randn(batch["x"].shape, generator=generator) + 0.001 * torch.randn(
            batch["x"].shape)
        loss = torch.nn.functional.mse_loss(model(x), batch["y"])
        if self.nan_at is not None and self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "extra": torch.tensor(2.0)}

    def export(self, run_dir, state):
        from safetensors.torch import save_file

        run_dir.mkdir(parents=True, exist_ok=True)
        save_file(state, run_dir / "head.safetensors")
        self.exported = state
        return [str(run_dir / "head.safetensors")]


class FakeManifest:
    def record(self, run_dir):
        (Path(run_dir) / "manifest.json").write_text(json.dumps({"version": "v0001", "root_hash": "abc"}))


def cfg(**train):
    base = dict(steps=4, batch_size=2, lr=0.05, checkpoint_every=2, checkpoints_keep=2, seed=3)
    base.update(train)
    return {"model": {"kind": "toy"}, "train": base}


def test_trains_run_folder_and_frozen_weights(tmp_path):
    task = ToyTask()
    res = train(task, cfg(steps=6, gradient_checkpointing=True, export_every=4), tmp_path / "run", device="cpu",
                manifest=FakeManifest(), progress=False)
    run = tmp_path / "run"
    assert res.step == 6 and res.resumed_from is None and task.gc
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6
    assert json.loads((run / "manifest.json").read_text())["version"] == "v0001"
    env = json.loads((run / "env.json").read_text())
    assert env["task"] == "toy" and env["trainable_parameters"] == 5 and env["module_parameters"] == 25
    assert env["mixed_precision"] == "no" and env["device"] == "cpu"
    assert list((run / "logs").glob("events.out.tfevents.*"))
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["extra"] == 2.0 and r["lr"] == 0.05 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]          # it learns
    # frozen layer untouched, head changed, export = the head
    torch.manual_seed(1)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    assert torch.equal(task.net[0].weight, ref[0].weight) and torch.equal(task.net[0].bias, ref[0].bias)
    assert not torch.equal(task.net[1].weight, ref[1].weight)
    assert set(task.exported) == {"1.weight", "1.bias"}
    assert torch.equal(task.exported["1.weight"], task.net[1].weight)
    assert [p.name for p in sorted((run / "exports").iterdir())] == ["step_0000004"]   # export_every
    assert (run / "exports" / "step_0000004" / "head.safetensors").is_file()
    # retention: checkpoints at 2, 4, 6, keep 2
    assert [p.name for p in list_checkpoints(run)] == ["step_0000004", "step_0000006"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    # 6 steps x 2 items from 10 items: epoch 0 is a permutation of all 10 (batch 2, drop_last), epoch 1 starts
    assert sorted(task.seen[:10]) == list(range(10)) and task.data.epochs_seen == [0, 1]


def test_exact_resume(tmp_path):
    full = ToyTask()
    train(full, cfg(steps=7), tmp_path / "full", device="cpu", progress=False)
    part = ToyTask()
    r1 = train(part, cfg(steps=7), tmp_path / "part", device="cpu", stop_after=3, progress=False)
    assert r1.step == 3 and r1.exported == [] and not (tmp_path / "part" / "head.safetensors").exists()
    torch.rand(1000)  # disturb the global RNG: the resume must restore it from the checkpoint
    again = ToyTask()
    r2 = train(again, cfg(steps=7), tmp_path / "part", device="cpu", progress=False)
    assert r2.resumed_from == 3 and r2.step == 7
    assert again.seen == full.seen[6:]                  # data position: continues mid-epoch with the same order
    assert part.seen + again.seen == full.seen
    for k in full.exported:
        assert torch.equal(full.exported[k], again.exported[k]), k
    a = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # a finished run rerun with a larger budget continues; with the same budget it does nothing new
    more = ToyTask()
    r3 = train(more, cfg(steps=8), tmp_path / "full", device="cpu", progress=False)
    assert r3.resumed_from == 7 and r3.step == 8 and len(more.seen) == 2


def test_resume_without_rng_state_differs(tmp_path):
    """The resume test can fail: without the checkpoint's RNG states the resumed weights differ; without its
    optimizer state the resume is refused with a one-line error naming the checkpoint."""
    c = cfg(steps=4, checkpoint_every=1, checkpoints_keep=5)
    full = ToyTask()
    train(full, c, tmp_path / "full", device="cpu", progress=False)
    for name in ("norng", "noopt"):
        train(ToyTask(), c, tmp_path / name, device="cpu", stop_after=2, progress=False)
    ck = tmp_path / "norng" / "checkpoints" / "step_0000002"
    (ck / "random_states_0.pkl").unlink()
    torch.rand(1000)
    again = ToyTask()
    train(again, c, tmp_path / "norng", device="cpu", progress=False)
    assert not torch.equal(full.exported["1.weight"], again.exported["1.weight"])
    for f in (tmp_path / "noopt" / "checkpoints" / "step_0000002").glob("optimizer*"):
        f.unlink()
    with pytest.raises(TrainError, match="step_0000002: cannot resume"):
        train(ToyTask(), c, tmp_path / "noopt", device="cpu", progress=False)


def test_errors(tmp_path):
    train(ToyTask(), cfg(steps=1), tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(TrainError, match="different config"):
        train(ToyTask(), {**cfg(steps=1), "model": {"kind": "other"}}, tmp_path / "run", device="cpu",
              progress=False)
    r = train(ToyTask(), {**cfg(steps=1), "model": {"kind": "other"}}, tmp_path / "run", device="cpu",
              overwrite=True, progress=False)
    assert r.resumed_from is None
    # a larger budget, another cadence or a cache switch is not a conflict: the run continues
    r = train(ToyTask(), {**cfg(steps=2, checkpoint_every=1), "model": {"kind": "other"},
                          "data": {"cache_latents": True}}, tmp_path / "run", device="cpu", progress=False)
    assert r.resumed_from == 1 and r.step == 2
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "precious.txt").write_text("x")
    with pytest.raises(TrainError, match="not a run folder"):
        train(ToyTask(), cfg(), tmp_path / "notrun", device="cpu", overwrite=True, progress=False)
    assert (tmp_path / "notrun" / "precious.txt").exists()
    with pytest.raises(TrainError, match="non-finite loss"):
        train(ToyTask(nan_at=2), cfg(), tmp_path / "nan", device="cpu", progress=False)
    with pytest.raises(TrainError, match="unknown key"):
        train(ToyTask(), cfg(stepz=3), tmp_path / "bad", device="cpu", progress=False)
    with pytest.raises(TrainError, match="needs a GPU"):
        train(ToyTask(), cfg(mixed_precision="bf16"), tmp_path / "bf", device="cpu", progress=False)
    with pytest.raises(TrainError, match="fewer than batch_size"):
        train(ToyTask(n=1), cfg(), tmp_path / "small", device="cpu", progress=False)


def test_sampler_shards_and_skips():
    s = [ResumableSampler(10, 7, rank=r, world=3) for r in range(3)]
    shares = [list(x) for x in s]
    assert all(len(x) == 3 for x in shares) and len(set(sum(shares, []))) == 9
    s[0].set_position(0, 2)
    assert list(s[0]) == shares[0][2:]
    s[0].set_position(1, 0)
    assert list(s[0]) != shares[0]          # a new epoch is a new permutation


def test_load_config_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {steps: 5}\nmodel: {rank: 4}\n")
    c = load_config(p, ["train.steps=2", "model.targets=[a, b]", "data.window=9"])
    assert c == {"train": {"steps": 2}, "model": {"rank": 4, "targets": ["a", "b"]}, "data": {"window": 9}}
    with pytest.raises(TrainError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(TrainError, match="mapping"):
        load_config(tmp_path / "bad.yaml")


def test_offloaded_activations_give_the_same_training(tmp_path, monkeypatch):
    """train.offload_activations keeps autograd's saved tensors in CPU memory: the same weights, and the tensors
    really go through the offload hooks."""
    packed = []
    real = torch.autograd.graph.save_on_cpu

    class Spy(real):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory=pin_memory, device_type=device_type)
            pack = self.pack_hook

            def counting_pack(t):
                packed.append(tuple(t.shape))
                return pack(t)

            self.pack_hook = counting_pack

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Spy)
    plain, off = ToyTask(), ToyTask()
    train(plain, cfg(steps=3), tmp_path / "plain", device="cpu", progress=False)
    assert not packed
    train(off, cfg(steps=3, offload_activations=True), tmp_path / "off", device="cpu", progress=False)
    assert len(packed) >= 3  # at least one saved tensor per step went through the hook
    for k in plain.exported:
        assert torch.equal(plain.exported[k], off.exported[k]), k
