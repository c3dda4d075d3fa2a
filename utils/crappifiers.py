"""Crappifiers: turn a clean high-resolution tile into a plausible fast, low-dose, undersampled scan.

Each crappifier is a pure function `f(img, scale, rng) -> lr` of a float32 2D image in
[0, 1], returning float32 in [0, 1] of shape (h // scale, w // scale). Randomness comes
only from `rng`, so a tile's seed fixes its low-resolution version. Adding one for a new
lab data set = one function decorated with `@crappifier("name")`.

Names follow the original PSSR command lines (`--crap_func new_crap_AG_SP` etc.).
"""
from typing import Callable, Dict

import numpy as np
from skimage import filters
from skimage.transform import resize
from skimage.util import random_noise

from .errors import fail

__all__ = ["CRAPPIFIERS", "crappifier", "crappify", "downsample"]

Crappifier = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CRAPPIFIERS: Dict[str, Crappifier] = {}


def crappifier(*names: str) -> Callable[[Crappifier], Crappifier]:
    """Register a crappifier under one or more `--crap_func` names."""
    def register(f: Crappifier) -> Crappifier:
        for name in names:
            CRAPPIFIERS[name] = f
        return f
    return register


def crappify(name: str, img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Apply the crappifier registered as `name`; unknown names list the known ones."""
    if name not in CRAPPIFIERS:
        fail(None, f"unknown crappifier '{name}'; known: {', '.join(sorted(CRAPPIFIERS))}")
    return CRAPPIFIERS[name](np.asarray(img, np.float32), scale, rng)


def downsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Order-1 spline (bilinear) downsampling by `scale`, as in the paper.

    No anti-aliasing blur: a fast scan samples sparse points, it does not average the
    pixels it skips (the original's scipy `zoom(order=1)` did not blur either)."""
    h, w = img.shape[-2:]
    out = resize(img, (h // scale, w // scale), order=1, mode="reflect", anti_aliasing=False,
                 preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


def _local_gaussian(img: np.ndarray, sigma: float, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise whose variance follows the blurred local brightness.

    Shot-noise-like: brighter regions of a short-dwell scan are noisier in absolute terms."""
    lvar = filters.gaussian(img, sigma=sigma) + 1e-10
    return random_noise(img, mode="localvar", local_vars=lvar * gain, rng=rng)


@crappifier("no_crap")
def no_crap(img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Downsampling only: the network learns pure upsampling."""
    return downsample(img, scale)


@crappifier("em_AG_D_sameas_preprint")
def em_ag_d(img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's EM crappifier: additive Gaussian noise, then order-1 spline downsampling.

    Noise parameters (local variance 0.05 x brightness blurred with sigma 3) are the
    original's. The original returned a (down, up) tuple the tiler could not save; this
    returns the downsampled image only (the tiler upsamples with --upsample)."""
    return downsample(_local_gaussian(img, sigma=3, gain=0.05, rng=rng), scale)


@crappifier("new_crap_AG_SP")
def fluo_sp_ag_d(img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's fluorescence crappifier: salt-and-pepper on 0.5% of pixels, then additive
    Gaussian noise, then order-1 spline downsampling.

    Follows the paper's order and amount. The original code of this name added the Gaussian
    noise first and then salt AND pepper at 0.005 each (1% of pixels); that variant is
    `new_crap_AG_SP_original`. Gaussian parameters (0.5 x brightness blurred with sigma 5)
    are the original's. The original's rescale-by-max step is dropped: salt pins the max at
    1, so it did nothing."""
    x = random_noise(img, mode="s&p", amount=0.005, rng=rng)
    return downsample(_local_gaussian(x, sigma=5, gain=0.5, rng=rng), scale)


@crappifier("new_crap_AG_SP_original")
def fluo_ag_sp_d_original(img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The original code's `new_crap_AG_SP`: Gaussian noise first, then salt (0.5%) and pepper
    (0.5%) separately, then downsampling. Kept so old data sets can be regenerated."""
    x = _local_gaussian(img, sigma=5, gain=0.5, rng=rng)
    x = random_noise(x, mode="salt", amount=0.005, rng=rng)
    x = random_noise(x, mode="pepper", amount=0.005, rng=rng)
    return downsample(x, scale)


# Photons at full brightness: what skimage's Poisson mode used on the original's 8-bit tiles.
POISSON_PEAK = 256


@crappifier("poisson", "em_P_D_001")
def poisson_d(img: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (shot) noise at `POISSON_PEAK` photons for white, then order-1 spline downsampling.

    The peak is explicit because skimage infers it from the number of distinct values, which
    for float tiles would make the noise vanish. The original `em_P_D_001` passed a fixed
    seed=1, giving every tile the same noise draw; here the tile's own generator is used."""
    x = rng.poisson(np.clip(img, 0, 1) * POISSON_PEAK) / POISSON_PEAK
    return downsample(np.clip(x, 0, 1), scale)
