"""Wan2.1-VACE LoRA files in three key layouts: recognise, convert to our diffusers/PEFT naming, and write.

* ``diffusers`` (ours, ``WanVACEPipeline.save_lora_weights``): ``transformer.vace_blocks.0.attn1.to_q.lora_A.weight``
  / ``lora_B.weight``, also without ``transformer.``, and PEFT's adapter-name variant ``...lora_A.default.weight``
  (which diffusers' loader does not accept); alpha in the safetensors header (``lora_adapter_metadata``).
* ``diffsynth`` (DiffSynth-Studio's WanModel/VaceWanModel names, the released DiffHDR LoRA):
  ``vace_blocks.0.self_attn.q.lora_A.default.weight``, ``cross_attn.q|k|v|o``, ``ffn.0``, ``ffn.2``; ``.default``
  optional, optional prefix ``pipe.dit.``/``pipe.vace.``/``dit.``/``vace.``. DiffSynth adds ``B @ A`` to the weight
  (no alpha/rank factor; a ``.alpha`` key, which it still honours, scales by alpha/rank).
* ``comfyui``: ``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``, and the
  kohya/musubi spelling ``lora_unet_blocks_0_self_attn_q.lora_down.weight``.

Main-branch keys of the ComfyUI/DiffSynth layouts go through diffusers' own converter
(``_convert_non_diffusers_wan_lora_to_diffusers``, which also knows the non-block modules); it does not know
``vace_blocks`` (nor a file without main blocks), so those are mapped here with the same module table. Converted
weights carry the scale alpha/rank folded into ``lora_A``, so they load with alpha = rank and give the same numbers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

LAYOUTS = ("diffusers", "diffsynth", "comfyui")

# Wan's own module names inside a block (DiffSynth, ComfyUI, the original checkpoints) -> diffusers'
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "before_proj": "proj_in", "after_proj": "proj_out",           # VACE blocks only
}
DIFFUSERS_TO_WAN = {v: k for k, v in WAN_TO_DIFFUSERS.items()}
DIFFSYNTH_PREFIXES = ("pipe.dit.", "pipe.vace.", "dit.", "vace.")
_BLOCK = r"(?P<branch>blocks|vace_blocks)\.(?P<n>\d+)\.(?P<inner>{})"
_WAN_MODULE = re.compile(_BLOCK.format("|".join(re.escape(k) for k in WAN_TO_DIFFUSERS)) + "$")
_DIFFUSERS_MODULE = re.compile(_BLOCK.format("|".join(re.escape(k) for k in DIFFUSERS_TO_WAN)) + "$")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.(?P<adapter>[A-Za-z0-9_-]+))?"
                       r"\.(?P<p>weight|bias)$")
_DOWN_UP_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_down|lora_up)\.weight$")
_KOHYA_MODULE = re.compile(r"^(?P<branch>vace_blocks|blocks)_(?P<n>\d+)_(?P<inner>self_attn_(?:q|k|v|o)|"
                           r"cross_attn_(?:q|k|v|o|k_img|v_img)|ffn_[02]|before_proj|after_proj)$")
_BRANCH_NAMES = {("vace_blocks",): "vace blocks", ("blocks",): "main blocks", ("blocks", "vace_blocks"): "main + vace "
                 "blocks"}


class LoraLayoutError(ValueError):
    """A LoRA file whose keys no known layout explains, or that cannot be written in a layout (one line)."""


@dataclass
class LoraInfo:
    """What a LoRA file holds: its layout, the variants met (``peft-adapter-name``, ``kohya``, ``alpha-keys``,
    ``header-alpha``), ranks and alphas (as written; alpha = rank where the file has none), target modules."""
    layout: str
    variants: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    alphas: list = field(default_factory=list)
    modules: int = 0
    branches: str = ""
    converter: str = ""

    def describe(self) -> str:
        def one(xs):
            xs = sorted(set(xs))
            return "?" if not xs else (f"{xs[0]:g}" if len(xs) == 1 else f"{xs[0]:g}..{xs[-1]:g}")
        var = f", {', '.join(self.variants)}" if self.variants else ""
        return (f"{self.layout} (rank {one(self.ranks)}, alpha {one(self.alphas)}, {self.modules} modules: "
                f"{self.branches}{var})")

    def to_dict(self) -> dict:
        return {"layout": self.layout, "variants": self.variants, "rank": sorted(set(self.ranks)),
                "alpha": sorted(set(self.alphas)), "modules": self.modules, "branches": self.branches,
                "converter": self.converter}


# ------------------------------------------------------------------------------------------------- key grammar

def _strip(key: str, prefixes) -> tuple[str, str]:
    for p in prefixes:
        if key.startswith(p):
            return p, key[len(p):]
    return "", key


def _classify(key: str):
    """(layout, module in Wan or diffusers names, part, adapter, prefix, kohya) of one key, or None."""
    if key.startswith("lora_unet_"):
        body, _, rest = key[len("lora_unet_"):].partition(".")
        m = _KOHYA_MODULE.match(body)
        if not m or rest not in ("lora_down.weight", "lora_up.weight", "alpha"):
            return None
        inner = m["inner"].replace("self_attn_", "self_attn.").replace("cross_attn_", "cross_attn.") \
            .replace("ffn_", "ffn.")
        return "comfyui", f"{m['branch']}.{m['n']}.{inner}", rest.split(".")[0], None, "lora_unet_", True
    prefix, body = _strip(key, ("transformer.", "diffusion_model.") + DIFFSYNTH_PREFIXES)
    if body.endswith(".alpha"):
        module, part, adapter = body[:-len(".alpha")], "alpha", None
    elif m := _DOWN_UP_KEY.match(body):
        module, part, adapter = m["module"], m["part"], None
    elif m := _PEFT_KEY.match(body):
        module, part, adapter = m["module"], m["part"] + ("" if m["p"] == "weight" else ".bias"), m["adapter"]
    elif prefix == "diffusion_model." and body.endswith((".diff", ".diff_b")):
        return "comfyui", body, "diff", None, prefix, False           # diffusers' converter decides
    else:
        return None
    if prefix != "transformer." and _WAN_MODULE.match(module):
        down_up = part in ("lora_down", "lora_up")
        layout = "comfyui" if prefix == "diffusion_model." or down_up else "diffsynth"
        if layout == "diffsynth" and prefix not in ("",) + DIFFSYNTH_PREFIXES:
            return None
        return layout, module, part, adapter, prefix, False
    if prefix in ("", "transformer.") and (_DIFFUSERS_MODULE.match(module) or module.startswith(
            ("condition_embedder.", "proj_out"))):
        return "diffusers", module, part, adapter, prefix, False
    if prefix == "diffusion_model.":                                    # non-block Wan modules: diffusers' converter
        return "comfyui", module, part, adapter, prefix, False
    return None


def detect_layout(state_dict: dict, where: str = "LoRA") -> str:
    """``diffusers``, ``diffsynth`` or ``comfyui``; :class:`LoraLayoutError` naming the first unmatched keys."""
    return _parse(state_dict, where)[0]


def _parse(state_dict: dict, where: str):
    if not state_dict:
        raise LoraLayoutError(f"{where}: holds no tensors")
    rows, unmatched = {}, []
    for k in state_dict:
        c = _classify(k)
        (unmatched.append(k) if c is None else rows.__setitem__(k, c))
    if unmatched:
        first = ", ".join(sorted(unmatched)[:4])
        raise LoraLayoutError(f"{where}: unknown LoRA layout: {len(unmatched)} of {len(state_dict)} keys match none of "
                              f"{', '.join(LAYOUTS)} (first: {first})")
    layouts = sorted({r[0] for r in rows.values()})
    if len(layouts) > 1:
        ex = {lay: next(k for k, r in rows.items() if r[0] == lay) for lay in layouts}
        raise LoraLayoutError(f"{where}: mixes LoRA layouts ({'; '.join(f'{a}: {b}' for a, b in ex.items())})")
    adapters = sorted({r[3] for r in rows.values() if r[3]})
    if len(adapters) > 1:
        raise LoraLayoutError(f"{where}: holds several PEFT adapters ({', '.join(adapters)}); keep one")
    return layouts[0], rows


# ------------------------------------------------------------------------------------------------- reading

def read_lora(path: str | Path) -> tuple[dict, dict]:
    """(tensors, safetensors header metadata) of a LoRA file; one-line errors naming the file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise LoraLayoutError(f"{p}: LoRA file not found")
    try:
        with safe_open(str(p), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise LoraLayoutError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None


def _header_alphas(metadata: dict | None) -> tuple[float | None, dict]:
    """(lora_alpha, alpha_pattern) from diffusers' ``lora_adapter_metadata`` header, if any."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return None, {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return None, {}
    meta = {k.removeprefix("transformer."): v for k, v in meta.items()}
    alpha = meta.get("lora_alpha")
    return (float(alpha) if alpha is not None else None), dict(meta.get("alpha_pattern") or {})


def to_diffusers(state_dict: dict, metadata: dict | None = None, where: str = "LoRA") -> tuple[dict, LoraInfo]:
    """Any of the three layouts -> (``transformer.<diffusers module>.lora_A/B.weight`` with alpha/rank folded into
    ``lora_A``, :class:`LoraInfo`). Load the result with alpha = rank (``load_lora_weights`` on the dict)."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    layout, rows = _parse(state_dict, where)
    info = LoraInfo(layout=layout)
    if any(r[3] for r in rows.values()):
        info.variants.append("peft-adapter-name")
    if any(r[5] for r in rows.values()):
        info.variants.append("kohya")
    # group by module: {module: {part: tensor}}
    mods: dict = {}
    for k, (_, module, part, _, _, _) in rows.items():
        if part == "diff":
            mods.setdefault(("diff", module), {})["diff"] = state_dict[k]
            continue
        part = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(part, part)
        slot = mods.setdefault(module, {})
        if part in slot:
            raise LoraLayoutError(f"{where}: {module} has two {part} tensors")
        slot[part] = state_dict[k]
    header_alpha, pattern = _header_alphas(metadata) if layout == "diffusers" else (None, {})
    if header_alpha is not None:
        info.variants.append("header-alpha")
    if any("alpha" in v for v in mods.values()):
        info.variants.append("alpha-keys")
    if (metadata or {}).get("alpha_folded") and (metadata or {}).get("alpha"):
        info.variants.append(f"written with alpha {metadata['alpha']} folded into lora_A")

    out, main_wan = {}, {}
    for module, parts in mods.items():
        if isinstance(module, tuple):                                 # comfy .diff/.diff_b: diffusers' converter
            main_wan[f"diffusion_model.{module[1]}"] = parts["diff"]
            continue
        if "lora_A" not in parts or "lora_B" not in parts:
            raise LoraLayoutError(f"{where}: {module} has {'/'.join(sorted(parts))} but not both lora_A and lora_B")
        a, b = parts["lora_A"], parts["lora_B"]
        rank = int(a.shape[0])
        if b.shape[1] != rank:
            raise LoraLayoutError(f"{where}: {module}: lora_A has rank {rank}, lora_B {b.shape[1]}")
        if "alpha" in parts:
            alpha = float(parts["alpha"].float().reshape(-1)[0])
        elif layout == "diffusers" and header_alpha is not None:
            alpha = float(next((v for p, v in pattern.items() if module.endswith(p)), header_alpha))
        else:
            alpha = float(rank)
        info.ranks.append(rank)
        info.alphas.append(alpha)
        if layout == "diffusers":
            name = module
        else:
            m = _WAN_MODULE.match(module)
            if m is None or m["branch"] == "blocks":                   # main branch: diffusers' own converter
                main_wan[f"diffusion_model.{module}.lora_A.weight"] = a
                main_wan[f"diffusion_model.{module}.lora_B.weight"] = b
                if "lora_B.bias" in parts:
                    main_wan[f"diffusion_model.{module}.diff_b"] = parts["lora_B.bias"]
                if alpha != rank:
                    main_wan[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
                continue
            name = f"{m['branch']}.{m['n']}.{WAN_TO_DIFFUSERS[m['inner']]}"
        scale = alpha / rank
        out[f"transformer.{name}.lora_A.weight"] = a if scale == 1.0 else a * scale
        out[f"transformer.{name}.lora_B.weight"] = b
        if "lora_B.bias" in parts:
            out[f"transformer.{name}.lora_B.bias"] = parts["lora_B.bias"]
    if main_wan:
        try:
            conv = _convert_non_diffusers_wan_lora_to_diffusers(main_wan)
        except (ValueError, KeyError) as e:
            raise LoraLayoutError(f"{where}: {layout} layout: diffusers' Wan converter refused the main-branch keys "
                                  f"({str(e)[:200]})") from None
        out.update(conv)
        info.converter = "diffusers _convert_non_diffusers_wan_lora_to_diffusers (main blocks) + " \
                         "train.diffhdr.lora_layouts (vace blocks)"
    else:
        info.converter = "train.diffhdr.lora_layouts"
    names = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in out}
    info.modules = len(names)
    branches = tuple(sorted({n.split(".")[0] for n in names if n.split(".")[0] in ("blocks", "vace_blocks")}))
    info.branches = _BRANCH_NAMES.get(branches, "other modules")
    if len(branches) and any(n.split(".")[0] not in ("blocks", "vace_blocks") for n in names):
        info.branches += " + other modules"
    return out, info


def check_modules(state_dict: dict, transformer, where: str = "LoRA") -> None:
    """Every ``transformer.<module>`` of a converted LoRA exists in ``transformer`` with matching in/out sizes."""
    linear = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    missing, wrong = [], []
    for k, v in state_dict.items():
        name, _, part = k.removeprefix("transformer.").rpartition(".lora_")
        if name not in linear:
            missing.append(name)
        elif part == "A.weight" and v.shape[1] != linear[name].in_features:
            wrong.append(f"{name} in {v.shape[1]} (model {linear[name].in_features})")
        elif part == "B.weight" and v.shape[0] != linear[name].out_features:
            wrong.append(f"{name} out {v.shape[0]} (model {linear[name].out_features})")
    if missing:
        raise LoraLayoutError(f"{where}: {len(set(missing))} LoRA modules are not in this transformer (first: "
                              f"{', '.join(sorted(set(missing))[:3])}): a LoRA for another model?")
    if wrong:
        raise LoraLayoutError(f"{where}: LoRA sizes do not fit this transformer ({'; '.join(wrong[:2])}): a LoRA for "
                              "another Wan size (1.3B vs 14B)?")


# ------------------------------------------------------------------------------------------------- writing

def from_diffusers(state_dict: dict, layout: str, rank: int | None = None, alpha: float | None = None
                   ) -> tuple[dict, dict]:
    """Our LoRA (``blocks.N.attn1.to_q.lora_A.weight``, optional ``transformer.``) -> (tensors, header metadata) in
    ``layout``. Each module's rank is its ``lora_A`` rows (``rank``, if given, must agree); ``alpha`` None: = rank.
    diffusers: the names with ``transformer.`` and alpha in the header; diffsynth: Wan names, alpha/rank folded into
    ``lora_A`` (DiffSynth adds B @ A); comfyui: ``diffusion_model.`` Wan names, ``lora_down``/``lora_up`` and a
    ``.alpha`` per module."""
    if layout not in LAYOUTS:
        raise LoraLayoutError(f"LoRA layout {layout!r}: one of {', '.join(LAYOUTS)}")
    parsed = []
    for k, v in state_dict.items():
        m = _PEFT_KEY.match(k.removeprefix("transformer."))
        if m is None or m["p"] != "weight" or m["adapter"]:
            raise LoraLayoutError(f"LoRA key {k}: not a diffusers lora_A/lora_B weight")
        parsed.append((m["module"], m["part"], v.detach().cpu().contiguous()))
    ranks = {mod: int(v.shape[0]) for mod, part, v in parsed if part == "lora_A"}
    if rank is not None and set(ranks.values()) - {int(rank)}:
        raise LoraLayoutError(f"LoRA: rank {rank} given, the tensors have {sorted(set(ranks.values()))}")
    uniform = sorted(set(ranks.values()))
    meta = {"format": "pt", "hdr_toolkit_layout": layout, "rank": ",".join(map(str, uniform)),
            "alpha": f"{float(alpha):g}" if alpha is not None else "rank"}
    out = {}
    for module, part, v in parsed:
        if module not in ranks:
            raise LoraLayoutError(f"LoRA module {module}: has lora_B but no lora_A")
        r = ranks[module]
        a = float(alpha) if alpha is not None else float(r)
        if layout == "diffusers":
            out[f"transformer.{module}.{part}.weight"] = v
            continue
        d = _DIFFUSERS_MODULE.match(module)
        if d is None:
            raise LoraLayoutError(f"LoRA module {module}: has no {layout} name (block modules only)")
        wan = f"{d['branch']}.{d['n']}.{DIFFUSERS_TO_WAN[d['inner']]}"
        if layout == "diffsynth":
            out[f"{wan}.{part}.weight"] = (v * (a / r)).contiguous() if part == "lora_A" and a != r else v
        else:
            out[f"diffusion_model.{wan}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = v
            out[f"diffusion_model.{wan}.alpha"] = torch.tensor(a, dtype=torch.float32)
    if layout == "diffusers":
        if len(uniform) != 1:
            raise LoraLayoutError(f"LoRA: ranks {uniform}: the diffusers header holds one rank")
        meta["lora_adapter_metadata"] = json.dumps(
            {"transformer.r": uniform[0], "transformer.lora_alpha": float(alpha) if alpha is not None
             else float(uniform[0])}, sort_keys=True)
    elif layout == "diffsynth":
        meta["alpha_folded"] = "lora_A carries alpha/rank"
    return out, meta


def convert_file(src: str | Path, dst: str | Path, layout: str) -> LoraInfo:
    """Read a LoRA in any layout and write it in ``layout`` (the numbers are kept: alpha/rank is folded on reading)."""
    tensors, header = read_lora(src)
    sd, info = to_diffusers(tensors, header, where=str(src))
    out, meta = from_diffusers(sd, layout)
    write_lora(dst, out, {**meta, "converted_from": info.layout})
    return info


def write_lora(path: str | Path, tensors: dict, metadata: dict) -> Path:
    """Write a safetensors file atomically (temp + rename)."""
    from safetensors.torch import save_file

    from hdr.storage import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def layout_file_name(base: str, layout: str) -> str:
    """``lora.safetensors`` for diffusers, ``lora.<layout>.safetensors`` beside it for the others."""
    stem = base.removesuffix(".safetensors")
    return base if layout == "diffusers" else f"{stem}.{layout}.safetensors"


def parse_formats(value) -> list[str]:
    """``"diffusers,comfyui"`` or a list -> the layouts in LAYOUTS order; diffusers always included (the run's
    lora.safetensors, which train.infer --run reads)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    items = [str(x).strip() for x in items if str(x).strip()]
    bad = [x for x in items if x not in LAYOUTS]
    if bad:
        raise LoraLayoutError(f"export format {', '.join(bad)}: one of {', '.join(LAYOUTS)}")
    return [x for x in LAYOUTS if x in set(items) | {"diffusers"}]


def main(argv=None) -> int:
    """``python -m train.diffhdr.lora_layouts FILE [--to LAYOUT --out FILE]``: print the layout; convert."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m train.diffhdr.lora_layouts", description=main.__doc__)
    p.add_argument("file", help="a Wan2.1-VACE LoRA safetensors file in any of the three layouts")
    p.add_argument("--to", choices=LAYOUTS, default=None, help="write it in this layout (needs --out)")
    p.add_argument("--out", default=None, help="the converted file")
    args = p.parse_args(argv)
    try:
        if args.to is None:
            tensors, header = read_lora(args.file)
            print(f"{args.file}: {to_diffusers(tensors, header, where=args.file)[1].describe()}")
            return 0
        if not args.out:
            raise LoraLayoutError("--to needs --out FILE")
        info = convert_file(args.file, args.out, args.to)
        print(f"{args.file}: {info.describe()} -> {args.out} ({args.to})")
        return 0
    except LoraLayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
