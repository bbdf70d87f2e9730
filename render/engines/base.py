"""The engine interface. Planning, writing, statistics and bookkeeping live in :mod:`render.job`, once, for all
engines; an engine only turns (HDRI, per-frame cameras) into float32 frames."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from render.programs import ClipPlan


class EngineError(RuntimeError):
    """The engine failed on an input that looked valid (the message says why)."""


@dataclass
class HdriSource:
    """What an engine may take: a local file holding finite, non-negative float radiance (what Cycles is given),
    and/or the pixels (float32, H x W x 3, top row first; finite, and signed where the map's negative texels are kept,
    ``negative_texels="signed"``: the engine filters them as they are and the job clamps each output pixel at 0).
    Engines say which one they need with :attr:`Engine.needs`."""

    path: Path | None
    pixels: np.ndarray | None
    width: int
    height: int


class Engine(abc.ABC):
    name: str = "?"
    needs: str = "file"  # "file" or "pixels"

    @abc.abstractmethod
    def info(self) -> dict:
        """Engine name, version and the settings that determine its output (recorded in clip.json)."""

    @abc.abstractmethod
    def load(self, source: HdriSource) -> None:
        """Prepare for a new HDRI (called once per HDRI; all its clips follow)."""

    @abc.abstractmethod
    def render(self, plan: ClipPlan, width: int, height: int, scratch: Path,
               only: set[int] | None = None) -> Iterator[np.ndarray]:
        """Yield the clip's frames in order, float32 (H, W, 3) scene-linear Rec.709 radiance, top row first; with
        ``only``, just the frames of those indices (the camera's motion still comes from the whole plan)."""

    def frame_extras(self, plan: ClipPlan, width: int, height: int) -> list[dict]:
        """Per-frame facts the engine wants recorded in clip.json (e.g. texels per pixel); empty by default."""
        return [{} for _ in plan.frames]

    def close(self) -> None:
        """Release what :meth:`load` took."""
