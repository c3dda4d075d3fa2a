"""Training losses: the paper's MSE, L1, and either with an SSIM term that scores what the evaluation scores.

Why an SSIM term: a network trained on a pixel loss predicts the conditional mean of the HR given the LR,
smoother than any real HR image. On held-out real EM a 20-minute quick.sh model gained +0.31 dB but only
+0.008 SSIM; halfway between its output and bilinear scored higher SSIM (+0.015) at lower PSNR. SSIM's
contrast term wants local variance matched to the truth, which no pixel loss asks for.

The term is computed as metric_gen.py computes SSIM: after fitting the prediction to the target with one
gain and offset per image (norm_minmse), with scikit-image's 7x7 uniform window and data range 1, so a
change of global contrast, which the evaluation undoes, earns nothing.
"""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from .errors import fail

__all__ = ["LOSSES", "minmse_pair", "box_mean", "ssim_map", "PixelSSIMLoss", "sr_loss", "loss_name"]

LOSSES = ("mse", "l1")
_C1, _C2 = 0.01 ** 2, 0.03 ** 2  # SSIM's constants for data range 1


def minmse_pair(pred: torch.Tensor, targ: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(target, prediction) as utils.metrics.norm_minmse returns them, per image and channel: both mean-free,
    the prediction scaled to minimize its MSE to the target."""
    dims = tuple(range(2, pred.ndim))
    p, t = pred - pred.mean(dims, keepdim=True), targ - targ.mean(dims, keepdim=True)
    gain = (p * t).sum(dims, keepdim=True) / (p * p).sum(dims, keepdim=True).clamp_min(1e-12)
    return t, gain * p


def box_mean(t: torch.Tensor, win: int) -> torch.Tensor:
    """Mean over every `win` x `win` window of NCHW `t` (valid positions), from running sums: a few
    operations per pixel where avg_pool2d takes win**2 (half the CPU cost of the SSIM term)."""
    c = F.pad(t.cumsum(2), (0, 0, 1, 0))
    rows = c[:, :, win:] - c[:, :, :-win]
    c = F.pad(rows.cumsum(3), (1, 0))
    return (c[..., win:] - c[..., :-win]) / (win * win)


def ssim_map(x: torch.Tensor, y: torch.Tensor, win: int = 7) -> torch.Tensor:
    """Local SSIM of NCHW images in a `win` x `win` uniform window (valid positions only), data range 1,
    with scikit-image's sample covariance."""
    c = x.shape[1]
    mx, my, mxx, myy, mxy = box_mean(torch.cat([x, y, x * x, y * y, x * y], 1), win).split(c, 1)
    cov = win * win / (win * win - 1)
    sxx, syy, sxy = cov * (mxx - mx * mx), cov * (myy - my * my), cov * (mxy - mx * my)
    return ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx * mx + my * my + _C1) * (sxx + syy + _C2))


class PixelSSIMLoss:
    """`pixel(pred, targ) + ssim_weight * (1 - SSIM)` of the prediction fitted to the target; a class, not a
    closure, so fastai's learner export pickles it with the standard pickle module."""

    def __init__(self, pixel: Callable, ssim_weight: float):
        self.pixel, self.ssim_weight = pixel, float(ssim_weight)

    def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pred.device.type, enabled=False):  # variances of [0,1] images need float32
            p, t = pred.float(), targ.float()
            t0, p0 = minmse_pair(p, t)
            return self.pixel(p, t) + self.ssim_weight * (1 - ssim_map(p0, t0).mean())

    def __repr__(self) -> str:
        return _in_words(self.pixel.__name__, self.ssim_weight)


def _in_words(pixel: str, ssim_weight: float) -> str:
    return f"{pixel} + {ssim_weight:g} x (1 - SSIM)" if ssim_weight else pixel


def sr_loss(loss: str = "mse", ssim_weight: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel loss `loss` (one of LOSSES), plus `ssim_weight` x (1 - SSIM) when that is above 0."""
    if loss not in LOSSES:
        fail(None, f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    pixel = F.l1_loss if loss == "l1" else F.mse_loss
    return PixelSSIMLoss(pixel, ssim_weight) if ssim_weight else pixel


def loss_name(meta: dict) -> str:
    """The training loss a model's metadata records, in words (`mse`, `l1 + 0.1 x (1 - SSIM)`)."""
    return _in_words(str(meta.get("loss", "mse")), meta.get("ssim_weight") or 0)
