"""Temporal-Consistent Alignment Module (HDR-V-Diff §3.2): aligns a moving frame L_mov to the reference L_ref.

U-shaped, coarse to fine, one set of weights for every frame of the window:
  coarse (1/4): spatial attention (Yan et al. 2019a) gates the moving features by what complements the reference;
  middle (1/2): modulated deformable convolution (torchvision.ops.deform_conv2d; Wang et al. 2019) with offsets
                predicted from both frames and the upsampled coarse alignment;
  finest (1/1): patch-correlation matching (Yang et al. 2020; Chung & Cho 2023): cosine similarity of k x k patches
                over a local search window, softmax over displacements, features gathered with those weights;
then the three aligned maps are fused from coarse to fine. Returns the aligned features at the three scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1, inplace=True))


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SpatialAttention(nn.Module):
    """a = sigmoid(conv([f_ref, f_mov])); aligned = f_mov * a (AHDRNet-style attention)."""

    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(_conv(2 * c, c), nn.Conv2d(c, c, 3, 1, 1), nn.Sigmoid())

    def forward(self, ref, mov):
        return mov * self.net(torch.cat([ref, mov], 1))


class DeformAlign(nn.Module):
    """Modulated deformable 3x3 conv of f_mov; offsets and masks predicted from [f_ref, f_mov, coarse guide]
    (the offset layer starts at zero: no displacement, mask 0.5)."""

    def __init__(self, c, deform_groups=1, k=3):
        super().__init__()
        self.k, self.dg = k, deform_groups
        self.offset_net = nn.Sequential(_conv(3 * c, c), nn.Conv2d(c, 3 * deform_groups * k * k, 3, 1, 1))
        nn.init.zeros_(self.offset_net[-1].weight)
        nn.init.zeros_(self.offset_net[-1].bias)
        self.weight = nn.Parameter(torch.empty(c, c, k, k))
        self.bias = nn.Parameter(torch.zeros(c))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, ref, mov, guide):
        o = self.offset_net(torch.cat([ref, mov, guide], 1))
        n = 2 * self.dg * self.k * self.k
        offset, mask = o[:, :n], torch.sigmoid(o[:, n:])
        with torch.autocast(mov.device.type, enabled=False):  # torchvision's CPU kernel has no bf16: run in fp32
            out = deform_conv2d(mov.float(), offset.float(), self.weight.float(), self.bias.float(),
                                padding=self.k // 2, mask=mask.float())
        return F.leaky_relu(out, 0.1)


class PatchMatch(nn.Module):
    """Soft patch-correlation matching in a (2r+1)^2 search window: weights = softmax_d(tau * cos(P_ref(x),
    P_mov(x+d))) over k x k patches, aligned(x) = sum_d weights_d * f_mov(x+d).

    The cosine of two k x k patches is computed without unfolding them: its numerator is the k x k box sum of the
    per-pixel dot product, its norms the square roots of box sums of squares (memory O(C H W), not O(k^2 C H W))."""

    def __init__(self, c, radius=2, patch=3, temperature=10.0):
        super().__init__()
        self.r, self.k = radius, patch
        self.log_tau = nn.Parameter(torch.tensor(float(temperature)).log())
        self.key = nn.Conv2d(c, c, 1)

    def _box(self, x):  # k x k sum with zero padding, (B, 1, H, W)
        return F.avg_pool2d(x, self.k, 1, self.k // 2, count_include_pad=True) * (self.k * self.k)

    def forward(self, ref, mov):
        h, w = ref.shape[-2:]
        r = self.r
        qr, km = self.key(ref), self.key(mov)
        nq = self._box(qr.square().sum(1, keepdim=True)).sqrt().clamp(min=1e-6)
        kp, fp = F.pad(km, (r, r, r, r)), F.pad(mov, (r, r, r, r))  # patches of the zero-padded moving map
        nk = self._box(kp.square().sum(1, keepdim=True)).sqrt().clamp(min=1e-6)
        shifts = [(dy, dx) for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
        corr = torch.cat([self._box((qr * kp[..., dy:dy + h, dx:dx + w]).sum(1, keepdim=True))
                          / (nq * nk[..., dy:dy + h, dx:dx + w]) for dy, dx in shifts], 1)
        wts = torch.softmax(corr * self.log_tau.exp(), dim=1)  # (B, D, H, W)
        out = 0
        for i, (dy, dx) in enumerate(shifts):
            out = out + wts[:, i:i + 1] * fp[..., dy:dy + h, dx:dx + w]
        return out


class TCAM(nn.Module):
    """forward(L_ref, L_mov) -> [F_align at 1/1, 1/2, 1/4] (channels ``channels``)."""

    def __init__(self, in_channels=6, channels=(64, 96, 128), deform_groups=1, match_radius=2, match_patch=3):
        super().__init__()
        c1, c2, c3 = channels
        self.enc1 = nn.Sequential(_conv(in_channels, c1), _conv(c1, c1))
        self.enc2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))
        self.enc3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))
        self.att3 = SpatialAttention(c3)
        self.guide2 = nn.Conv2d(c3, c2, 1)
        self.dcn2 = DeformAlign(c2, deform_groups)
        self.match1 = PatchMatch(c1, match_radius, match_patch)
        self.fuse2 = _conv(2 * c2 + c2, c2)
        self.fuse1 = _conv(2 * c1 + c2, c1)
        self.fuse3 = _conv(2 * c3, c3)

    def encode(self, x):
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        return f1, f2, self.enc3(f2)

    def forward(self, ref, mov):
        if ref.shape[-1] % 4 or ref.shape[-2] % 4:
            raise ValueError(f"TCAM: input {tuple(ref.shape[-2:])} must be a multiple of 4")
        r1, r2, r3 = self.encode(ref)
        m1, m2, m3 = self.encode(mov)
        a3 = self.fuse3(torch.cat([r3, self.att3(r3, m3)], 1))                     # coarse: spatial attention
        g2 = _up(self.guide2(a3), r2)
        a2 = self.fuse2(torch.cat([r2, self.dcn2(r2, m2, g2), g2], 1))              # middle: deformable conv
        a1 = self.fuse1(torch.cat([r1, self.match1(r1, m1), _up(a2, r1)], 1))       # finest: patch matching
        return [a1, a2, a3]
