"""What a low-resolution scan shows of how it was acquired, read from the image alone: its noise level and how
much smoother it is along its scan lines (x, the fast axis) than across them. quick.sh's planner matches the
crappifier to a lab's real LR with them (utils.quick); train.py records them for its validation LR in the
model's `.json`, and image_gen.py says when the LR it restores is noisier, or smoother along its lines (a
detector's bandwidth), than any the model trained on: there its gain over bilinear vanishes."""
from typing import Iterable, List, Tuple

import numpy as np

from .norm import normalize, percentiles
from .sources import Source

__all__ = ["CROP", "SMOOTHER_ALONG_X", "NOISIER", "NOISIER_TOLD", "CLEAN_GAIN", "noise_sigma", "noise_level",
           "fast_axis_ratio", "centre_crop", "lr_sample", "lr_reference", "unlike_training"]

CROP = 512  # px: what the estimates read of a frame (noise and neighbour statistics need no more)
# The training LR is remembered by its ends (lr_reference): the 10th percentile of its validation tiles'
# fast-axis ratios (its smoother end) and the largest of their noise levels. Input below SMOOTHER_ALONG_X times
# the first, or above NOISIER times the second, is LR the model never trained on (image_gen warns). On real EM
# (README, "LR unlike the training LR") the default model's ends read 0.85 and 0.17: white-noise LR 0.92-0.99
# and noise-free LR 0.92 pass; LR smoothed along x by a Gaussian of 0.7 LR px (0.43, gain over bilinear +0.07
# dB) or a first-order response (0.64, +0.11) do not; 20 photons per white pixel (1.11x, +0.47 dB) passes, 5
# (1.67x, +0.21) and 2 (2.3x, -0.04) do not. A model trained on LR like the last by the crappifier's strength
# alone read 0.23: 5 photons pass (1.27x, +0.50), 2 do not (1.75x, +0.07); with shot noise on the LR pixels
# (LR_DIR now; --crap_counts) 0.44: 2 photons pass (0.91x, +0.46). A model told the noise level
# (`--noise_channel`, quick.sh's for EM) goes further: reference 0.17, 5 photons +0.29-0.30 dB and sigma 0.3
# (gauss_hi) +0.29-0.31, 2 photons +0.10; its limit is NOISIER_TOLD.
SMOOTHER_ALONG_X = 0.8
NOISIER = 1.4
NOISIER_TOLD = 2.0
# LR cleaner than the training LR's cleanest frame is unlike it too, but costs only a model that gains less than
# CLEAN_GAIN dB over bilinear on noise-free LR of its validation tiles (`clean_gain_db`, train.py): real EM models
# gain on noise-free LR (+0.44 dB held out); a 1-frame model of a small nuclei movie gained +0.01 there and lost
# 0.28 dB to bilinear on noise-free held-out LR (bench/RESULTS.md, "Milder than the crappifier").
CLEAN_GAIN = 0.1


def noise_sigma(img: np.ndarray) -> float:
    """Gaussian noise sigma of a [0, 1] image (wavelet estimate, Donoho): works on a single noisy frame."""
    from skimage.restoration import estimate_sigma
    return float(estimate_sigma(np.asarray(img, np.float64)))


def fast_axis_ratio(img: np.ndarray) -> float:
    """Variance of neighbour differences along x over that along y: ~1 for white noise on isotropic structure,
    lower where a detector's bandwidth smooths the scan lines (signal and noise) along x."""
    img = np.asarray(img, np.float64)
    along, across = np.diff(img, axis=1).var(), np.diff(img, axis=0).var()
    if across <= 1e-12:  # a blank frame (1: no evidence of smoothing), or lines constant down the columns
        return 1.0 if along <= 1e-12 else float("inf")
    return float(along / across)


def centre_crop(src: Source, c: int = 0, z: int = 0, t: int = 0, side: int = CROP) -> np.ndarray:
    """The central `side` x `side` pixels of a frame (all of a smaller one), as stored: memory bounded by the
    crop, not the frame (a 24576² EM slice)."""
    h, w = min(src.ny, side), min(src.nx, side)
    return src.read(c, z, t, ((src.ny - h) // 2, (src.nx - w) // 2, h, w))


def lr_sample(src: Source) -> np.ndarray:
    """The middle frame's central crop, normalized by its own percentiles: what the estimates read of an LR
    image."""
    f = centre_crop(src, 0, src.nz // 2, src.nt // 2)
    return normalize(f, *percentiles(f))


def noise_level(img: np.ndarray) -> float:
    """`noise_sigma` of an image normalized by its own percentiles: comparable between a training tile and a
    real LR frame whatever their ranges."""
    img = np.asarray(img, np.float32)
    return noise_sigma(normalize(img, *percentiles(img)))


def lr_reference(frames: Iterable[np.ndarray]) -> dict:
    """The ends of a model's training LR, for its `.json`, from its validation LR frames: the 10th percentile of
    their fast-axis ratios (the smoother end; structure alone spreads them), the largest noise level (with a
    drawn noise range, its top) and the least (its bottom)."""
    frames = list(frames)
    levels = [noise_level(f) for f in frames]
    return {"lr_fast_axis_ratio": float(np.percentile([fast_axis_ratio(f) for f in frames], 10)),
            "lr_noise_level": float(max(levels)), "lr_noise_level_min": float(min(levels))}


def unlike_training(src: Source, meta: dict) -> List[Tuple[str, float]]:
    """What the LR image `src` shows that the model (`meta`, its `.json`) never trained on: ("smoother", its
    fast-axis ratio) below SMOOTHER_ALONG_X times the training LR's smoother end, ("noisier", its noise level)
    above NOISIER (NOISIER_TOLD for a model told the noise level) times the training LR's noisiest, ("cleaner",
    its noise level) below the training LR's cleanest for a model that gained under CLEAN_GAIN dB over bilinear on
    noise-free LR. Empty for a model that recorded none of them (trained before they were)."""
    ratio, noise, least = meta.get("lr_fast_axis_ratio"), meta.get("lr_noise_level"), meta.get("lr_noise_level_min")
    weak_clean = least is not None and meta.get("clean_gain_db", CLEAN_GAIN) < CLEAN_GAIN
    if not (ratio or noise or weak_clean):
        return []
    img, found = lr_sample(src), []
    if ratio and (r := fast_axis_ratio(img)) < SMOOTHER_ALONG_X * ratio:
        found.append(("smoother", r))
    n = noise_level(img) if noise or weak_clean else None
    if noise and n > (NOISIER_TOLD if meta.get("noise_channel") else NOISIER) * noise:
        found.append(("noisier", n))
    if weak_clean and n < least:
        found.append(("cleaner", n))
    return found
