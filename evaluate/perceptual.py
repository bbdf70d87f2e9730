"""Optional learned metrics, only from weights on a local path; nothing here ever downloads.

* LPIPS (Zhang et al. 2018) through torchmetrics' implementation: the LPIPS linear layers ship inside torchmetrics
  (``lpips_models/alex.pth``), the AlexNet backbone is loaded from a local torchvision checkpoint given by the user
  (``alexnet-owt-7be5be79.pth``, the file torchvision would download). Computed on the mu-law tonemapped, normalised
  frames (as HDR-V-Diff §4 does on tonemapped frames), averaged over frames.
* CLIP-IQA (Wang et al. 2023), no reference: the antonym-prompt score softmax(100 cos(image, ["Good photo.",
  "Bad photo."]))[0] with a CLIP model from a local Hugging Face folder (e.g. openai/clip-vit-base-patch16 saved
  locally), on the Reinhard-tonemapped sRGB prediction (DiffHDR §4.2.1 tonemaps with Reinhard for its no-reference
  metrics). This is CLIP-IQA with plain CLIP weights (torchmetrics' variant), not the CLIP-IQA+ finetuned prompts.
* MUSIQ (Ke et al. 2021), no reference, on the same Reinhard-tonemapped prediction: through pyiqa if the user installed
  it (it is deliberately not a dependency) and from a local pyiqa checkpoint; otherwise a clear "unavailable".

Every loader raises :class:`MetricUnavailable` with a one-line reason when the weights are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
CLIPIQA_PROMPTS = ("Good photo.", "Bad photo.")


class MetricUnavailable(RuntimeError):
    """A learned metric that cannot run here (no local weights, or no implementation); ``str(e)`` says why."""


def _torch_batch(frames: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, -3), dtype=np.float32))


class Lpips:
    """``Lpips(path).score(pred01, gt01)``: mean LPIPS over frames of two ``(T, H, W, 3)`` arrays in [0, 1]."""

    def __init__(self, weights: str | os.PathLike | None, device: str = "cpu"):
        import torch

        if not weights:
            raise MetricUnavailable(f"lpips: not computed -- pass --lpips-weights PATH (a local torchvision AlexNet "
                                    f"checkpoint, {LPIPS_BACKBONE_FILE}); nothing is downloaded")
        path = Path(weights)
        if path.is_dir():
            path = path / LPIPS_BACKBONE_FILE
        if not path.is_file():
            raise MetricUnavailable(f"lpips: not computed -- {path}: no such file (expected a torchvision AlexNet "
                                    f"checkpoint, {LPIPS_BACKBONE_FILE}); nothing is downloaded")
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        # pnet_rand=True: torchmetrics builds the backbone without asking torchvision for weights (no download);
        # pretrained=True loads the LPIPS linear layers from the file bundled with torchmetrics.
        net = _NoTrainLpips(net="alex", pretrained=True, pnet_rand=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MetricUnavailable(f"lpips: {path}: not a readable torch checkpoint ({e})") from None
        by_index = {}
        for name, module in net.net.named_children():  # slice1..slice5 hold AlexNet's features[i] under name str(i)
            for idx, layer in module.named_children():
                by_index[int(idx)] = layer
        loaded = 0
        for key, value in state.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "features" and int(parts[1]) in by_index:
                getattr(by_index[int(parts[1])], parts[2]).data.copy_(value)
                loaded += 1
        if loaded != 10:  # 5 conv layers x (weight, bias)
            raise MetricUnavailable(f"lpips: {path}: expected AlexNet 'features.N.weight/bias' tensors, found {loaded}")
        self.net = net.to(device).eval()
        self.device = device
        self.source = str(path)

    def score(self, pred01: np.ndarray, gt01: np.ndarray, batch: int = 8) -> float:
        import torch

        vals = []
        with torch.no_grad():
            for i in range(0, len(pred01), batch):
                a = _torch_batch(pred01[i:i + batch]).to(self.device)
                b = _torch_batch(gt01[i:i + batch]).to(self.device)
                vals.append(self.net(a, b, normalize=True).reshape(-1).double().cpu())
        return float(torch.cat(vals).mean())


class ClipIqa:
    """``ClipIqa(folder).score(srgb01)``: mean CLIP-IQA ("Good photo." vs "Bad photo.") over ``(T, H, W, 3)``."""

    def __init__(self, model_dir: str | os.PathLike | None, device: str = "cpu"):
        if not model_dir:
            raise MetricUnavailable("clipiqa: not computed -- pass --clipiqa-model DIR (a local Hugging Face CLIP "
                                    "folder with config, weights and processor files); nothing is downloaded")
        d = Path(model_dir)
        if not (d / "config.json").is_file():
            raise MetricUnavailable(f"clipiqa: not computed -- {d}: no config.json (expected a local Hugging Face "
                                    f"CLIP folder); nothing is downloaded")
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(d, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(d, local_files_only=True)
        except Exception as e:
            raise MetricUnavailable(f"clipiqa: {d}: cannot load a CLIP model and processor ({e})") from None
        self.device, self.source = device, str(d)

    def score(self, srgb01: np.ndarray, batch: int = 8) -> float:
        """CLIP-IQA (Wang et al. 2023, antonym prompts): softmax(100 * cos(image, [good, bad]))[good], the mean over
        frames. (torchmetrics' own clip_image_quality_assessment does not run with transformers 5: its
        get_text_features call now returns an output object.)"""
        import torch

        vals = []
        with torch.no_grad():
            text = self.processor(text=list(CLIPIQA_PROMPTS), return_tensors="pt", padding=True).to(self.device)
            t = self.model(**text, pixel_values=torch.zeros(1, 3, *self._size(), device=self.device)).text_embeds
            t = t / t.norm(dim=-1, keepdim=True)
            for i in range(0, len(srgb01), batch):
                imgs = [np.clip(f, 0, 1).astype(np.float32) for f in srgb01[i:i + batch]]
                px = self.processor(images=imgs, return_tensors="pt", do_rescale=False)["pixel_values"]
                v = self.model.get_image_features(pixel_values=px.to(self.device))
                v = getattr(v, "pooler_output", v)  # transformers 5 returns an output object
                v = v / v.norm(dim=-1, keepdim=True)
                probs = (100.0 * v @ t.T).softmax(dim=-1)[:, 0]
                vals.append(probs.double().cpu())
        return float(torch.cat(vals).mean())

    def _size(self) -> tuple[int, int]:
        s = self.model.config.vision_config.image_size
        return (s, s)


class Musiq:
    """``Musiq(path).score(srgb01)``: mean MUSIQ (Ke et al. 2021, no reference) over ``(T, H, W, 3)`` in [0, 1],
    through pyiqa's implementation, from a local checkpoint only (pyiqa's ``musiq_koniq_ckpt-*.pth``, the file pyiqa
    would download). pyiqa is NOT a dependency of this toolkit (it pulls bitsandbytes, datasets, ruff, ...): install
    it yourself to use MUSIQ; without it, or without the checkpoint, the metric is reported unavailable."""

    def __init__(self, weights: str | os.PathLike | None, device: str = "cpu"):
        if not weights:
            raise MetricUnavailable("musiq: not computed -- pass --musiq-weights PATH (a local pyiqa MUSIQ checkpoint, "
                                    "e.g. musiq_koniq_ckpt-e95806b9.pth); nothing is downloaded")
        path = Path(weights)
        if not path.is_file():
            raise MetricUnavailable(f"musiq: not computed -- {path}: no such file (expected a pyiqa MUSIQ "
                                    "checkpoint); nothing is downloaded")
        try:
            import pyiqa
        except ImportError:
            raise MetricUnavailable("musiq: not computed -- MUSIQ runs through pyiqa, which is not installed and not "
                                    "a dependency of this toolkit (pip install pyiqa to use it)") from None
        try:  # with pretrained_model_path, pyiqa loads the file and never downloads
            self.metric = pyiqa.create_metric("musiq", as_loss=False, device=device,
                                              pretrained_model_path=str(path))
        except Exception as e:  # noqa: BLE001  (any loader failure is one line)
            raise MetricUnavailable(f"musiq: {path}: pyiqa cannot load it ({' '.join(str(e).split())})") from None
        self.device, self.source = device, str(path)

    def score(self, srgb01: np.ndarray, batch: int = 8) -> float:
        import torch

        vals = []
        with torch.no_grad():
            for i in range(0, len(srgb01), batch):
                x = _torch_batch(np.clip(srgb01[i:i + batch], 0.0, 1.0)).to(self.device)
                vals.append(torch.as_tensor(self.metric(x)).reshape(-1).double().cpu())
        return float(torch.cat(vals).mean())
