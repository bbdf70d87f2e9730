"""Render engines behind one small interface (:class:`render.engines.base.Engine`)."""
from __future__ import annotations

from render.engines.base import Engine, EngineError, HdriSource

ENGINES = ("blender", "direct")


def get_engine(name: str, **options) -> Engine:
    """Instantiate an engine by name; imports its heavy dependencies only here, inside the worker."""
    if name == "blender":
        from render.engines.blender import BlenderEngine

        return BlenderEngine(**options)
    if name == "direct":
        from render.engines.direct import DirectEngine

        return DirectEngine(**options)
    raise ValueError(f"unknown render engine {name!r}; choose from {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "EngineError", "HdriSource", "get_engine"]
