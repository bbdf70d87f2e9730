"""Checking parsed JSON/YAML values against simple type annotations, for the typed records (``hdr.dataset.records``)
and the typed run-config sections (``train.engine.ConfigSection``): one checker, each caller words its own error.

Supported: ``Any``, ``None``, ``bool``, ``int`` (not bool), ``float`` (an int is one too), ``str``, ``dict``,
``list``/``tuple`` (either, as YAML and JSON give lists) optionally with an element type, and unions ``X | Y``.
Values are never converted.
"""
from __future__ import annotations

import types
import typing
from typing import Any


def type_name(tp) -> str:
    """``int``, ``str or null``, ``list[float]``: a type as a message names it."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_args(tp):
        return f"{typing.get_origin(tp).__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def union_args(tp) -> tuple | None:
    """The members of a union annotation, else None."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else None


def is_a(value, tp) -> bool:
    """Whether ``value`` has the annotated type ``tp`` (elements of a typed list included)."""
    if tp is Any:
        return True
    members = union_args(tp)
    if members is not None:
        return any(is_a(value, a) for a in members)
    if tp is type(None) or tp is None:
        return value is None
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(is_a(v, args[0]) for v in value))
    return isinstance(value, origin)


def first_mismatch(value, tp, where: str) -> tuple[str, Any, Any] | None:
    """None if ``value`` fits ``tp``; else ``(where, value, type)`` of the first part that does not (``where[3]`` for
    the fourth element of a typed list), for a message that names the exact field."""
    if is_a(value, tp):
        return None
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (list, tuple)) and args and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if not is_a(v, args[0]):
                return first_mismatch(v, args[0], f"{where}[{i}]")
    return where, value, tp
