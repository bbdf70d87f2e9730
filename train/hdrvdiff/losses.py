"""Eq. 7 of HDR-V-Diff: L = 1 * L1 + 0.1 * L_temp + 0.1 * L_perception, on mu-law tonemapped frames.

L_temp (Chung & Cho 2023): L1 between the temporal differences of two consecutive predictions and of the ground
truth. L_perception (Johnson et al. 2016): L1 between VGG-19 feature maps (torchvision's vgg19 built with
weights=None; its pretrained weights come from a local file, never downloaded).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg19

# torchvision vgg19().features indices of the ReLU outputs
VGG19_LAYERS = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13, "relu3_4": 17,
                "relu4_1": 20, "relu4_2": 22, "relu4_4": 26, "relu5_1": 29, "relu5_4": 35}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    """Mean L1 distance of VGG-19 features at ``layers`` (inputs in [0, 1], ImageNet-normalised). ``weights``: a local
    torchvision vgg19 state dict (.pth/.safetensors; full model or ``features`` only) or None for random weights."""

    def __init__(self, weights: str | os.PathLike | None = None, layers=("relu1_2", "relu2_2", "relu3_4", "relu4_4")):
        super().__init__()
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"VGGPerceptual: unknown layers {unknown}; choose from {sorted(VGG19_LAYERS)}")
        self.ids = sorted(VGG19_LAYERS[n] for n in layers)
        features = _vgg19_features(self.ids[-1] + 1)
        if weights is not None:
            features.load_state_dict(_vgg_state(weights, len(features)), strict=True)
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # always eval: frozen
        return super().train(False)

    def forward(self, pred, target):
        x = (torch.cat([pred, target]) - self.mean) / self.std
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.ids:
                p, t = x.chunk(2)
                loss = loss + F.l1_loss(p, t)
        return loss / len(self.ids)


def _vgg19_features(n_layers: int) -> nn.Sequential:
    """The first ``n_layers`` of torchvision's ``vgg19(weights=None).features`` with torchvision's VGG initialisation,
    built on the meta device first so the 120 M-parameter classifier is never allocated."""
    with torch.device("meta"):
        features = vgg19(weights=None).features[:n_layers]
    features = features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def _vgg_state(path, n_layers: int) -> dict:
    """The first ``n_layers`` layers of a torchvision vgg19 state dict ("features.N.weight" or "N.weight" keys)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: VGG-19 weights not found (torchvision vgg19 state dict expected)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("features."): v for k, v in sd.items() if not k.startswith("classifier.")}
    return {k: v for k, v in sd.items() if int(k.split(".")[0]) < n_layers}


def temporal_loss(pred_t, pred_prev, gt_t, gt_prev):
    """L_temp (Chung & Cho 2023): || (P_t - P_{t-1}) - (G_t - G_{t-1}) ||_1."""
    return F.l1_loss(pred_t - pred_prev, gt_t - gt_prev)


class Eq7Loss(nn.Module):
    """lambda1 L1 + lambda2 L_temp + lambda3 L_perception (eq. 7; lambda = 1, 0.1, 0.1) over two consecutive frames."""

    def __init__(self, vgg: VGGPerceptual, l1: float = 1.0, temp: float = 0.1, perceptual: float = 0.1):
        super().__init__()
        self.vgg, self.w = vgg, (l1, temp, perceptual)

    def forward(self, pred_prev, pred_t, gt_prev, gt_t) -> tuple[torch.Tensor, dict]:
        pred, gt = torch.cat([pred_prev, pred_t]), torch.cat([gt_prev, gt_t])
        l1 = F.l1_loss(pred, gt)
        lt = temporal_loss(pred_t, pred_prev, gt_t, gt_prev)
        lp = self.vgg(pred, gt) if self.w[2] else pred.new_zeros(())
        total = self.w[0] * l1 + self.w[1] * lt + self.w[2] * lp
        return total, {"l1": l1.detach(), "temporal": lt.detach(), "perceptual": lp.detach()}
