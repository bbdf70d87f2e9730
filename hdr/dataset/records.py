"""The typed, versioned records of a dataset: ``clip.json`` (render), ``aug.json`` (augment), ``caption.json``
(caption). One class per file; ``read`` validates and fails with one line naming the file and the field.

    meta = ClipMeta.read(store, "sunrise/rotation_000/clip.json")
    meta.frames[0]["file"], meta.settings["resolution"]
    AugMeta(...).write(store, "sunrise/rotation_000/ldr/paper_00/aug.json")   # validated before it is written

Every record names its schema (``hdr-toolkit/<kind>/<version>``). A reader accepts the versions in ``READS`` and
upgrades older ones in ``upgrade``; the version written is ``VERSION`` (1 for all three today). Top-level keys that a
version does not declare are kept in ``extra`` and written back unchanged (a reader never drops what a newer writer
added). Nested objects (render settings, engine info, preset parameters) are plain dicts whose owners are the stages
that write them; the fields every consumer relies on are checked here. docs/dataset.md is the spec.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hdr.dataset import layout
from hdr.storage import Store
from hdr.typecheck import first_mismatch, type_name

SCHEMA_PREFIX = "hdr-toolkit"
KINDS = ("single", "alt2", "alt3")  # the kinds of LDR sequence (aug.json), see hdr.dataset.ldr


class RecordError(ValueError):
    """A record that does not follow its schema: ``<file>: <field>: <problem>`` on one line."""


def caption_text(overexposed: str, underexposed: str) -> str:
    """The structured caption of DiffHDR §3.4.2: ``[overexposed: <o>]; [underexposed: <u>]``."""
    return f"[overexposed: {overexposed}]; [underexposed: {underexposed}]"


def _check(value, tp, where: str) -> None:
    """Raise RecordError unless ``value`` has the annotated type ``tp`` (:mod:`hdr.typecheck`)."""
    bad = first_mismatch(value, tp, where)
    if bad is not None:
        at, v, t = bad
        raise RecordError(f"{at}: expected {type_name(t)}, got {type(v).__name__} {json.dumps(v, default=str)[:60]}")


@dataclass(kw_only=True)
class Record:
    """Base of the three records: schema handling, validation, read and write."""

    KIND: ClassVar[str] = ""
    FILE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    READS: ClassVar[tuple[int, ...]] = (1,)
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()  # optional keys that are absent (not null) when unset

    extra: dict = field(default_factory=dict, repr=False)  # undeclared top-level keys, kept as read
    file_digest: ClassVar[dict | None] = None  # set by read(): {"bytes", "sha256"} of the file as read

    @classmethod
    def schema_id(cls, version: int | None = None) -> str:
        return f"{SCHEMA_PREFIX}/{cls.KIND}/{cls.VERSION if version is None else version}"

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra"}

    # --- (de)serialisation ----------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data, where: str | None = None):
        """Validate a parsed JSON object and build the record (older versions are upgraded first)."""
        where = where or cls.FILE
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        version = cls._version_of(schema, where)
        data = cls.upgrade(dict(data), version)
        fields = cls._fields()
        kwargs, extra = {}, {}
        for name, value in data.items():
            if name == "schema":
                continue
            if name in fields:
                _check(value, fields[name], f"{where}: {name}")
                kwargs[name] = value
            else:
                extra[name] = value
        required = [f.name for f in dataclasses.fields(cls) if f.name != "extra"
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in kwargs]
        if missing:
            raise RecordError(f"{where}: {missing[0]}: missing (required in {cls.schema_id()}"
                              + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else "") + ")")
        rec = cls(**kwargs, extra=extra)
        rec.validate(where)
        return rec

    @classmethod
    def _version_of(cls, schema, where: str) -> int:
        prefix = f"{SCHEMA_PREFIX}/{cls.KIND}/"
        if not isinstance(schema, str) or not schema.startswith(prefix):
            raise RecordError(f"{where}: schema: {schema!r} is not a {cls.FILE} schema (expected {cls.schema_id()})")
        try:
            version = int(schema[len(prefix):])
        except ValueError:
            raise RecordError(f"{where}: schema: {schema!r} has no version number") from None
        if version not in cls.READS:
            raise RecordError(f"{where}: schema: version {version} cannot be read by this toolkit (it reads "
                              f"{', '.join(map(str, cls.READS))}; a newer toolkit wrote it?)")
        return version

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Turn a record of an older readable ``version`` into the fields of :attr:`VERSION` (none yet)."""
        return data

    def validate(self, where: str) -> None:
        """Checks beyond the field types (overridden per record)."""

    def to_json(self) -> dict:
        """The record as written: ``schema`` first, then the fields in declaration order, then ``extra``."""
        out = {"schema": self.schema_id()}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.name in self.OMIT_IF_NONE:
                continue
            out[f.name] = v
        out.update(self.extra)
        return out

    # --- files --------------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, store: Store, rel: str):
        """Read and validate ``rel``; RecordError (one line naming the file) if it is not valid JSON or the schema."""
        where = store.uri(rel)
        raw = store.read_bytes(rel)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordError(f"{where}: not valid JSON ({e})") from None
        rec = cls.from_json(data, where)
        rec.file_digest = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}  # manifests reuse it
        return rec

    def write(self, store: Store, rel: str) -> None:
        """Validate, then write atomically (the store publishes a complete file or nothing)."""
        data = self.to_json()
        type(self).from_json(json.loads(json.dumps(data)), store.uri(rel))  # what we write must read back
        store.write_json(rel, data)


def _need(d: dict, key: str, tp, where: str):
    if not isinstance(d, dict) or key not in d:
        raise RecordError(f"{where}.{key}: missing")
    _check(d[key], tp, f"{where}.{key}")
    return d[key]


# clip.json hdri.source: the map's record from _sources.json (python -m render.fetch); other keys are kept as they are
SOURCE_FIELDS = {"id": str, "name": str, "authors": dict | list[str], "license": str, "license_url": str,
                 "categories": list[str], "tags": list[str], "url": str, "page": str, "md5": str | None,
                 "resolution": str, "format": str, "source": str}


def check_source(rec, where: str) -> dict:
    """Validate one HDRI source record (a dict with a string ``id``; the fields of SOURCE_FIELDS typed when present;
    an ``authors`` dict maps name -> credit string); returns it. RecordError names ``where``."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected an object, got {type(rec).__name__}")
    _need(rec, "id", str, where)
    for key, tp in SOURCE_FIELDS.items():
        if key in rec:
            _check(rec[key], tp, f"{where}.{key}")
    if isinstance(rec.get("authors"), dict):
        _check(list(rec["authors"].values()), list[str], f"{where}.authors (credits)")
    return rec


@dataclass(kw_only=True)
class ClipMeta(Record):
    """``<hdri>/<clip>/clip.json``: one rendered HDR clip. Written last by render; a clip is complete once it exists
    and every frame it lists has the recorded size (:func:`hdr.dataset.layout.clip_state`)."""

    KIND: ClassVar[str] = "clip"
    FILE: ClassVar[str] = layout.CLIP_JSON

    hdri_id: str
    clip_id: str
    program: str
    created: str  # ISO 8601 UTC
    toolkit_version: str
    settings: dict  # render settings fingerprint (resolution, frames, samples, engine, ...)
    seed: int
    dataset_seed: int
    seed_derivation: str
    hdri: dict  # the map: relative path, sha256, size, bad-texel repair; "source": its record (check_source)
    program_params: dict
    camera: dict
    output: dict  # resolution [w, h], frame_count, format, pixel type, compression
    engine: dict
    radiance: dict  # Rec.709 luminance statistics over the clip
    timing: dict
    host: dict | str | None = None
    frames: list[dict]  # per frame: index, file, bytes, sha256, mtime_ns | etag, focal_mm, rotation_euler, ...

    def validate(self, where: str) -> None:
        for i, fr in enumerate(self.frames):
            w = f"{where}: frames[{i}]"
            _need(fr, "index", int, w)
            layout.check_name(_need(fr, "file", str, w), f"{where}: frames[{i}].file")
            _need(fr, "bytes", int, w)
        if "source" in self.hdri:
            check_source(self.hdri["source"], f"{where}: hdri.source")
        res = self.output.get("resolution") or self.settings.get("resolution")
        _check(res, list[int], f"{where}: output.resolution")
        if len(res) != 2:
            raise RecordError(f"{where}: output.resolution: expected [width, height], got {res}")

    @property
    def resolution(self) -> tuple[int, int]:
        w, h = self.output.get("resolution") or self.settings.get("resolution")
        return int(w), int(h)

    @property
    def files(self) -> list[str]:
        return [fr["file"] for fr in self.frames]


@dataclass(kw_only=True)
class AugMeta(Record):
    """``<hdri>/<clip>/ldr/<aug_id>/aug.json``: one LDR version of a clip. Written last by augment; holds the
    preset, the seed and every sampled parameter, so :func:`hdr.dataset.ldr.make_ldr` re-makes the frames bit for
    bit."""

    KIND: ClassVar[str] = "aug"
    FILE: ClassVar[str] = layout.AUG_JSON
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("alternating", "step_results", "file_records")

    hdri_id: str
    clip_id: str
    aug_id: str
    preset: str
    preset_settings: dict  # the preset after --set overrides (hdr.degrade.presets.Preset as a dict)
    seed: int
    dataset_seed: int
    seed_derivation: str
    params: dict  # every sampled parameter (hdr.degrade.presets.Params.to_json)
    alternating: dict | None = None  # alt kinds only: n_exposures, ev, exposure, gamma
    frames: list[str]  # LDR frame file names in order
    preview: str | None = None
    masks: dict  # over/under file patterns (printf), mode, linearisation, encoding
    format: str
    source_clip: dict
    step_results: list[dict] | None = None  # what the preset's steps did (a codec's bitrate, frame types)
    file_records: dict | None = None  # file name -> {bytes, sha256, mtime_ns | etag} as written (manifests trust it)
    toolkit_version: str
    created: str
    seconds: float

    def validate(self, where: str) -> None:
        for i, name in enumerate(self.frames):
            layout.check_name(name, f"{where}: frames[{i}]")
        for key in ("over", "under"):
            pattern = _need(self.masks, key, str, f"{where}: masks")
            try:
                layout.check_name(pattern % 0, f"{where}: masks.{key}")
            except (TypeError, ValueError):
                raise RecordError(f"{where}: masks.{key}: {pattern!r} is not a frame-number pattern like "
                                  "over_%04d.png") from None
        _need(self.masks, "mode", str, f"{where}: masks")
        if self.preview is not None:
            layout.check_name(self.preview, f"{where}: preview")
        if self.alternating is not None:
            w = f"{where}: alternating"
            n = _need(self.alternating, "n_exposures", int, w)
            if f"alt{n}" not in KINDS:
                raise RecordError(f"{w}.n_exposures: {n}; expected 2 or 3")
            for key in ("ev", "exposure"):
                if len(_need(self.alternating, key, list[float], w)) != len(self.frames):
                    raise RecordError(f"{w}.{key}: {len(self.alternating[key])} values for {len(self.frames)} frames")

    @property
    def kind(self) -> str:
        """"single", "alt2" or "alt3"."""
        return f"alt{int(self.alternating['n_exposures'])}" if self.alternating else "single"

    @property
    def over(self) -> list[str]:
        return [self.masks["over"] % t for t in range(len(self.frames))]

    @property
    def under(self) -> list[str]:
        return [self.masks["under"] % t for t in range(len(self.frames))]

    @property
    def files(self) -> list[str]:
        """Every file of the augmentation but aug.json itself."""
        return self.frames + self.over + self.under + ([self.preview] if self.preview else [])


CAPTION_BACKENDS = ("qwen3vl", "vllm", "stats")


@dataclass(kw_only=True)
class CaptionMeta(Record):
    """``<hdri>/<clip>/caption.json``: the structured caption of a clip (caption stage)."""

    KIND: ClassVar[str] = "caption"
    FILE: ClassVar[str] = layout.CAPTION_JSON

    hdri_id: str
    clip_id: str
    caption: str  # caption_text(overexposed, underexposed)
    overexposed: str
    underexposed: str
    scene: str | None
    backend: str
    model: dict  # {"id": str, "revision": str | None}
    prompt_hash: str
    frame_indices: list[int]
    source: dict  # {"aug_id": the augmentation whose masks were shown, or None}
    generation: dict
    raw_text: str
    attempts: int
    fallback: str | None  # why image statistics replaced the model's reply, or None
    seconds: float
    created: str

    def validate(self, where: str) -> None:
        if self.backend not in CAPTION_BACKENDS:
            raise RecordError(f"{where}: backend: {self.backend!r}; expected one of {', '.join(CAPTION_BACKENDS)}")
        if set(self.model) != {"id", "revision"} or not isinstance(self.model["id"], str):
            raise RecordError(f"{where}: model: expected {{'id': str, 'revision': str|null}}, got {self.model}")
        if not self.overexposed.strip() or not self.underexposed.strip():
            raise RecordError(f"{where}: {'overexposed' if not self.overexposed.strip() else 'underexposed'}: empty")
        if self.caption != caption_text(self.overexposed, self.underexposed):
            raise RecordError(f"{where}: caption: not '[overexposed: <o>]; [underexposed: <u>]' of its fields")
        if set(self.source) != {"aug_id"}:
            raise RecordError(f"{where}: source: expected {{'aug_id': ...}}, got {self.source}")
        if self.attempts < 1:
            raise RecordError(f"{where}: attempts: {self.attempts}; expected >= 1")


RECORDS = {"clip": ClipMeta, "aug": AugMeta, "caption": CaptionMeta}
