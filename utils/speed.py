"""Inference-only copies of a trained network: the same function, less work per call (`inference_model`).

At this size a CPU is bound by overhead, not arithmetic (bench/bench_infer.py): per call, PyTorch recomputed
w = g·v/|v| (weight norm) and W/σ (spectral norm) for every conv, ran BatchNorm as an extra pass over every
encoder map, built the lr_space head's 32-channel feature maps at HR size and fastai's attention as a full
N x N matrix, and under bf16 autocast half the decoder ran in fp32 anyway (replication padding is on autocast's
fp32 list, attention's 1-element `gamma` promotes its block, a 1-channel input breaks channels_last). Each
piece here removes one of those and keeps the function: fp32 outputs match the trained module to ~1e-6
(tests/test_speed.py); bf16 rounds as autocast does.
"""
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval, remove_spectral_norm, remove_weight_norm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

__all__ = ["bake_reparametrizations", "fold_batchnorms", "LRSpaceHead", "fuse_sr_head", "Blur", "replace_blurs",
           "Attention", "replace_attention", "ReLUInPlace", "relu_in_place", "Autocast", "inference_model",
           "native_bf16"]

# CPU features that compute bfloat16 in hardware (x86 AMX or AVX-512 BF16, Arm BF16 or SVE BF16)
BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively. Elsewhere oneDNN emulates it: a training step of the
    quick.sh network ran 9x slower under bf16 autocast than in fp32 on an AVX2-only AMD EPYC; on an AMX Xeon
    the same autocast is about 2x faster than fp32 (README, Step 3)."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.9; an older torch: fp32
    return any(caps.get(k) for k in BF16_FEATURES) and not _onednn_below_bf16()


def _onednn_below_bf16() -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (set by a container, or to stand in for an older CPU) keeps oneDNN below the
    CPU's bf16 instructions: there a bf16 convolution step ran 12-50x slower than fp32 on the AVX-512 EPYC
    (AVX2: 1.6 s against 0.14 s), as on a CPU without them."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return isa not in ("", "ALL", "DEFAULT") and not any(k in isa for k in ("BF16", "AMX", "FP16", "AVX10"))


def bake_reparametrizations(model: nn.Module) -> nn.Module:
    """Replace weight norm and spectral norm by the plain weight they compute, in place.

    In eval mode spectral norm uses its stored singular vectors without a power iteration, so the baked
    weight is exactly what every eval call computes."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                remove_weight_norm(m, hook.name)
            elif isinstance(hook, SpectralNorm):
                remove_spectral_norm(m, hook.name)
    return model


def _is_class(m: nn.Module, module: str, names: tuple) -> bool:
    """Type check by name: importing torchvision or fastai here would add ~250 MB to every process that
    restores with a plain interpolation (tests/test_restore.py bounds that memory)."""
    return type(m).__module__ == module and type(m).__name__ in names


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """A conv followed directly by an eval BatchNorm that nothing else observes (no hooks on either)."""
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and not (bn._forward_hooks or bn._forward_pre_hooks or conv._forward_hooks))


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that directly follows a conv into that conv's weights and bias, in place.

    Covers torchvision ResNet blocks (conv1/bn1, ...) and consecutive (Conv2d, BatchNorm2d) children of a
    Sequential (the stem, downsample paths); a BatchNorm after a ReLU (fastai's skip and bottleneck norms)
    cannot be folded and stays."""
    for m in list(model.modules()):
        if _is_class(m, "torchvision.models.resnet", ("BasicBlock", "Bottleneck")):
            for i in (1, 2, 3):
                conv, bn = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
                if _foldable(conv, bn):
                    setattr(m, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(m, f"bn{i}", nn.Identity())
        elif isinstance(m, nn.Sequential):
            names = list(m._modules)
            for a, b in zip(names[:-1], names[1:]):
                if _foldable(m._modules[a], m._modules[b]):
                    m._modules[a] = fuse_conv_bn_eval(m._modules[a], m._modules[b])
                    m._modules[b] = nn.Identity()
    return model


class LRSpaceHead(nn.Module):
    """`model.sr_head` (k x [1x1 conv, ReLU, pixel shuffle x2], then a 1x1 conv to one channel, or to 4 and a
    last pixel shuffle x2 for the `subpixel` head) computed at LR size.

    A 1x1 conv after a pixel shuffle is the same conv applied to each of the 4 sub-pixel channel groups before
    it, so every step runs on the LR grid as a grouped conv (one group per sub-pixel position so far) and a
    single pixel shuffle by 2^k places the 4^k output channels at the end. Same products and sums; what goes
    is the 32-channel HR feature maps (64 MB in fp32 per 512² output) and the copies and page faults of
    making them, which took most of the head's time on a CPU."""

    BAND_BYTES = 4 << 20

    def __init__(self, convs: list, out: nn.Conv2d):
        super().__init__()
        nf, steps = out.in_channels, len(convs)
        self.steps = steps + (out.out_channels == 4)  # a 4-channel out conv is the last shuffle's sub-pixels
        layers = []
        for s, conv in enumerate(convs):
            groups = 4 ** s
            # pixel shuffle reads channel c*4 + q as channel c at sub-position q; reorder rows to q*nf + c so
            # each sub-position's nf channels are contiguous, the input group of the next step
            w = conv.weight.detach().reshape(nf, 4, nf).transpose(0, 1).reshape(4 * nf, nf, 1, 1)
            b = conv.bias.detach().reshape(nf, 4).t().reshape(-1) if conv.bias is not None else None
            layers.append(self._grouped(w.repeat(groups, 1, 1, 1), None if b is None else b.repeat(groups), groups))
        n = 4 ** steps
        b = out.bias.detach().repeat(n) if out.bias is not None else None
        self.convs = nn.ModuleList(layers)
        self.out = self._grouped(out.weight.detach().repeat(n, 1, 1, 1), b, n)
        self.register_buffer("order", self._shuffle_order(self.steps), persistent=False)

    @staticmethod
    def _grouped(w: torch.Tensor, b, groups: int) -> nn.Conv2d:
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], 1, groups=groups, bias=b is not None)
        conv.weight.data.copy_(w)
        if b is not None:
            conv.bias.data.copy_(b)
        return conv.requires_grad_(False)

    @staticmethod
    def _shuffle_order(steps: int) -> torch.Tensor:
        """Channel for each output sub-pixel of one pixel shuffle by 2^steps: channels come out ordered by
        (q_1, ..., q_k), step 1's sub-position most significant, where q = 2·row + column at that step."""
        side = 2 ** steps
        order = []
        for ry in range(side):
            for rx in range(side):
                src = 0
                for s in range(steps):  # step s contributes bit (steps-1-s) of the offset
                    a, b = (ry >> (steps - 1 - s)) & 1, (rx >> (steps - 1 - s)) & 1
                    src = src * 4 + 2 * a + b
                order.append(src)
        return torch.tensor(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In bands of LR rows (every conv here is 1x1, so bands need no overlap) whose widest feature map
        stays under `BAND_BYTES`: it is then reused from cache, and never large enough for glibc to map fresh
        pages for it on every call."""
        b, _, h, w = x.shape
        r = 2 ** self.steps
        widest = b * w * max([self.out.out_channels] + [c.out_channels for c in self.convs]) * x.element_size()
        rows = max(1, min(h, self.BAND_BYTES // widest))
        bands = []
        for y0 in range(0, h, rows):
            y = x[:, :, y0:y0 + rows]
            for conv in self.convs:
                y = conv(y).clamp_(min=0)  # not relu_: 2x slower in bf16 (torch 2.14, CPU)
            bands.append(F.pixel_shuffle(self.out(y)[:, self.order], r))
        return torch.cat(bands, dim=2) if len(bands) > 1 else bands[0]


def fuse_sr_head(head: nn.Module) -> nn.Module:
    """`LRSpaceHead` for a head built by `model.sr_head` (weight norm baked in), else `head` unchanged."""
    if not isinstance(head, nn.Sequential) or len(head) < 2:
        return head
    steps, out = list(head)[:-1], head[-1]
    if isinstance(out, nn.PixelShuffle) and out.upscale_factor == 2:  # subpixel: [steps..., conv to 4, shuffle]
        steps, out = steps[:-1], steps[-1]
        if not _plain_1x1(out) or out.out_channels != 4:
            return head
    elif not _plain_1x1(out) or out.out_channels != 1:
        return head
    convs = []
    for step in steps:
        parts = list(step.modules())[1:]
        kinds = [type(m) for m in parts]
        conv = next((m for m in parts if isinstance(m, nn.Conv2d)), None)
        shuffle = next((m for m in parts if isinstance(m, nn.PixelShuffle)), None)
        if (conv is None or not _plain_1x1(conv) or shuffle is None or shuffle.upscale_factor != 2
                or conv.out_channels != 4 * out.in_channels or conv.in_channels != out.in_channels
                or kinds.count(nn.ReLU) != 1 or any(k not in (nn.Sequential, nn.Conv2d, nn.ReLU, nn.PixelShuffle)
                                                    and not issubclass(k, nn.Sequential) for k in kinds)):
            return head
        convs.append(conv)
    return LRSpaceHead(convs, out)


def _plain_1x1(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.stride == (1, 1)
            and not m._forward_pre_hooks)


class Blur(nn.Module):
    """fastai's blur after a pixel shuffle (ReplicationPad2d((1, 0, 1, 0)) then AvgPool2d(2, stride=1)) in the
    input's dtype: autocast runs replication padding in fp32, which made every decoder block past a blur
    (concatenation, ReLU, the next conv's input cast) run in fp32 under bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


def _is_blur(pad: nn.Module, pool: nn.Module) -> bool:
    return (type(pad) is nn.ReplicationPad2d and tuple(pad.padding) == (1, 0, 1, 0) and type(pool) is nn.AvgPool2d
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (1, (1, 1)) and pool.padding in (0, (0, 0))
            and not pool.ceil_mode and pool.count_include_pad and pool.divisor_override is None)


def replace_blurs(model: nn.Module) -> nn.Module:
    """Swap each (ReplicationPad2d, AvgPool2d) blur pair of a Sequential for one `Blur` (same result), in place."""
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            for a, b in zip(names[:-1], names[1:]):
                if _is_blur(m._modules[a], m._modules[b]):
                    m._modules[a], m._modules[b] = Blur(), nn.Identity()
    return model


class Attention(nn.Module):
    """fastai's `SelfAttention`, the same function computed in blocks of queries, in the input's dtype and
    memory format.

    fastai computes o_j = Σ_i softmax_i(f_i·g_j) h_i (softmax over dim 1 of fᵀg, unscaled) with the whole
    N x N matrix at once (N = pixels: 4096² at the default model's 64² stage, 64 MB in fp32, plus a copy per
    step); a block of 2^20 logits stays in cache. Its `gamma` is a 1-element tensor, so `gamma * o` promoted a
    bf16 block to fp32, and `.contiguous()` dropped channels_last. (`F.scaled_dot_product_attention` needs
    equal query and value widths for its fused CPU kernel; here they are C/8 and C, and its fallback is slower.)"""

    BLOCK = 2 ** 20  # logits per block of queries

    def __init__(self, att: nn.Module):
        super().__init__()
        self.query, self.key, self.value, self.gamma = att.query, att.key, att.value, att.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        f, g, v = self.query(flat), self.key(flat), self.value(flat)
        vt = v.transpose(1, 2)
        rows = max(1, self.BLOCK // (b * h * w))
        outs = []
        for q in g.transpose(1, 2).split(rows, dim=1):  # (b, rows, C/8): one block of queries
            p = torch.softmax(torch.bmm(q, f).float(), dim=-1)  # (b, rows, N) over the keys i
            outs.append(torch.bmm(p.to(vt.dtype), vt))
        o = torch.cat(outs, dim=1).transpose(1, 2)  # (b, C, N), channels minor: channels_last once reshaped
        out = flat + self.gamma.to(o.dtype) * o.to(flat.dtype)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out.reshape(b, c, h, w).contiguous(memory_format=fmt)


def replace_attention(model: nn.Module) -> nn.Module:
    """Swap each fastai `SelfAttention` for `Attention` (same weights), in place."""
    for m in list(model.modules()):
        for name, child in m.named_children():
            if _is_class(child, "fastai.layers", ("SelfAttention",)):
                setattr(m, name, Attention(child))
    return model


class ReLUInPlace(nn.Module):
    """ReLU computed in place as clamp_(min=0): `relu_` is 2x slower on large bf16 tensors (torch 2.14, CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(min=0)


def relu_in_place(model: nn.Module) -> nn.Module:
    """Swap ReLUs that may overwrite their input for `ReLUInPlace`, in place.

    Those are the in-place ones already (torchvision's ResNet blocks), a ReLU right after a conv or
    BatchNorm in a Sequential (fastai's ConvLayer) and the one after the concatenation in a fastai UnetBlock:
    each input is a fresh tensor nobody else reads, and not allocating one more feature map saves its page
    faults as well as its memory."""
    for m in list(model.modules()):
        kids = list(m.named_children())
        for (_, prev), (name, cur) in zip([(None, None)] + kids[:-1], kids):
            if type(cur) is not nn.ReLU or cur._forward_hooks or cur._forward_pre_hooks:
                continue
            fresh = (isinstance(m, nn.Sequential) and isinstance(prev, (nn.Conv2d, nn.BatchNorm2d))
                     and not prev._forward_hooks)
            if cur.inplace or fresh or (type(m).__name__ == "UnetBlock" and name == "relu"):
                setattr(m, name, ReLUInPlace())
    return model


def _detach_caches(model: nn.Module) -> None:
    """Detach the tensors a forward pass leaves on modules and hooks (weight norm's computed `weight`, fastai
    hooks' `stored` features): deepcopy refuses non-leaf tensors, and each is recomputed by the next call."""
    def detached(v):
        return v.detach() if isinstance(v, torch.Tensor) and not v.is_leaf else v
    for m in model.modules():
        for k, v in list(vars(m).items()):
            if isinstance(v, torch.Tensor):
                setattr(m, k, detached(v))
        for fn in m._forward_hooks.values():
            hook = getattr(fn, "__self__", None)
            if hook is not None and not isinstance(hook, nn.Module) and hasattr(hook, "stored"):
                hook.stored = detached(hook.stored)


class Autocast(nn.Module):
    """`net` run under autocast to `dtype` (its convs hold weights of that dtype already, so nothing is cast
    per call); returns float32."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.net(x).float()


def _feed_hook(dtype: torch.dtype, channels_last: bool):
    """Forward pre-hook giving the U-Net its input in `dtype` and, with `channels_last`, in that layout:
    a 1-channel tensor counts as channels_last without its strides, and concatenating it with real
    channels_last features (last_cross) fell back to NCHW for the whole last block."""
    def hook(module, args):
        x = args[0].to(dtype)
        if channels_last:
            x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        return (x,) + tuple(args[1:])
    return hook


def inference_model(model: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of `model` that computes the same function with less work per call.

    Weight/spectral norm baked into the weights, BatchNorms folded into convs, the lr_space head run at LR size
    (`LRSpaceHead`), attention without the N x N matrix (`Attention`), blur in the input's dtype (`Blur`).
    `dtype` bfloat16 (or float16): conv weights stored in it and the network run under autocast, with the
    U-Net fed in that dtype while a PSSRNet's bilinear residual stays float32; the output is float32.
    A copy, because the caller's model may still be trained or saved (its state dict keeps weight_g/weight_v).
    fastai's U-Net reads encoder features through hooks that hold references to its own modules; deepcopy
    copies the hooks with the modules, so the copy reads its own encoder."""
    _detach_caches(model)
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        fold_batchnorms(bake_reparametrizations(model))
        if isinstance(getattr(model, "head", None), nn.Module):
            model.head = fuse_sr_head(model.head)
        relu_in_place(replace_attention(replace_blurs(model)))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            for m in model.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.to(dtype)
    unet = getattr(model, "unet", None)
    if isinstance(unet, nn.Module):
        unet.register_forward_pre_hook(_feed_hook(dtype, channels_last))
    return Autocast(model, dtype) if dtype != torch.float32 else model
