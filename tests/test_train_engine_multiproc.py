"""The engine with 2 processes (torchrun, gloo DDP on the CPU): each process trains on its own shard of every epoch,
checkpoints hold every process's RNG state, and a 2-process resume gives the same weights as an uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = '''
import json, os, sys, torch
sys.path.insert(0, {tests!r})
from test_train_engine import ToyTask, cfg
from train.engine import train
task = ToyTask(n=12)
stop = None if sys.argv[2] == "none" else int(sys.argv[2])
r = train(task, cfg(steps=5, checkpoint_every=1), sys.argv[1], device="cpu", stop_after=stop, progress=False)
rank = int(os.environ["RANK"])
with open(sys.argv[1] + f"/seen_{{rank}}_{{sys.argv[2]}}.json", "w") as f:
    json.dump({{"seen": task.seen, "step": r.step, "resumed": r.resumed_from,
               "w": task.net[1].weight.flatten().tolist()}}, f)
'''


def torchrun(script: Path, run: Path, stop: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000), str(script), str(run), stop], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


def test_two_processes_shard_and_resume_exactly(tmp_path):
    script = tmp_path / "toy_run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    torchrun(script, tmp_path / "full", "none")
    torchrun(script, tmp_path / "part", "2")
    torchrun(script, tmp_path / "part", "none")
    load = lambda p: json.loads(p.read_text())  # noqa: E731
    f0, f1 = load(tmp_path / "full" / "seen_0_none.json"), load(tmp_path / "full" / "seen_1_none.json")
    # 12 items, 2 processes, batch 2: each epoch a process sees 6 items (3 batches), the two shares are disjoint
    assert f0["step"] == f1["step"] == 5 and f0["resumed"] is None
    assert not set(f0["seen"][:6]) & set(f1["seen"][:6]) and len(set(f0["seen"][:6]) | set(f1["seen"][:6])) == 12
    assert f0["w"] == f1["w"]                       # DDP keeps the replicas identical
    p0a, p0b = load(tmp_path / "part" / "seen_0_2.json"), load(tmp_path / "part" / "seen_0_none.json")
    p1a, p1b = load(tmp_path / "part" / "seen_1_2.json"), load(tmp_path / "part" / "seen_1_none.json")
    assert p0b["resumed"] == 2 and p0b["step"] == 5
    assert p0a["seen"] + p0b["seen"] == f0["seen"] and p1a["seen"] + p1b["seen"] == f1["seen"]
    assert p0b["w"] == f0["w"]                      # bit-identical weights after the 2-process resume
    ck = sorted((tmp_path / "full" / "checkpoints").iterdir())[-1]
    assert (ck / "random_states_0.pkl").is_file() and (ck / "random_states_1.pkl").is_file()
    env = json.loads((tmp_path / "full" / "env.json").read_text())
    assert env["processes"] == 2 and "MULTI_CPU" in env["distributed"]
    losses = [json.loads(l)["loss"] for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
