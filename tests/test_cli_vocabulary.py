"""One vocabulary on every command line (hdr.cli): --root, --quiet, --device auto, the Ray group, --set, --kind; the
shared stage driver run_stage; old spellings still parse; the hdrvid command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hdr import cli
from hdr.storage import Store

REPO = Path(__file__).resolve().parents[1]


def _manifests_subparsers() -> dict:
    from manifests.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    return dict(sub.choices)


def _parsers() -> dict:
    from augment.run import build_parser as augment
    from caption.run import build_parser as caption
    from evaluate.run import build_parser as evaluate
    from hdr.commands import build_parser as hdrvid
    from render.run import build_parser as render

    out = {"render": render(), "augment": augment(), "caption": caption(), "evaluate": evaluate(), "hdrvid": hdrvid()}
    out.update({f"manifests {name}": p for name, p in _manifests_subparsers().items()})
    return out


PARSERS = _parsers()
ROOT = {"render", "augment", "caption"} | {n for n in PARSERS if n.startswith("manifests ")}
QUIET = {"render", "augment", "caption", "evaluate", "manifests build", "manifests verify", "manifests export",
         "manifests report"}
DEVICE = {"render", "caption", "evaluate"}
RAY = {"render", "augment", "caption", "manifests verify"}
RAY_FLAGS = ("--no-ray", "--address", "--cpus-per-task", "--gpus-per-task", "--retries", "--max-in-flight",
             "--tasks-per-worker", "--ray-resource")


def _action(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_stage_speaks_the_same_flags(name):
    p = PARSERS[name]
    text = p.format_help()
    for flag, stages in (("--root", ROOT), ("--quiet", QUIET), ("--device", DEVICE)):
        assert (f"\n  {flag}" in text) == (name in stages), (name, flag)  # listed among the options
        assert (_action(p, flag) is not None) == (name in stages), (name, flag)
    if name in ROOT:
        assert _action(p, "--root").dest == "root"
    if name in QUIET:
        assert _action(p, "--quiet").dest == "quiet" and "--no-progress" in _action(p, "--quiet").option_strings
    if name in DEVICE:
        assert _action(p, "--device").default == "auto"
    for flag in RAY_FLAGS:
        assert (_action(p, flag) is not None) == (name in RAY), (name, flag)


def test_ray_defaults_per_stage():
    r = PARSERS["render"].parse_args([])
    assert (r.cpus_per_task, r.gpus_per_task, r.tasks_per_worker) == (None, None, 4)  # auto: fit to the nodes
    assert (r.stall_seconds, r.no_feasibility_check) == (300, False)
    a = PARSERS["augment"].parse_args(["--root", "x"])
    assert (a.cpus_per_task, a.gpus_per_task, a.tasks_per_worker, a.no_ray) == (1, 0.0, 0, False)
    c = PARSERS["caption"].parse_args(["--root", "x"])
    assert (c.cpus_per_task, c.gpus_per_task, c.tasks_per_worker, c.no_ray) == (None, None, 0, False)  # Ray: default
    opts = cli.ray_options(PARSERS["augment"].parse_args(["--root", "x", "--ray-resource", "cpu_pool", "--retries",
                                                          "5", "--max-in-flight", "3"]), retry_exceptions=[OSError])
    assert (opts.num_cpus, opts.num_gpus, opts.max_retries, opts.max_in_flight, opts.max_calls) == (1, 0, 5, 3, 0)
    assert opts.resources == {"cpu_pool": 0.01} and opts.retry_exceptions == [OSError]
    opts = cli.ray_options(PARSERS["render"].parse_args(["--stall-seconds", "7", "--no-feasibility-check"]))
    assert (opts.stall_seconds, opts.check_feasible) == (7, False)


def test_caption_cpus_per_task_default_one_model_at_a_time_on_the_cpu():
    from caption.run import caption_ray_options

    p = PARSERS["caption"]
    cpu = caption_ray_options(p.parse_args(["--root", "x"]), "cpu")
    assert (cpu.num_cpus, cpu.num_gpus) == (os.cpu_count(), 0)
    stats = caption_ray_options(p.parse_args(["--root", "x", "--backend", "stats"]), "auto")
    assert (stats.num_cpus, stats.num_gpus) == (1, 0)
    gpu = caption_ray_options(p.parse_args(["--root", "x", "--backend", "vllm", "--tensor-parallel", "2"]), "cuda")
    assert (gpu.num_cpus, gpu.num_gpus) == (1, 2)
    given = caption_ray_options(p.parse_args(["--root", "x", "--cpus-per-task", "3", "--gpus-per-task", "0.5"]),
                                "cuda")
    assert (given.num_cpus, given.num_gpus) == (3, 1)  # at least --tensor-parallel GPUs for one model


def test_old_spellings_parse_to_the_new_names():
    r = PARSERS["render"].parse_args(["--out", "somewhere", "--no-progress"])
    assert r.root == "somewhere" and r.quiet
    assert PARSERS["render"].parse_args([]).root == "renders"
    a = PARSERS["augment"].parse_args(["--dataset", "d", "--alternating", "3"])
    assert a.root == "d" and a.kind == "alt3"
    assert PARSERS["augment"].parse_args(["--root", "d", "--kind", "alt2"]).kind == "alt2"
    assert PARSERS["augment"].parse_args(["--root", "d"]).kind == "single"
    with pytest.raises(SystemExit):
        PARSERS["augment"].parse_args(["--root", "d", "--alternating", "4"])
    c = PARSERS["caption"].parse_args(["--dataset", "d", "--model", "some/ckpt", "--gpus-per-worker", "2", "--ray"])
    assert (c.root, c.weights, c.gpus_per_task, c.no_ray) == ("d", "some/ckpt", 2.0, False)
    assert PARSERS["caption"].parse_args(["--root", "d", "--weights", "w"]).weights == "w"
    e = PARSERS["manifests export"].parse_args(["--root", "d", "v1", "--format", "webdataset", "--aug-kind", "alt2"])
    assert e.kind == "alt2" and not e.quiet
    ev = PARSERS["evaluate"].parse_args(["--reference", "g", "--predictions", "p", "--out", "o", "--clipiqa-model",
                                         "clip/"])
    assert ev.clipiqa_weights == "clip/" and ev.device == "auto"


def test_augment_overrides_use_the_shared_set_parser():
    from augment.run import parse_overrides

    assert parse_overrides(["rho=0.7", "sigma_s_range=[0, 0.01]", "noise-probability=1"]) == (
        ("rho", 0.7), ("sigma_s_range", (0, 0.01)), ("noise_probability", 1))
    for bad, words in (("sigma=3", "FIELD one of"), ("rho", "expected KEY=VALUE"), ("rho=[1,", "not valid YAML"),
                       ("a.rho=1", "FIELD one of")):
        with pytest.raises(ValueError, match=words):
            parse_overrides([bad])


# --- resolver and parsers ----------------------------------------------------------------------------------------
def test_resolve_device_accepts_auto_and_cpu():
    import torch

    assert cli.resolve_device("cpu") == "cpu" and cli.resolve_device(" CPU ") == "cpu"
    assert cli.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cli.resolve_device("optix", extra=("optix",)) == "optix"


@pytest.mark.parametrize("spec, words", [("cuda:1", "torch sees"), ("gpu0", "unknown device"), ("cuda:x", "cuda:N")])
def test_resolve_device_errors_are_one_line(spec, words, no_cuda):
    with pytest.raises(cli.CliError) as e:
        cli.resolve_device(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--device {spec}:") and words in msg


def test_check_device_checks_the_spelling_only():
    assert cli.check_device("CUDA:3") == "cuda:3" and cli.check_device("auto") == "auto"
    assert cli.check_device("metal", extra=("metal",)) == "metal"
    with pytest.raises(cli.CliError, match="unknown device"):
        cli.check_device("gpu0")


@pytest.mark.parametrize("argv, words", [(["--device", "gpu0"], "unknown device"),
                                         (["--device", "cuda:7"], "cuda:7")])
def test_stage_device_errors_are_one_line_exit_2(argv, words, tmp_path, capsys, no_cuda):
    from caption.run import main as caption_main
    from evaluate.run import main as evaluate_main

    assert caption_main(["--root", str(tmp_path), "--no-ray", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device") and words in err[0]
    assert evaluate_main(["--reference", str(tmp_path), "--predictions", str(tmp_path), "--out",
                          str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device") and words in err[0]


def test_render_device_error_is_one_line(tmp_path, capsys):
    from render.run import main as render_main

    assert render_main(["--hdris", str(tmp_path), "--device", "gpu0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device gpu0: unknown device (expected one of auto, cpu, cuda, cuda:N, mps, optix, hip, "
                   "oneapi, metal)"]


def test_parse_set_good_and_bad_items():
    assert cli.parse_set(["a.b=1", "rho=0.7", "r=[0, 0.01]", "name=paper", "flag-x=true", "e="]) == [
        ("a.b", 1), ("rho", 0.7), ("r", [0, 0.01]), ("name", "paper"), ("flag_x", True), ("e", None)]
    assert cli.parse_set(None) == []
    for bad in ("rho", "=1", "a..b=1", "r=[1,"):
        with pytest.raises(cli.CliError) as e:
            cli.parse_set([bad])
        assert "\n" not in str(e.value) and str(e.value).startswith(f"--set {bad!r}")


# --- run_stage ---------------------------------------------------------------------------------------------------
class SetupError(RuntimeError):
    pass


def _task(x):
    if x == "setup":
        raise SetupError("no model here\n(second line)")
    if x == "ctrl-c":
        raise KeyboardInterrupt
    if isinstance(x, int) and x < 0:
        raise ValueError(f"cannot take {x}")
    return {"written": x}


def _run(tmp_path, tasks, **kw) -> cli.StageRun:
    return cli.StageRun(
        stage="demo", fn=_task, tasks=tasks, store=Store(str(tmp_path)), argv=["--root", str(tmp_path)],
        on_result=lambda t, v: cli.Tally(counts={"written": v["written"]}, units=v["written"]),
        on_error=lambda t, m: cli.Tally(counts={"failed": 1}, problems=[f"{t}: {m}"], say=[f"failed: {t}: {m}"]),
        counts={"written": 0, "skipped": 2, "failed": 0}, summary="wrote {written}, {skipped} done, {failed} failed",
        record={"settings": {"a": 1}}, **kw)


def _records(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "_runs").glob("demo-*.json"))]


def test_run_stage_counts_and_records_the_run(tmp_path, capsys):
    assert cli.run_stage(_run(tmp_path, [1, 2, 3]), use_ray=False, quiet=True) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["wrote 6, 2 done, 0 failed"]  # --quiet: no progress bar, only the summary
    (rec,) = _records(tmp_path)
    assert rec["counts"] == {"written": 6, "skipped": 2, "failed": 0} and rec["failures"] == []
    assert rec["settings"] == {"a": 1} and rec["command"] == ["python", "-m", "demo.run", "--root", str(tmp_path)]


def test_run_stage_records_a_failing_task_and_exits_1(tmp_path, capsys):
    seen = []
    run = _run(tmp_path, [1, -2, 3], problems_field="problems", total=10,
               finish=lambda record, problems: seen.append((record["started"], problems)) or " -- see there")
    assert cli.run_stage(run, use_ray=False) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "failed: -2: ValueError: cannot take -2" in err
    assert err[-1] == "wrote 4, 2 done, 1 failed -- see there"
    (rec,) = _records(tmp_path)
    assert rec["counts"]["failed"] == 1 and rec["problems"] == ["-2: ValueError: cannot take -2"]
    assert seen and seen[0][1] == rec["problems"]


def test_run_stage_problems_known_before_the_run_give_exit_1(tmp_path):
    assert cli.run_stage(_run(tmp_path, [], problems=["a/b: conflict"]), use_ray=False, quiet=True) == 1
    assert _records(tmp_path)[0]["failures"] == ["a/b: conflict"]


def test_run_stage_fatal_exception_is_one_line_exit_2(tmp_path, capsys):
    assert cli.run_stage(_run(tmp_path, [1, "setup", 3], fatal=(SetupError,)), use_ray=False, quiet=True) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: no model here (second line)"]
    assert not (tmp_path / "_runs").exists()
    # without fatal, the same exception is one recorded failure among the results
    assert cli.run_stage(_run(tmp_path, [1, "setup", 3]), use_ray=False, quiet=True) == 1


def test_run_stage_ctrl_c_keeps_the_work_and_exits_130(tmp_path, capsys):
    assert cli.run_stage(_run(tmp_path, [1, "ctrl-c", 3]), use_ray=False, quiet=True) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == cli.INTERRUPTED
    assert not (tmp_path / "_runs").exists()


def test_run_stage_with_ray_raises_a_fatal_cause(tmp_path, capsys):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests package
    ray.init(address="local", num_cpus=1, object_store_memory=80 * 1024**2, include_dashboard=False,
             logging_level="ERROR")
    try:
        opts = cli.ray_options(PARSERS["augment"].parse_args(["--root", "x", "--retries", "0"]))
        assert cli.run_stage(_run(tmp_path, [1, -2]), use_ray=True, opts=opts, quiet=True) == 1
        assert _records(tmp_path)[0]["counts"] == {"written": 1, "skipped": 2, "failed": 1}
        run = _run(tmp_path, ["setup"], fatal=(SetupError,))
        assert cli.run_stage(run, use_ray=True, opts=opts, quiet=True) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == "error: no model here (second line)"
    finally:
        ray.shutdown()


# --- hdrvid ------------------------------------------------------------------------------------------------------
def _hdrvid(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).with_name("hdrvid")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hdr.commands"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_hdrvid_lists_the_stages():
    from hdr.commands import STAGES

    r = _hdrvid("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: hdrvid")
    for name in ("render", "augment", "caption", "manifests", "train", "infer", "evaluate"):
        assert name in STAGES and f"\n  {name} " in r.stdout
    assert _hdrvid().returncode == 2
    r = _hdrvid("paint")
    assert r.returncode == 2 and "invalid choice: 'paint'" in r.stderr


def test_hdrvid_stage_help_is_the_stage_help():
    r = _hdrvid("augment", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: hdrvid augment ") and "--root ROOT, --dataset ROOT" in r.stdout
    r = _hdrvid("manifests", "export", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: hdrvid manifests export "), r.stderr


def test_hdrvid_runs_a_stage_and_passes_its_exit_code(tmp_path):
    r = _hdrvid("augment", "--root", str(tmp_path), "--no-ray")
    assert r.returncode == 2 and "no rendered clips" in r.stderr


def test_hdr_does_not_import_the_stages():
    code = ("import sys, hdr.commands, hdr.cli; "
            "print([m for m in sys.modules if m.split('.')[0] in ('render', 'augment', 'caption', 'manifests', "
            "'train', 'evaluate')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_resolve_device_counts_the_gpus_torch_sees(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.resolve_device("auto") == "cuda" and cli.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(cli.CliError, match=r"--device cuda:1: torch sees 1 CUDA device\(s\), numbered from 0"):
        cli.resolve_device("cuda:1")
