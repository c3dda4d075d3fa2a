"""utils.speed: the inference copy computes the same function as the trained network (no timings here:
speed is measured by bench/bench_infer.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from utils.model import build_model, make_meta, sr_head
from utils.restore import Predictor
from utils.speed import (Attention, Autocast, Blur, LRSpaceHead, bake_reparametrizations, fuse_sr_head, inference_model,
                         native_bf16)

FP32_TOL = 1e-4


def trained_like(meta: dict, seed: int = 0) -> nn.Module:
    """A network with what training changes set to plausible values: BatchNorm statistics, a non-zero output
    layer (a new model outputs exactly bilinear), attention switched on."""
    torch.manual_seed(seed)
    model = build_model(meta).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if type(m).__name__ == "SelfAttention":
                # 0.1: the random network's own fp32 rounding (against float64) stays at 3e-5; at 0.5 it
                # reaches 2e-4, beyond any tolerance (trained models: 3e-7, tests below 1e-4 here)
                m.gamma.fill_(0.1)
                m.query[0].weight_orig.mul_(0.1)  # an untrained query gives a near one-hot softmax
        out = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        w = out.weight_g if hasattr(out, "weight_g") else out.weight
        w.copy_(torch.randn(w.shape, generator=g))
        # the correction to bilinear is linear in the last layer: scale it to what training gives, ~0.2 at most
        x = torch.rand(1, int(meta["n_frames"]), 16, 16, generator=g)
        k = 0.2 / (model(x) - bilinear(x)).abs().max()
        w.mul_(k)
        if out.bias is not None:
            out.bias.mul_(k)
    return model


META = {"lr_space": dict(lr_space=True, encoder_stride=16, arch="resnet18", residual=True, lr_head="subpixel"),
        "lr_space_icnr": dict(lr_space=True, encoder_stride=16, arch="resnet18", residual=True, lr_head="icnr"),
        "default": dict(arch="resnet18", residual=True)}
# LR test input (batch, frames, h, w): the default network runs at 4x the size (and ~25x the cost)
SIZES = {"lr_space": (2, 1, 32, 64), "lr_space_icnr": (2, 1, 32, 64), "default": (1, 1, 16, 32)}


_NETS = {}


def get_net(name: str) -> nn.Module:
    """Built once per test session (a U-Net takes seconds to build)."""
    if name not in _NETS:
        _NETS[name] = trained_like(make_meta(**META[name]))
    return _NETS[name]


@pytest.fixture(params=sorted(META))
def net(request):
    return request.param, get_net(request.param)


def test_fp32_matches_reference(net):
    name, model = net
    x = torch.rand(SIZES[name], generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for channels_last in (False, True):
        fast = inference_model(model, channels_last=channels_last)
        with torch.inference_mode():
            ref, out = model(x), fast(x)
        assert (ref - bilinear(x)).abs().max() > 0.05, "test network too close to bilinear to test anything"
        assert (out - ref).abs().max().item() <= FP32_TOL, name
    kinds = {type(m) for m in fast.modules()}
    assert not any(m._forward_pre_hooks for m in fast.modules() if m is not fast.unet)  # weight/spectral norm gone
    assert Attention in kinds and Blur in kinds and (LRSpaceHead in kinds) == name.startswith("lr_space")
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) < n_bn // 3  # encoder BNs folded
    after = model.state_dict()  # the caller's model is untouched (it may be trained further or saved)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_bf16_close_to_fp32(net):
    """bf16 keeps 8 bits of mantissa, and a random network amplifies rounding far more than a trained one: here
    the mean error of bf16 (ours or plain autocast of the same network, the old --fast) is 1-3% of the
    correction to bilinear, its largest pixel error up to half of it, and which of the two is closer varies
    with the seed. On the real-EM quick model: largest pixel error 4.4e-3 here, 5.4e-3 with autocast, PSNR
    equal to 0.0004 dB (bench/bench_infer.py). So this only catches gross errors: a misplaced channel or a
    wrong cast costs about as much as the correction itself."""
    name, model = net
    x = torch.rand(SIZES[name], generator=torch.Generator().manual_seed(2))
    fast = inference_model(model, torch.bfloat16, channels_last=True)
    with torch.inference_mode():
        ref, out = model(x), fast(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(x).float()
    assert isinstance(fast, Autocast) and out.dtype == torch.float32
    err, corr = (out - ref).abs().mean(), (ref - bilinear(x)).abs().max()
    assert err <= 0.05 * corr and err <= 3 * (autocast - ref).abs().mean() + 1e-3, name


def bilinear(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("kind", ["subpixel", "icnr"])
def test_lr_space_head_same_as_pixel_shuffle_head(scale, kind):
    torch.manual_seed(0)
    head = bake_reparametrizations(sr_head(8, scale, weight_norm=True, kind=kind).eval())
    nn.init.normal_([m for m in head.modules() if isinstance(m, nn.Conv2d)][-1].weight)
    fused = fuse_sr_head(head)
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert isinstance(fused, LRSpaceHead) and fused(x).shape == head(x).shape == (2, 1, 5 * scale, 7 * scale)
        assert (fused(x) - head(x)).abs().max().item() <= 1e-5
        fused.BAND_BYTES = 1  # one LR row at a time
        assert (fused(x) - head(x)).abs().max().item() <= 1e-5


def test_unknown_head_left_alone():
    head = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(8, 1, 1))
    assert fuse_sr_head(head) is head


def test_attention_same_as_fastai_in_blocks():
    from fastai.layers import SelfAttention
    torch.manual_seed(0)
    att = SelfAttention(16).eval()
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        ref = att(x)
        mine = Attention(bake_reparametrizations(att))
        mine.BLOCK = 100  # several query blocks per image
        out = mine(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() <= FP32_TOL


def test_blur_same_and_keeps_dtype():
    x = torch.randn(1, 4, 6, 6)
    ref = nn.AvgPool2d(2, stride=1)(nn.ReplicationPad2d((1, 0, 1, 0))(x))
    assert torch.allclose(Blur()(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Blur()(x.bfloat16()).dtype == torch.bfloat16  # autocast would pad in fp32


def test_predictor_optimized_equals_plain():
    model = get_net("lr_space")
    tiles = np.random.default_rng(0).random((3, 1, 24, 24), dtype=np.float32)  # padded to 32 inside
    plain = Predictor(model, 4, optimize=False, batch_size=2)(tiles)
    assert np.abs(Predictor(model, 4, batch_size=2)(tiles) - plain).max() <= FP32_TOL
    fast = Predictor(model, 4, batch_size=2, fast=True)(tiles)
    autocast = Predictor(model, 4, optimize=False, batch_size=2, fast=True)(tiles)  # the old --fast
    assert fast.shape == plain.shape == (3, 96, 96) and fast.dtype == np.float32
    assert np.abs(fast - plain).mean() <= 3 * np.abs(autocast - plain).mean() + 1e-3


@pytest.mark.parametrize("caps, native", [({"avx2": True, "avx512_f": True, "avx512_bf16": False}, False),
                                          ({"avx512_bf16": True}, True), ({"amx_bf16": True}, True),
                                          ({"neon": True, "bf16": True}, True), ({}, False)])
def test_native_bf16_reads_the_cpus_features(monkeypatch, caps, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert native_bf16() == native


@pytest.mark.parametrize("isa, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True), ("", True)])
def test_native_bf16_heeds_onednns_isa_cap(monkeypatch, isa, native):
    """A bf16 CPU whose oneDNN is capped below bf16 (ONEDNN_MAX_CPU_ISA) emulates it: train in fp32 there."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert native_bf16() == native
