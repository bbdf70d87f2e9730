"""HDR-V-Diff (Guan et al., ICLR 2024) trainer: HDR-LDM, TCAM + temporal decoder, ZiCA reconstruction.

    python -m train.run --manifest M --model hdrvdiff --stage ldm|tcam|recon --config C.yaml --run RUN
    python -m train.run --manifest M --model hdrvdiff --config C.yaml --run RUN    # all three stages in order
    python -m train.infer --model hdrvdiff --run RUN --input CLIP/ldr/alt3_00 --out OUT

Modules (one model per file): embeddings (eq. 4), maxvit, unet (HDR-LDM denoiser), ldm (VAE + eq. 5 + DDIM),
tcam, temporal_decoder (Restormer), temporal (TCAM + decoder), zica (eq. 6), recon, losses (eq. 7), data (eq. 1
inputs), stages (engine tasks), pipeline (inference), infer (CLI).
"""
from __future__ import annotations

import copy
from pathlib import Path

from train.hdrvdiff.stages import STAGES, HDRVDiffTask


def stage_config(config: dict, stage: str) -> dict:
    """``config`` with ``stages.<stage>.train`` merged over ``train`` (e.g. a different step budget per stage)."""
    cfg = copy.deepcopy(config)
    over = ((cfg.get("stages") or {}).get(stage) or {})
    unknown = sorted(set(over) - {"train", "model", "data"})
    if unknown:
        from train.engine import TrainError

        raise TrainError(f"config stages.{stage}: unknown key(s) {', '.join(unknown)}; allowed: train, model, data")
    for section in ("train", "model", "data"):
        if over.get(section):
            part = dict(over[section])
            if section == "data":  # an old spelling of the kind in the override replaces the base's kind
                from train.engine import upgrade_kind

                part = upgrade_kind(part, f"stages.{stage}.data")
            cfg[section] = {**(cfg.get(section) or {}), **part}
    cfg["stage"] = stage
    return cfg


def make_task(config: dict, manifest) -> HDRVDiffTask:
    """The engine task of ``config["stage"]`` (``--stage``); the stage's overrides are applied to ``config`` in place
    (the engine reads the same dict)."""
    resolved = stage_config(config, config.get("stage") or "")
    config.clear()
    config.update(resolved)
    return HDRVDiffTask(config, manifest)


def train_all_stages(config: dict, manifest, out, **train_kwargs):
    """Stages ldm, tcam and recon one after the other into OUT/ldm, OUT/tcam, OUT/recon (recon loads the other two
    exports). Each stage folder is a normal run folder: rerunning resumes the unfinished stage."""
    from train.engine import TrainConfig, train

    out = Path(out)
    res = None
    for stage in STAGES:
        cfg = stage_config(config, stage)
        if stage == "recon":
            cfg.setdefault("model", {})
            cfg["model"]["ldm_dir"] = cfg["model"].get("ldm_dir") or str(out / "ldm")
            cfg["model"]["temporal_dir"] = cfg["model"].get("temporal_dir") or str(out / "tcam")
        res = train(HDRVDiffTask(cfg, manifest), cfg, out / stage, manifest=manifest, **train_kwargs)
        if res.step < TrainConfig.from_dict(cfg.get("train")).steps:  # stopped early (--stop-after): the later
            break                                                      # stages need this one's export
    return res


__all__ = ["make_task", "train_all_stages", "stage_config", "HDRVDiffTask", "STAGES"]
