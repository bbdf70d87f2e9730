"""HDR-V-Diff building blocks (train/hdrvdiff): eq. 1/4/5/6/7 numerically, shapes, gradients (float64 gradcheck on
tiny instances), behaviour of the alignment operators. CPU, tiny, single-threaded."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from hdr.degrade.alternating import alternating_evs, alternating_ldr
from train.hdrvdiff.data import network_input
from hdr.degrade.presets import Params
from hdr.color import mu_law
from train.hdrvdiff import stage_config
from train.hdrvdiff.data import prepare, random_crop
from train.hdrvdiff.embeddings import exposure_embedding
from train.hdrvdiff.ldm import HDRLDM, load_vae
from train.hdrvdiff.losses import Eq7Loss, VGGPerceptual, temporal_loss
from train.hdrvdiff.maxvit import MaxViTBlock, block_partition, block_unpartition, grid_partition, grid_unpartition
from train.hdrvdiff.pipeline import reflect_window
from train.hdrvdiff.recon import ReconstructionModule
from train.hdrvdiff.stages import decoder_scale_indices
from train.hdrvdiff.tcam import TCAM, DeformAlign, PatchMatch, SpatialAttention
from train.hdrvdiff.temporal import TemporalBranch
from train.hdrvdiff.temporal_decoder import RestormerBlock, TemporalDecoder
from train.hdrvdiff.unet import HDRLDMUNet
from train.hdrvdiff.zica import ZiCA

TINY = yaml.safe_load((Path(__file__).resolve().parents[1] / "train/configs/hdrvdiff_tiny.yaml").read_text())


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is faster than two on this shared 2-core machine."""


def tiny_unet(**kw):
    return HDRLDMUNet(**{**TINY["model"]["unet"], **kw})


def tiny_vae():
    torch.manual_seed(0)
    return load_vae(TINY["model"]["vae"])


def _gradcheck(fn, *inputs):
    xs = tuple(x.detach().double().requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-4, rtol=1e-3, fast_mode=True)


def _all_params_get_grad(module, loss):
    loss.backward()
    dead = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    return dead


# ------------------------------------------------------------------------------------------------ eq. 4 embedding

def test_exposure_embedding_matches_eq4_by_hand():
    e = exposure_embedding(torch.tensor([2.0]), 4)[0]
    hand = [math.sin(2.0), math.cos(2.0 / 10000 ** 0.25), math.sin(2.0 / 100.0), math.cos(2.0 / 1000.0)]
    assert torch.allclose(e, torch.tensor(hand), atol=1e-6)
    assert e.tolist() == pytest.approx([0.9092974, 0.9800666, 0.0199987, 0.9999980], abs=1e-6)
    # d = 8, e = 0.25: channel i uses 10000^(i/8)
    e8 = exposure_embedding(torch.tensor([0.25, 4.0]), 8)
    for row, ev in zip(e8, (0.25, 4.0)):
        for i in range(8):
            f = math.sin if i % 2 == 0 else math.cos
            assert row[i].item() == pytest.approx(f(ev / 10000 ** (i / 8)), abs=1e-6)
    # different exposures -> different embeddings; float64 in -> float64 out
    assert exposure_embedding(torch.tensor([1.0], dtype=torch.float64), 6).dtype == torch.float64


def test_unet_exposure_embedding_is_used_like_time():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    z, c = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    a, b = unet(z, 10, c, torch.tensor([0.25])), unet(z, 10, c, torch.tensor([4.0]))
    assert a.shape == z.shape and (a - b).abs().max() > 1e-6  # E(e_k) changes the prediction
    assert (unet(z, 10, c, 0.25) - a).abs().max() == 0        # python float exposure works too
    assert (unet(z, 500, c, 0.25) - a).abs().max() > 1e-6     # so does the timestep
    torch.manual_seed(0)
    plain = tiny_unet(use_exposure_embedding=False).eval()
    assert plain.exposure_embedding is None
    assert (plain(z, 10, c, 0.25) - plain(z, 10, c, 4.0)).abs().max() == 0
    # the exposure MLP has the time MLP's structure: its output is added to the time embedding
    assert type(unet.exposure_embedding.mlp) is type(unet.time_embedding)


# --------------------------------------------------------------------------------------------------------- MaxViT

def test_maxvit_partitions_roundtrip_and_grid_is_dilated():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).view(2, 8, 8, 3)
    tb, tg = block_partition(x, 4), grid_partition(x, 4)
    assert tb.shape == tg.shape == (2 * 4, 16, 3)
    assert torch.equal(block_unpartition(tb, 2, 8, 8, 4), x) and torch.equal(grid_unpartition(tg, 2, 8, 8, 4), x)
    # a block window is a contiguous 4x4 patch; a grid window holds tokens 8/4 = 2 pixels apart over the whole map
    pos = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).float()[None]
    assert block_partition(pos, 4)[0].amax(0).tolist() == [3, 3]
    g0 = grid_partition(pos, 4)[0]
    assert sorted({int(v) for v in g0[:, 0]}) == [0, 2, 4, 6]


def test_maxvit_block_mixes_globally_shape_and_gradcheck():
    torch.manual_seed(0)
    blk = MaxViTBlock(8, heads=2, window=2, groups=4).eval()
    x = torch.randn(1, 8, 4, 4)
    y = blk(x)
    assert y.shape == x.shape
    # grid attention: a change in one corner reaches the opposite corner in one block (receptive field = global)
    x2 = x.clone()
    x2[..., 0, 0] += 1.0
    assert (blk(x2) - y)[..., 3, 3].abs().max() > 1e-6
    # maps that are not whole windows are padded; padded tokens are masked out of the softmax, so the real tokens'
    # output does not depend on what the padding holds
    odd = torch.randn(1, 8, 3, 5)
    y_odd = blk(odd)
    assert y_odd.shape == odd.shape and torch.isfinite(y_odd).all()
    tokens = blk.block.norm1(odd.permute(0, 2, 3, 1))
    valid = torch.zeros(1, 4, 6, 1, dtype=torch.bool)
    valid[:, :3, :5] = True
    mask = block_partition(valid, 2)[..., 0]
    outs = [blk.block.attn(block_partition(torch.nn.functional.pad(tokens, (0, 0, 0, 1, 0, 1), value=v), 2), mask)
            for v in (0.0, 7.0)]
    assert torch.allclose(outs[0][mask], outs[1][mask], atol=1e-6)
    unmasked = [blk.block.attn(block_partition(torch.nn.functional.pad(tokens, (0, 0, 0, 1, 0, 1), value=v), 2))
                for v in (0.0, 7.0)]
    assert (unmasked[0][mask] - unmasked[1][mask]).abs().max() > 1e-3  # (without the mask it would)
    _gradcheck(blk.double(), torch.randn(1, 8, 2, 2))


# ----------------------------------------------------------------------------------------------------------- U-Net

def test_unet_shape_gradients_and_gradcheck():
    torch.manual_seed(0)
    unet = tiny_unet()
    z, c = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    out = unet(z, torch.tensor([1, 999]), c, torch.tensor([0.25, 4.0]))
    assert out.shape == (2, 4, 4, 4)
    assert _all_params_get_grad(unet, out.square().mean()) == []
    assert any(isinstance(m, MaxViTBlock) for m in unet.modules())
    assert not any("Attention" in type(m).__name__ and "Window" not in type(m).__name__ for m in unet.modules())
    u = unet.double().eval()
    _gradcheck(lambda zz, cc: u(zz, 10, cc, torch.tensor([4.0], dtype=torch.float64)),
               torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4))


# ------------------------------------------------------------------------------------------------ HDR-LDM (eq. 5)

def test_hdr_ldm_loss_is_eq5_and_ddim_sampling():
    torch.manual_seed(0)
    ldm = HDRLDM(tiny_vae(), tiny_unet())
    hdr01, ldr, e = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([0.25, 4.0])
    g = torch.Generator().manual_seed(3)
    loss = ldm.loss(hdr01, ldr, e, g)
    # recompute eq. 5 by hand with the same draws
    g = torch.Generator().manual_seed(3)
    z0 = ldm.vae.encode(mu_law(hdr01) * 2 - 1).latent_dist.mode() * ldm.vae.config.scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    ab = ldm.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    cond = ldm.vae.encode(ldr * 2 - 1).latent_dist.mode() * ldm.vae.config.scaling_factor
    hand = ((noise - ldm.unet(zt, t, cond, e)) ** 2).mean()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert ldm.train_scheduler.config.prediction_type == "epsilon"
    # DDIM, 10 steps: deterministic given the generator; the U-Net is called exactly 10 times
    calls = []
    h = ldm.unet.register_forward_hook(lambda *a: calls.append(1))
    z1 = ldm.sample(ldr, e, 10, torch.Generator().manual_seed(0))
    h.remove()
    assert len(calls) == 10 and z1.shape == (2, 4, 4, 4) and torch.isfinite(z1).all()
    assert torch.equal(z1, ldm.sample(ldr, e, 10, torch.Generator().manual_seed(0)))
    assert type(ldm.sample_scheduler).__name__ == "DDIMScheduler"


def test_decoder_features_match_temporal_scales():
    ldm = HDRLDM(tiny_vae(), tiny_unet())
    feats, img = ldm.decoder_features(torch.randn(1, 4, 4, 4))
    assert img.shape == (1, 3, 32, 32)
    idx = decoder_scale_indices(len(feats))
    assert [feats[i].shape[-1] for i in idx] == [32, 16, 8]  # 1/1, 1/2, 1/4 of the image
    assert decoder_scale_indices(4) == [3, 1, 0]  # SD: 128 ch @ H, 512 @ H/2, 512 @ H/4


# ------------------------------------------------------------------------------------------------------- TCAM

def test_patch_match_recovers_a_shift():
    torch.manual_seed(0)
    pm = PatchMatch(4, radius=2, patch=3, temperature=200.0)
    with torch.no_grad():
        pm.key.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        pm.key.bias.zero_()
    ref = torch.randn(1, 4, 16, 16)
    mov = torch.roll(ref, shifts=(1, -2), dims=(2, 3))  # moving frame = reference moved by (1, -2)
    out = pm(ref, mov)
    # the cosine of k x k patches by box sums equals the explicit unfold-and-normalise definition
    with torch.no_grad():
        tau, r, (h, w) = pm.log_tau.exp(), 2, ref.shape[-2:]
        q = F.normalize(F.unfold(ref, 3, padding=1).view(1, 36, h, w), dim=1, eps=1e-6)
        kd = F.normalize(F.unfold(F.pad(mov, (r,) * 4), 3, padding=1).view(1, 36, h + 4, w + 4), dim=1, eps=1e-6)
        corr = torch.stack([(q * kd[..., dy:dy + h, dx:dx + w]).sum(1) for dy in range(5) for dx in range(5)], 1)
        wts = torch.softmax(corr * tau, 1)
        fp = F.pad(mov, (r,) * 4)
        explicit = sum(wts[:, i:i + 1] * fp[..., i // 5:i // 5 + h, i % 5:i % 5 + w] for i in range(25))
        assert torch.allclose(pm(ref, mov), explicit, atol=1e-5)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert (out - ref)[inner].abs().max() < 1e-3          # aligned back onto the reference
    assert (mov - ref)[inner].abs().mean() > 0.5


def test_deformable_alignment_starts_as_plain_conv_and_offsets_learn():
    torch.manual_seed(0)
    da = DeformAlign(4)
    ref, mov, guide = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    conv = torch.nn.functional.conv2d(mov, da.weight, da.bias, padding=1)
    # zero offsets, mask sigmoid(0) = 0.5: modulated deformable conv == 0.5 * conv (minus bias share)
    out = da(ref, mov, guide)
    expect = torch.nn.functional.leaky_relu(0.5 * (conv - da.bias.view(1, -1, 1, 1)) + da.bias.view(1, -1, 1, 1), 0.1)
    assert torch.allclose(out, expect, atol=1e-5)
    out.square().mean().backward()
    assert da.offset_net[-1].weight.grad.abs().sum() > 0  # offsets receive gradient through deform_conv2d


def test_spatial_attention_gates_moving_features():
    sa = SpatialAttention(4)
    mov = torch.randn(1, 4, 8, 8)
    a = sa(torch.randn(1, 4, 8, 8), mov)
    ratio = a / mov
    assert ((ratio > 0) & (ratio < 1)).all()  # sigmoid gate in (0, 1)


def test_tcam_temporal_branch_shapes_shared_weights_gradcheck():
    torch.manual_seed(0)
    cfg = TINY["model"]["temporal"]
    tb = TemporalBranch(**cfg)
    x = torch.rand(2, 3, 6, 16, 16)
    pred, feats = tb(x)
    assert pred.shape == (2, 3, 16, 16)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    # only the layer behind the zero-initialised offset predictor gets no gradient at initialisation
    assert _all_params_get_grad(tb, pred.square().mean() + sum(f.mean() for f in feats)) == [
        "tcam.dcn2.offset_net.0.0.weight", "tcam.dcn2.offset_net.0.0.bias"]
    # one TCAM for every frame: swapping two non-reference frames permutes the aligned features only
    tcam = tb.tcam.eval()
    a = tcam(x[:, 1], x[:, 0])
    b = tcam(x[:, 1], x[:, 2])
    both = tcam(torch.cat([x[:, 1], x[:, 1]]), torch.cat([x[:, 0], x[:, 2]]))
    assert all(torch.allclose(torch.cat([u, v]), w, atol=1e-6) for u, v, w in zip(a, b, both))
    with pytest.raises(ValueError, match="configured for 3"):
        tb(torch.rand(1, 5, 6, 16, 16))
    t64 = TCAM(6, (2, 2, 2), match_radius=1).double()
    _gradcheck(lambda r, m: sum(o.sum() for o in t64(r, m)), torch.rand(1, 6, 4, 4), torch.rand(1, 6, 4, 4))


def test_restormer_and_temporal_decoder_gradcheck():
    torch.manual_seed(0)
    blk = RestormerBlock(4, heads=2).double()
    _gradcheck(blk, torch.randn(1, 4, 4, 4))
    dec = TemporalDecoder(2, (2, 2, 2), (1, 1, 1), (1, 1, 1)).double()
    _gradcheck(lambda a, b, c: dec([[a, a], [b, b], [c, c]])[0], torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4),
               torch.randn(1, 2, 2, 2))


# ------------------------------------------------------------------------------------------------ ZiCA (eq. 6)

def test_zica_is_identity_at_init_and_diverges_after_one_step():
    torch.manual_seed(0)
    z = ZiCA(diffusion_channels=6, temporal_channels=8, heads=2, groups=4)
    f_d, f_r = torch.randn(2, 6, 4, 4), torch.randn(2, 8, 8, 8)
    out = z(f_d, f_r)
    assert torch.equal(out, f_r)  # eq. 6 with the zero-initialised conv: F^s = F_r^s exactly
    assert z.alpha == 1.0
    opt = torch.optim.SGD(z.parameters(), lr=0.1)
    (out - torch.randn_like(out)).square().mean().backward()
    opt.step()
    out2 = z(f_d, f_r)
    assert (out2 - f_r).abs().max() > 1e-4  # the zero conv grew: the diffusion prior now flows in
    # and the output depends on F_d (cross-attention: K, V from the diffusion features)
    assert (z(f_d + 1.0, f_r) - out2).abs().max() > 1e-6


def test_zica_matches_eq6_by_hand_and_gradcheck():
    torch.manual_seed(0)
    z = ZiCA(4, 4, heads=1, groups=2).double()
    torch.nn.init.normal_(z.zero_conv.weight)
    f_d, f_r = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    fd = z.norm_d(z.map_d(f_d)).flatten(2).transpose(1, 2)
    fr = z.norm_r(f_r).flatten(2).transpose(1, 2)
    q, k, v = z.q(fr), z.k(fd), z.v(fd)
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(4), -1) @ v          # CrossAttention(Q_r, K_d, V_d)
    hand = f_r + 1.0 * z.zero_conv(att.transpose(1, 2).reshape(1, 4, 3, 3))
    assert torch.allclose(z(f_d, f_r), hand, atol=1e-10)
    _gradcheck(z, torch.randn(1, 4, 2, 2), torch.randn(1, 4, 4, 4))
    # optional windowed variant (not in the paper): one window covering the map == global attention
    zw = ZiCA(4, 4, heads=1, groups=2, window=3).double()
    zw.load_state_dict(z.state_dict())
    assert torch.allclose(zw(f_d, f_r), z(f_d, f_r), atol=1e-10)
    zw.window = 2  # 3x3 map in 2x2 tiles: the top-left tile attends to its own 4 keys only; padded keys masked
    out = zw(f_d, f_r)
    qq, kk, vv = (t.view(3, 3, 4) for t in (q[0], k[0], v[0]))
    tile = [(0, 0), (0, 1), (1, 0), (1, 1)]
    qt, kt, vt = (torch.stack([t[i, j] for i, j in tile]) for t in (qq, kk, vv))
    att_tile = torch.softmax(qt @ kt.T / 2.0, -1) @ vt  # (4 queries, C)
    corner = out[0, :, 1, 1] - f_r[0, :, 1, 1]
    expect = zw.zero_conv.weight[:, :, 0, 0] @ att_tile[3] + zw.zero_conv.bias
    assert torch.isfinite(out).all() and torch.allclose(corner, expect, atol=1e-10)
    last = out[0, :, 2, 2] - f_r[0, :, 2, 2]  # a tile with 1 real token (3 padded): attention = its own value
    assert torch.allclose(last, zw.zero_conv.weight[:, :, 0, 0] @ vv[2, 2] + zw.zero_conv.bias, atol=1e-10)


def test_reconstruction_module_shape_and_gradients():
    torch.manual_seed(0)
    r = ReconstructionModule(diffusion_channels=(8, 16, 16), temporal_channels=(8, 8, 8), groups=4)
    fd = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)]
    fr = [torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    assert all(torch.equal(a, b) for a, b in zip(r.merged(fd, fr), fr))  # all ZiCAs start as identity
    out = r(fd, fr)
    assert out.shape == (1, 3, 16, 16)
    # at initialisation the module is its output conv applied to F_r^1 (zero ZiCA convs, zero fusion convs)
    assert torch.allclose(out, r.out(fr[0]), atol=1e-6)
    conv = torch.nn.Conv2d(8, 3, 3, 1, 1)
    r.init_output_from(conv)
    assert torch.equal(r.out.weight, conv.weight)
    opt = torch.optim.SGD(r.parameters(), lr=0.1)
    target = torch.rand(1, 3, 16, 16)
    (r(fd, fr) - target).square().mean().backward()
    assert r.zica[0].zero_conv.weight.grad.abs().sum() > 0 and r.fuse1[-1].weight.grad.abs().sum() > 0
    assert r.zica[2].zero_conv.weight.grad.abs().sum() == 0  # behind two zero convs (fuse1, fuse2) at first
    for _ in range(2):  # the zero convs grow one after the other: two steps later every scale receives gradient
        opt.step()
        opt.zero_grad()
        (r(fd, fr) - target).square().mean().backward()
    assert all(z.zero_conv.weight.grad.abs().sum() > 0 for z in r.zica)
    r64 = ReconstructionModule((2, 2, 2), (2, 2, 2), groups=1).double()
    for conv in [z.zero_conv for z in r64.zica] + [r64.fuse1[-1], r64.fuse2[-1]]:
        torch.nn.init.normal_(conv.weight, std=0.5)
    _gradcheck(lambda a, b, c: r64([a, b, c], [a, b, c]), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2),
               torch.randn(1, 2, 1, 1))


# ------------------------------------------------------------------------------------------------- eq. 7 losses

def test_eq7_loss_terms_and_weights(tmp_path):
    torch.manual_seed(0)
    vgg = VGGPerceptual(None, ("relu1_2", "relu2_2"))
    assert not any(p.requires_grad for p in vgg.parameters())
    p0, p1, g0, g1 = (torch.rand(1, 3, 16, 16) for _ in range(4))
    loss, parts = Eq7Loss(vgg)(p0, p1, g0, g1)
    l1 = torch.cat([p0 - g0, p1 - g1]).abs().mean()
    lt = ((p1 - p0) - (g1 - g0)).abs().mean()
    assert parts["l1"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert parts["temporal"].item() == pytest.approx(lt.item(), rel=1e-6)
    assert temporal_loss(p1, p0, g1, g0).item() == pytest.approx(lt.item(), rel=1e-6)
    assert loss.item() == pytest.approx(l1.item() + 0.1 * lt.item() + 0.1 * parts["perceptual"].item(), rel=1e-6)
    assert vgg(g0, g0).item() == 0 and vgg(p0, g0).item() > 0
    # a temporally consistent error (same offset on both frames) has no temporal term
    assert temporal_loss(g1 + 0.3, g0 + 0.3, g1, g0).item() == pytest.approx(0.0, abs=1e-7)
    # weights from a local file: a torchvision vgg19 state dict ("features.N" keys), nothing downloaded
    from torchvision.models import vgg19

    torch.manual_seed(1)
    full = vgg19(weights=None)
    sd = {f"features.{k}": v for k, v in full.features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # (the 400 MB classifier itself is not needed for the test)
    torch.save(sd, tmp_path / "vgg19.pth")
    loaded = VGGPerceptual(tmp_path / "vgg19.pth", ("relu1_2", "relu2_2"))
    assert torch.equal(loaded.features[0].weight, full.features[0].weight)
    assert torch.equal(loaded.features[7].weight, full.features[7].weight)
    with pytest.raises(FileNotFoundError, match="VGG-19 weights not found"):
        VGGPerceptual(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown layers"):
        VGGPerceptual(None, ("relu9_9",))
    _gradcheck(VGGPerceptual(None, ("relu1_1",)).double(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))


# ------------------------------------------------------------------------------------------- eq. 1 inputs, units

def test_prepare_builds_eq1_input_and_consistent_target():
    rng = np.random.default_rng(0)
    hdr = (rng.random((4, 16, 16, 3), dtype=np.float32) * 3.0).astype(np.float32)
    params = Params("paper", 0, -1.0, False, 0.0, 0.0, 0.9, 1.0, "round")
    evs = alternating_evs(4, 3)
    ldr8, exposures = alternating_ldr(hdr, evs, params)
    batch = {"hdr": torch.from_numpy(hdr).permute(0, 3, 1, 2)[None],
             "ldr": torch.from_numpy(ldr8).permute(0, 3, 1, 2)[None].float() / 255.0,
             "exposures": torch.tensor([exposures]), "params": [params.to_json()]}
    d = prepare(batch)
    assert d["L"].shape == (1, 4, 6, 16, 16)
    for k in range(4):  # channels = train.hdrvdiff.data.network_input (eq. 1), not a re-implementation
        assert torch.equal(d["L"][0, k], network_input(batch["ldr"][0, k], exposures[k], channel_axis=0))
    e_min = min(exposures)
    assert d["e_min"].item() == e_min == 0.25
    # where frame k is not saturated, its linear channels I^gamma/e_k (times e_min) are the target, up to 8-bit error
    lin = d["L"][0, :, 3:] * e_min
    ok = (batch["ldr"][0] < 0.95) & (batch["ldr"][0] > 0.2)
    assert ok.sum() > 500
    rel = ((lin - d["target01"][0]).abs() / d["target01"][0].clamp(min=1e-3))[ok]
    assert rel.max() < 0.03
    assert torch.equal(d["target_tm"], mu_law(d["target01"])) and d["target01"].max() <= 1.0
    with pytest.raises(ValueError, match="exposure_stops"):
        prepare({**batch, "params": [{}]})
    c = random_crop({"a": torch.zeros(1, 2, 40, 36), "s": 3}, None, 16, torch.Generator().manual_seed(0))
    assert c["a"].shape[-2:] == (32, 32) and c["s"] == 3


def test_reflect_window_keeps_the_exposure_cycle():
    assert reflect_window(0, 3, 9) == [1, 0, 1]
    assert reflect_window(8, 3, 9) == [7, 8, 7]
    assert reflect_window(4, 5, 9) == [2, 3, 4, 5, 6]
    assert reflect_window(0, 3, 1) == [0, 0, 0]


def test_stage_config_merges_per_stage_overrides():
    c = stage_config(TINY, "recon")
    assert c["train"]["steps"] == TINY["stages"]["recon"]["train"]["steps"] and c["stage"] == "recon"
    assert c["train"]["lr"] == TINY["train"]["lr"]
