"""The paper's "ResNet-based U-Net": build it from metadata, save it, load it back.

A model on disk is `{name}.pth` (plain state dict), `{name}.json` (everything needed to rebuild and feed it:
scale, n_frames, arch, input path, U-Net flags, normalization percentiles, data set), and, once a training round
ends, `{name}.pkl` (fastai export). Inference needs only the first two: `load_model(name)`.
"""
import json
import pickle
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

from fastai.layers import NormType, PixelShuffle_ICNR, ResBlock
from fastai.torch_core import apply_init
from fastai.vision.learner import create_body
from fastai.vision.models.unet import DynamicUnet

from .errors import PSSRError, fail
from .fileio import atomic_path
from .norm import PCT_HI, PCT_LO

__all__ = ["ARCHS", "LR_HEADS", "DEFAULT_META", "make_meta", "tile_noise_sigma", "PSSRNet", "build_model",
           "bottleneck_size", "find_weights", "widen_frames", "save_model", "load_model", "load_safe", "model_paths",
           "model_exists"]

ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
# ImageNet statistics averaged over RGB: a grey frame fed to the summed-RGB first conv sees the same activations
# as the pretrained network on that grey image.
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226
# DynamicUnet traces the encoder once to find where it downsamples; the layer structure does not depend on
# the size used, so one small fixed size keeps building cheap and identical at training and inference.
BUILD_SIZE = 64

DEFAULT_META = dict(
    scale=4, n_frames=1, lr_type="s", tile_sz=128, size=128, arch="resnet34", lr_space=False,
    self_attention=True, blur=True, blur_final=True, last_cross=True, bottle=True, weight_norm=True,
    residual=False, encoder_stride=32, lr_head="icnr", imagenet_norm=False, pretrained=False, noise_channel=False,
    norm={"lo": PCT_LO, "hi": PCT_HI}, crap_func=None, datasetname=None, epochs=0, best_valid_loss=None,
)


def make_meta(**kwargs) -> dict:
    """Metadata dict with the paper's defaults for everything not given."""
    unknown = set(kwargs) - set(DEFAULT_META)
    meta = {**DEFAULT_META, **{k: v for k, v in kwargs.items() if k in DEFAULT_META}}
    meta.update({k: kwargs[k] for k in unknown})
    return meta


def find_weights(arch: str, weights: Optional[str] = None) -> Path:
    """ImageNet weights file for `arch`: `weights` if given, else torchvision's file in the torch hub cache.

    Never downloads: PSSR machines are often offline, and a silent download would hide which weights were used."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            fail(p, "--weights file not found")
        return p
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(ckpt_dir.glob(f"{arch}-*.pth"))
    if not found:
        fail(None, f"--pretrain needs ImageNet weights for {arch}: none in {ckpt_dir}; copy torchvision's "
                   f"{arch}-*.pth there or pass --weights PATH (this tool never downloads)")
    return found[-1]


def adapt_first_conv(model: nn.Module, n_in: int, n_level: int = 0) -> None:
    """Give the ResNet stem `n_in` input channels: the centre frame gets the RGB-summed (grey) kernel, the
    other frames zero, so a multi-frame model starts as the single-frame one and learns what its neighbours add.

    The paper does not say how its stem takes 5 frames. fastai's adaptation keeps 3 channels and zeroes the rest
    (the net would start blind to 2 frames, one of them maybe the centre); spreading the kernel over all frames
    starts it as a temporal average, which blurs whatever moves: 0.10-0.16 dB lower on a held-out synthetic
    time-lapse after 20 minutes. `n_level` more channels go first, zero too (the noise level: `tile_noise_sigma`)."""
    old = model.conv1
    new = nn.Conv2d(n_level + n_in, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    with torch.no_grad():
        frames = _widen(old.weight.sum(dim=1, keepdim=True), (old.out_channels, n_in, *old.kernel_size), n_in)
        new.weight.copy_(F.pad(frames, (0, 0, 0, 0, n_level, 0)))
    model.conv1 = new


def widen_frames(model: nn.Module, state: dict, n_frames: int) -> dict:
    """A 1-frame model's state dict (`state`) for `model`, its `n_frames` twin, such that the twin computes
    exactly what the 1-frame model does: training then begins AT the 1-frame model and only has to learn what
    the neighbours add, which is all a short movie's few windows can teach.

    Frames enter twice: the stem, and `last_cross`, which concatenates the input to the last features (F of
    them). An input-side channel c of the 1-frame model (F + 1 of them) keeps its index, except the frame
    itself, which becomes the centre (F + n//2); the bottleneck's middle width grows too, its new channels
    appended. New input columns are zero, so neighbours change nothing yet; weights that are all new take
    `model`'s own initialization, harmless behind those zero columns, alive for training."""
    fresh = model.state_dict()
    out = {}
    for key, init in fresh.items():
        if key.endswith("weight_g"):
            continue
        if key.endswith("weight_v") and key[:-1] + "g" in fresh:  # weight norm (spectral norm has a weight_v too)
            pre = key[:-len("_v")]
            g, v = state[pre + "_g"], state[key]
            w = _widen(g * v / v.flatten(1).norm(dim=1).view(-1, *[1] * (v.ndim - 1)), init.shape, n_frames)
            norm = w.flatten(1).norm(dim=1)
            new_row = norm == 0
            out[key] = torch.where(new_row.view(-1, *[1] * (w.ndim - 1)), init, w)
            out[pre + "_g"] = torch.where(new_row.view(fresh[pre + "_g"].shape), fresh[pre + "_g"],
                                          norm.view(fresh[pre + "_g"].shape))
        elif state[key].shape == init.shape:
            out[key] = state[key]
        else:
            w = _widen(state[key], init.shape, n_frames)
            out[key] = torch.where(_new_mask(state[key].shape, init.shape, n_frames), init, w) if w.ndim == 1 else w
    return out


def _channel_map(size: int, new_size: int, n_frames: int) -> torch.Tensor:
    """Where each of `size` input-side channels goes among `new_size` (see `widen_frames`)."""
    idx = torch.arange(size)
    if new_size - size == n_frames - 1:  # features + frames: the single frame becomes the centre one
        idx[-1] = size - 1 + n_frames // 2
    return idx


def _widen(w: torch.Tensor, shape: torch.Size, n_frames: int) -> torch.Tensor:
    """`w` zero-padded to `shape`, its channels placed by `_channel_map` along every dimension that grew."""
    for d, (a, b) in enumerate(zip(w.shape, shape)):
        if a != b:
            big = w.new_zeros(*w.shape[:d], b, *w.shape[d + 1:])
            big.index_copy_(d, _channel_map(a, b, n_frames), w)
            w = big
    return w


def _new_mask(old: torch.Size, shape: torch.Size, n_frames: int) -> torch.Tensor:
    """True where a grown 1-d tensor (a bias) has no counterpart in the 1-frame model."""
    mask = torch.ones(shape[0], dtype=torch.bool)
    mask[_channel_map(old[0], shape[0], n_frames)] = False
    return mask


# Encoder downsampling -> create_body cut: 32 is the whole ResNet body (the paper's); 16 and 8 drop its last
# one or two stages.
ENCODER_CUTS = {32: -2, 16: -3, 8: -4}


def make_encoder(arch: str, n_in: int, weights_file: Optional[Path] = None, stride: int = 32,
                 n_level: int = 0) -> nn.Module:
    """ResNet body (no pool/fc) with an `n_in`-channel stem, optionally from an ImageNet state dict.

    `stride` 16 drops the last stage: an `lr_space` U-Net works on LR pixels, 4x coarser than HR ones, and at
    stride 32 a 32-px LR training crop reaches a 1x1 bottleneck whose 3x3 convs never see a neighbour, so the
    model breaks on any larger input (measured: output uncorrelated with the input on a 128-px LR frame)."""
    if stride not in ENCODER_CUTS:
        fail(None, f"encoder stride must be one of {sorted(ENCODER_CUTS)}, not {stride}")
    if arch not in ARCHS:
        fail(None, f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    model = ARCHS[arch](weights=None)
    if weights_file is not None:
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except Exception as e:
            fail(weights_file, f"not ImageNet weights for {arch} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    adapt_first_conv(model, n_in, n_level)
    # The stem is adapted already, so create_body must leave it alone (n_in=3 means "no change" there).
    return create_body(model, n_in=3, pretrained=weights_file is not None, cut=ENCODER_CUTS[stride])


HAAR_HH = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]) / 2
LEVEL_GAIN = 10.0  # the level enters the U-Net x10: EM LR reads 0.07-0.37 (none to 2 photons per pixel)


def tile_noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """(B,) noise sigma of each image's centre frame (B, n_frames, h, w), read from the image alone: the median
    absolute finest diagonal Haar coefficient over 0.6745 (Donoho's wavelet estimate, as skimage's
    `estimate_sigma`; fine structure adds a floor: 4x-undersampled ISBI EM with no added noise reads 0.09).
    A blind network has to guess from local evidence how much of what it sees is noise; told the level, it
    restores LR noisier than any it trained on (README, "What to expect"). Part of the model, so training and
    restoration read it the same way, from each tile."""
    c = x[:, x.shape[1] // 2:x.shape[1] // 2 + 1].float()
    diagonal = F.conv2d(c, HAAR_HH.to(c.device), stride=2)  # a convolution, not slicing: traces at any size
    return diagonal.abs().flatten(1).median(dim=1).values / 0.6745


class PSSRNet(nn.Module):
    """LR image in [0,1] (B, n_frames, h, w) -> HR image (B, 1, h*scale, w*scale) in ~[0,1].

    Default path (the original PSSR): bilinear x`scale` first, then the U-Net at HR resolution.
    `lr_space`: the U-Net runs on the LR image (scale² fewer pixels) and learnable ICNR pixel-shuffle layers
    upsample at the end (the paper's sub-pixel convolution idea).
    `residual`: the output is added to the bilinear upsampling of the centre frame, so the U-Net learns only the
    correction. Neither the paper nor the original does this, so it is opt-in (`train.py --residual`); it
    helps short trainings (README, "What to expect": +0.12 dB on held-out real EM after 3 GPU epochs).
    lr_space always uses it: its last_cross sees only the LR input.
    `noise_channel`: the U-Net also gets the input's noise level (`tile_noise_sigma`) as a constant channel before the
    frames (first, so `widen_frames` maps a 1-frame model's input channels as without it)."""

    def __init__(self, unet: nn.Module, scale: int, lr_space: bool, imagenet_norm: bool, residual: bool = False,
                 head: Optional[nn.Module] = None, noise_channel: bool = False):
        super().__init__()
        self.unet, self.head = unet, head
        self.scale, self.lr_space, self.imagenet_norm = scale, lr_space, imagenet_norm
        self.residual, self.noise_channel = residual or lr_space, noise_channel

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x if self.lr_space else self.upsample(x)
        if self.imagenet_norm:
            inp = (inp - IMAGENET_MEAN) / IMAGENET_STD
        if self.noise_channel:
            level = tile_noise_sigma(x).to(inp.dtype).view(-1, 1, 1, 1) * LEVEL_GAIN
            inp = torch.cat([torch.zeros_like(inp[:, :1]) + level, inp], dim=1)
        out = self.unet(inp)
        if self.lr_space:
            out = self.head(out)
        if self.residual:
            out = out + self.centre_up(x)
        return out.as_subclass(torch.Tensor)  # plain tensor for callers outside fastai

    def centre_up(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinear upsampling of the centre frame (the frame the HR target belongs to)."""
        c = x.shape[1] // 2
        return self.upsample(x[:, c:c + 1])


LR_HEADS = ("subpixel", "icnr")  # the first is what train.py builds; models without `lr_head` have `icnr`


def sr_head(nf: int, scale: int, weight_norm: bool, kind: str = LR_HEADS[0]) -> nn.Sequential:
    """ICNR pixel-shuffle x2 steps (1x1 conv, ReLU, shuffle) up to `scale`, then one channel out.

    `icnr` (models before `lr_head` was recorded): every step keeps `nf` channels, the last one at HR size,
    then a 1x1 conv to one channel. `subpixel`: the last x2 step is linear, a 1x1 conv straight to its 4
    sub-pixels (ESPCN's sub-pixel convolution), so no feature map of `nf` channels at HR size is made: on a CPU
    the `icnr` head's last step took half of each training step (its ReLU and the copies around it); with
    `subpixel` quick.sh trains 1.5x more images per second, to the same held-out quality (README, Step 3)."""
    steps = {2: 1, 4: 2, 8: 3}.get(scale)
    if steps is None:
        fail(None, f"--lr_space needs a scale of 2, 4 or 8, not {scale}")
    if kind not in LR_HEADS:
        fail(None, f"unknown lr_head '{kind}'; choose one of {', '.join(LR_HEADS)}")
    norm = NormType.Weight if weight_norm else None
    if kind == "icnr":
        layers = [PixelShuffle_ICNR(nf, nf, scale=2, norm_type=norm) for _ in range(steps)]
        return nn.Sequential(*layers, nn.Conv2d(nf, 1, kernel_size=1))
    layers = [PixelShuffle_ICNR(nf, nf, scale=2, norm_type=norm) for _ in range(steps - 1)]
    return nn.Sequential(*layers, nn.Conv2d(nf, 4, kernel_size=1), nn.PixelShuffle(2))


def add_bottleneck(unet: DynamicUnet, norm_type) -> None:
    """The original's `bottle`: halve the middle channels of the final ResBlock, keeping its output width.

    fastai 2.8's `bottle=True` halves the block's output instead, which breaks the following 1x1 conv."""
    layers = unet.layers
    i = next(i for i, m in enumerate(layers) if isinstance(m, ResBlock))
    ni = layers[i].convpath[0][0].in_channels
    layers[i] = ResBlock(1, ni, ni, nh2=ni // 2, norm_type=norm_type)
    apply_init(layers[i], nn.init.kaiming_normal_)


def zero_output(layer: nn.Module) -> None:
    """Zero the last conv's weights (the magnitude `g` under weight norm) and bias: a residual model then
    starts exactly at bilinear upsampling, and every step of training improves on it."""
    conv = [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        (conv.weight_g if hasattr(conv, "weight_g") else conv.weight).zero_()
        if conv.bias is not None:
            conv.bias.zero_()


def build_model(meta: dict, weights_file: Optional[Path] = None) -> PSSRNet:
    """The network described by `meta` (see `DEFAULT_META`), with random or ImageNet encoder weights."""
    meta = make_meta(**meta)
    n_in = int(meta["n_frames"])
    encoder = make_encoder(meta["arch"], n_in, weights_file, int(meta["encoder_stride"]), int(meta["noise_channel"]))
    # lr_space: the U-Net ends in features for the sub-pixel head instead of the image.
    n_out = 32 if meta["lr_space"] else 1
    unet = DynamicUnet(encoder, n_out, (BUILD_SIZE, BUILD_SIZE), blur=meta["blur"], blur_final=meta["blur_final"],
                       self_attention=meta["self_attention"], last_cross=meta["last_cross"], bottle=False,
                       norm_type=NormType.Weight if meta["weight_norm"] else None)
    if meta["bottle"] and meta["last_cross"]:
        add_bottleneck(unet, NormType.Weight if meta["weight_norm"] else None)
    head = sr_head(n_out, int(meta["scale"]), meta["weight_norm"], meta["lr_head"]) if meta["lr_space"] else None
    if meta["residual"] or meta["lr_space"]:
        zero_output(head if meta["lr_space"] else unet)
    return PSSRNet(unet, int(meta["scale"]), bool(meta["lr_space"]), bool(meta["imagenet_norm"]),
                   bool(meta["residual"]), head, bool(meta["noise_channel"]))


def bottleneck_size(meta: dict, size: int) -> int:
    """Side of the deepest encoder feature map for an HR crop of `size` (the U-Net input is LR for lr_space)."""
    side = size // int(meta["scale"]) if meta["lr_space"] else size
    return side // int(meta["encoder_stride"])


def model_paths(name: str, model_dir: Path = Path("models")) -> dict:
    """Files of model `name`: pth (weights), json (metadata), pkl (fastai export), opt (optimizer state)."""
    d = Path(model_dir)
    return {k: d / f"{name}.{k}" for k in ("pth", "json", "pkl", "opt")}


def model_exists(name: str, model_dir: Path = Path("models")) -> bool:
    return any(p.exists() for k, p in model_paths(name, model_dir).items() if k != "opt")


def save_model(model: nn.Module, meta: dict, name: str, model_dir: Path = Path("models"),
               opt_state: Optional[dict] = None) -> Path:
    """Write `{name}.pth` then `{name}.json` (and `{name}.opt` when given), each atomically.

    The json goes last, so a json on disk always describes complete weights."""
    paths = model_paths(name, model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(paths["pth"]) as tmp:
        torch.save(state, tmp)
    if opt_state is not None:  # plain containers only (training.plain_opt_state), loadable with weights_only
        with atomic_path(paths["opt"]) as tmp:
            torch.save(opt_state, tmp)
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(make_meta(**meta), indent=1, default=str))
    return paths["pth"]


def read_meta(name: str, model_dir: Path = Path("models")) -> dict:
    paths = model_paths(name, model_dir)
    if not paths["pth"].is_file() or not paths["json"].is_file():
        have = sorted(p.stem for p in Path(model_dir).glob("*.json")) if Path(model_dir).is_dir() else []
        fail(paths["pth"], f"model '{name}' not found (needs {name}.pth and {name}.json); "
                           f"models in {model_dir}: {', '.join(have) or 'none'}")
    try:
        return make_meta(**json.loads(paths["json"].read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        fail(paths["json"], f"unreadable model metadata ({e})")


def load_safe(path: Path, what: str):
    """`torch.load` that never unpickles code: anything beyond tensors, numbers and containers is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PSSRError(f"{path}: {what} holds Python objects beyond tensors and numbers; refusing to unpickle it "
                        f"(a crafted file could run code)") from None
    except Exception as e:
        raise PSSRError(f"{path}: unreadable {what}, truncated or not written by PSSR ({type(e).__name__})") from None


def load_model(name: str, model_dir: Path = Path("models"), device: str = "cpu") -> Tuple[PSSRNet, dict]:
    """(model in eval mode on `device`, metadata) for `{model_dir}/{name}.pth` + `.json`."""
    meta = read_meta(name, model_dir)
    model = build_model(meta)
    pth = model_paths(name, model_dir)["pth"]
    state = load_safe(pth, "model weights")
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise PSSRError(f"{pth}: weights do not match its metadata ({type(e).__name__})") from None
    return model.to(device).eval(), meta
