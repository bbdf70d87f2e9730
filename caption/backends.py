"""Caption backends behind one small interface.

A backend turns a batch of :class:`Request` (a clip's sampled frames + the chat messages built for it) into one reply
string per request; parsing, retries, fallbacks and caption.json are the pipeline's job (:mod:`caption.clip`), the
same for every backend.

* ``qwen3vl``: transformers ``AutoModelForImageTextToText`` (Qwen3-VL and Qwen3-VL-MoE checkpoints) +
  ``AutoProcessor`` + ``qwen_vl_utils.process_vision_info(..., image_patch_size=16)``; a local folder or a hub id;
  bf16 on GPU, fp32 on CPU; batched greedy generation (left padding). No ``trust_remote_code``.
* ``vllm``: the same prompt through vLLM offline batch inference (``pip install vllm``; CUDA GPU only; the import
  is guarded so the rest of the toolkit never needs vLLM).
* ``stats``: no model; the reply is JSON written from image statistics (:mod:`caption.stats`).

Models are cached per process (:func:`get_backend`), so a Ray worker that runs many caption tasks loads its model once.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from caption import stats
from caption.frames import ClipFrames

BACKENDS = ("qwen3vl", "vllm", "stats")
DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"


class BackendError(RuntimeError):
    """A backend cannot be set up (missing package, no GPU, unreadable model); one line."""


@dataclass(frozen=True)
class BackendSpec:
    """Everything needed to build a backend (picklable: it travels to Ray workers)."""

    name: str = "qwen3vl"
    model: str | None = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"  # auto: cuda if available else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    max_new_tokens: int = 200
    batch_size: int = 4  # requests per generate() call
    tensor_parallel: int = 1  # vllm: GPUs per model
    gpu_memory_utilization: float = 0.85  # vllm
    max_images: int = 8  # vllm: images per prompt (frames, x2 with --masks separate)


@dataclass
class Request:
    clip: ClipFrames
    messages: list | None = None  # None for backends that do not read images (stats)
    extra: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """:func:`hdr.cli.resolve_device` on the machine that loads the model; its one-line error as a BackendError."""
    from hdr.cli import CliError, resolve_device as resolve

    try:
        return resolve(device)
    except CliError as e:
        raise BackendError(str(e)) from None


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _model_id(model: str) -> str:
    """A local folder is recorded by its absolute path, a hub id as given."""
    return os.path.abspath(model) if os.path.isdir(model) else model


class Backend:
    name = "base"
    reads_images = True
    patch_factor = 32  # image side multiple (patch 16 x spatial merge 2 for Qwen3-VL)

    def model_info(self) -> dict:  # {"id": str, "revision": str | None}
        raise NotImplementedError

    def settings(self) -> dict:
        raise NotImplementedError

    def generate(self, requests: list[Request]) -> list[str]:
        raise NotImplementedError


class StatsBackend(Backend):
    name = "stats"
    reads_images = False

    def model_info(self) -> dict:
        return {"id": "stats", "revision": stats.STATS_VERSION}

    def settings(self) -> dict:
        return {"method": "image statistics (caption.stats)", "mask_threshold": stats.MASK_THRESHOLD,
                "min_area": stats.MIN_AREA}

    def generate(self, requests: list[Request]) -> list[str]:
        return [json.dumps(stats.describe(r.clip.display, r.clip.over, r.clip.under, r.clip.hdr)) for r in requests]


def _image_patch_size(processor) -> int:
    ip = getattr(processor, "image_processor", None)
    return int(getattr(ip, "patch_size", 16) or 16)


class Qwen3VLBackend(Backend):
    name = "qwen3vl"

    def __init__(self, spec: BackendSpec):
        if not spec.model:
            raise BackendError("the qwen3vl backend needs --weights (a local folder or a hub id such as "
                               f"{DEFAULT_MODEL})")
        if spec.model.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(spec.model)):
            raise BackendError(f"{spec.model}: no such model folder")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        try:
            self.processor = AutoProcessor.from_pretrained(spec.model, revision=spec.revision)
            # device_map: the weights are loaded straight onto the device (no full CPU copy of a 16 GB model first)
            self.model = AutoModelForImageTextToText.from_pretrained(
                spec.model, revision=spec.revision, dtype=getattr(torch, self.dtype), device_map=self.device)
        except (OSError, ValueError) as e:
            raise BackendError(f"{spec.model}: cannot load a Qwen3-VL model and processor "
                               f"({' '.join(str(e).split())[:300]})") from None
        self.model.eval()
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every row at the same column
        ip = self.processor.image_processor
        self.patch_size = _image_patch_size(self.processor)
        self.patch_factor = self.patch_size * int(getattr(ip, "merge_size", 2) or 2)
        self.revision = spec.revision or getattr(self.model.config, "_commit_hash", None)

    def model_info(self) -> dict:
        return {"id": _model_id(self.spec.model), "revision": self.revision}

    def settings(self) -> dict:
        return {"max_new_tokens": self.spec.max_new_tokens, "do_sample": False, "decoding": "greedy",
                "device": self.device, "dtype": self.dtype, "batch_size": self.spec.batch_size,
                "model_class": type(self.model).__name__}

    def generate(self, requests: list[Request]) -> list[str]:
        import torch
        from qwen_vl_utils import process_vision_info

        out: list[str] = []
        tok = self.processor.tokenizer
        for i in range(0, len(requests), max(1, self.spec.batch_size)):
            convs = [r.messages for r in requests[i : i + self.spec.batch_size]]
            texts = [self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
            images, _ = process_vision_info(convs, image_patch_size=self.patch_size)
            # the images are already at the model's input size (caption.frames.vlm_images): no second resampling
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt", do_resize=False)
            inputs = inputs.to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
            new = ids[:, inputs["input_ids"].shape[1]:]
            out += self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return out


class VLLMBackend(Backend):
    """vLLM offline batch inference (CUDA only). Written against vLLM >= 0.11 (Qwen3-VL support); not runnable on
    the CPU-only machine this toolkit is tested on, so only its guards are tested."""

    name = "vllm"

    def __init__(self, spec: BackendSpec):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise BackendError("the vllm backend needs vLLM: pip install vllm (CUDA GPU only); "
                               "or use --backend qwen3vl") from None
        import torch
        from transformers import AutoProcessor

        if not torch.cuda.is_available() or resolve_device(spec.device) == "cpu":
            raise BackendError("the vllm backend runs on CUDA GPUs only; use --backend qwen3vl on the CPU")
        if not spec.model:
            raise BackendError("the vllm backend needs --weights (a local folder or a hub id)")
        self.spec = spec
        self.processor = AutoProcessor.from_pretrained(spec.model, revision=spec.revision)
        self.patch_size = _image_patch_size(self.processor)
        self.patch_factor = self.patch_size * int(getattr(self.processor.image_processor, "merge_size", 2) or 2)
        self.dtype = resolve_dtype(spec.dtype, "cuda")
        self.llm = LLM(model=spec.model, revision=spec.revision, dtype=self.dtype, seed=0,
                       tensor_parallel_size=spec.tensor_parallel, gpu_memory_utilization=spec.gpu_memory_utilization,
                       limit_mm_per_prompt={"image": spec.max_images, "video": 0})
        self.sampling = SamplingParams(temperature=0.0, max_tokens=spec.max_new_tokens)

    def model_info(self) -> dict:
        return {"id": _model_id(self.spec.model), "revision": self.spec.revision}

    def settings(self) -> dict:
        return {"max_new_tokens": self.spec.max_new_tokens, "do_sample": False, "decoding": "greedy",
                "device": "cuda", "dtype": self.dtype, "tensor_parallel": self.spec.tensor_parallel, "engine": "vllm"}

    def generate(self, requests: list[Request]) -> list[str]:
        from qwen_vl_utils import process_vision_info

        prompts = []
        for r in requests:
            text = self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            images, _ = process_vision_info(r.messages, image_patch_size=self.patch_size)
            prompts.append({"prompt": text, "multi_modal_data": {"image": images},
                            "mm_processor_kwargs": {"do_resize": False}})
        results = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [res.outputs[0].text if res.outputs else "" for res in results]


_CACHE: dict[BackendSpec, Backend] = {}


def get_backend(spec: BackendSpec) -> Backend:
    """The backend for ``spec``, built once per process (the model stays loaded across tasks in a Ray worker)."""
    if spec.name not in BACKENDS:
        raise BackendError(f"unknown backend {spec.name!r}: expected one of {', '.join(BACKENDS)}")
    if spec not in _CACHE:
        cls = {"qwen3vl": Qwen3VLBackend, "vllm": VLLMBackend, "stats": StatsBackend}[spec.name]
        _CACHE.clear()  # one model per process
        _CACHE[spec] = cls(spec) if spec.name != "stats" else cls()
    return _CACHE[spec]
