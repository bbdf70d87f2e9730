"""Turn a VLM's reply into validated ``overexposed`` / ``underexposed`` / ``scene`` fields, and render the structured
caption of DiffHDR §3.4.2: ``[overexposed: <description>]; [underexposed: <description>]``.

Models wrap JSON in markdown fences, add a sentence before or after it, use Python-style single quotes, leave a
trailing comma or a ``<think>`` block: :func:`parse_reply` accepts those and rejects everything that is not an object
with two non-empty string descriptions, raising :class:`CaptionFormatError` with a one-line reason (which the retry
prompt quotes back to the model).
"""
from __future__ import annotations

import ast
import json
import re

from hdr.dataset.records import caption_text

MAX_DESCRIPTION_CHARS = 600  # a degenerate, repeating generation is rejected (and retried), not stored
NONE_WORDS = {"none", "n/a", "na", "nothing", "null", "no", "-", "no region", "no regions"}
PLACEHOLDERS = {"...", "<description>", "description", "<o>", "<u>", "<s>", "string", "<string>"}


class CaptionFormatError(ValueError):
    """The model's reply is not a usable caption object (the message says why, in one line)."""


render_caption = caption_text  # the structured caption string of DiffHDR §3.4.2 (the contract's format)


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _candidates(text: str):
    """Substrings that may hold the JSON object, most likely first."""
    fenced = _FENCE.findall(text)
    yield from fenced
    yield text


def _balanced_objects(text: str):
    """Every ``{...}`` substring with balanced braces (quote-aware), in order of their opening brace."""
    for start, ch in enumerate(text):
        if ch != "{":
            continue
        depth, quote, escaped = 0, None, False
        for end in range(start, len(text)):
            c = text[end]
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == quote:
                    quote = None
            elif c in "\"'":
                quote = c
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : end + 1]
                    break


def _load_object(snippet: str):
    """A dict from a JSON (or JSON-like) object snippet, or None."""
    attempts = (snippet, _TRAILING_COMMA.sub(r"\1", snippet))
    for s in attempts:
        try:
            obj = json.loads(s)
        except ValueError:
            pass
        else:
            if isinstance(obj, dict):
                return obj
    for s in attempts:  # Python literal: single quotes, True/None
        try:
            obj = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _find_object(text: str) -> dict:
    """The first object that names both descriptions, else the first object at all (for the error message)."""
    first = None
    for cand in _candidates(text):
        for snippet in _balanced_objects(cand):
            obj = _load_object(snippet)
            if obj is None:
                continue
            names = {_field_name(k) for k in obj}
            if {"overexposed", "underexposed"} <= names:
                return obj
            first = first if first is not None else obj
    if first is not None:
        return first
    if "{" in text and "}" not in text[text.index("{"):]:
        raise CaptionFormatError("the JSON object is cut off (no closing brace); the reply may have hit max tokens")
    raise CaptionFormatError("no JSON object found in the reply")


def _field_name(key) -> str | None:
    k = re.sub(r"[^a-z]", "", str(key).lower())
    if k.startswith("overexpos"):
        return "overexposed"
    if k.startswith("underexpos"):
        return "underexposed"
    if k in ("scene", "scenedescription"):
        return "scene"
    return None


def clean_description(text: str) -> str:
    """Collapse whitespace; square brackets become parentheses so the rendered ``[...]; [...]`` stays parseable."""
    text = " ".join(str(text).split()).strip()
    text = text.replace("[", "(").replace("]", ")")
    if text.lower().rstrip(".") in NONE_WORDS:
        return "none"
    return text


def parse_reply(text: str | None) -> dict:
    """``{"overexposed": str, "underexposed": str, "scene": str | None}`` from a model reply, or CaptionFormatError."""
    if text is None or not str(text).strip():
        raise CaptionFormatError("empty reply")
    text = str(text)
    text = _THINK.sub("", text)
    if "</think>" in text:  # a template that opened <think> in the prompt: only the part after it is the answer
        text = text.rsplit("</think>", 1)[1]
    obj = _find_object(text)
    fields: dict = {}
    for key, value in obj.items():
        name = _field_name(key)
        if name and name not in fields:
            fields[name] = value
    out = {}
    for name in ("overexposed", "underexposed"):
        if name not in fields:
            raise CaptionFormatError(f"missing key {name!r} (keys found: {', '.join(map(str, obj)) or 'none'})")
        value = fields[name]
        if not isinstance(value, str):
            raise CaptionFormatError(f"{name!r} must be a string, got {type(value).__name__}")
        value = clean_description(value)
        if not value:
            raise CaptionFormatError(f"{name!r} is empty")
        if value.lower() in PLACEHOLDERS:
            raise CaptionFormatError(f"{name!r} is a placeholder ({value!r}), not a description")
        if len(value) > MAX_DESCRIPTION_CHARS:
            raise CaptionFormatError(f"{name!r} is {len(value)} characters long (at most {MAX_DESCRIPTION_CHARS})")
        out[name] = value
    scene = fields.get("scene")  # optional: a wrong type or an empty value is dropped, never fatal
    scene = clean_description(scene) if isinstance(scene, str) else None
    if scene in ("", "none") or (scene and (scene.lower() in PLACEHOLDERS or len(scene) > MAX_DESCRIPTION_CHARS)):
        scene = None
    out["scene"] = scene
    return out
