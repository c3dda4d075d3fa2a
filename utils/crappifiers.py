"""Crappifiers: turn a clean high-resolution tile into a plausible fast, low-dose, undersampled scan.

Each crappifier is a pure function `f(img, scale, rng, strength=1.0) -> lr` of a float32
2D image in [0, 1], returning float32 in [0, 1] of shape (h // scale, w // scale).
Randomness comes only from `rng`, so a tile's seed fixes its low-resolution version.
`strength` scales the noise's standard deviation (1 = the paper's level): real LR noise
varies between sessions and is unknown, so training can draw it per tile from a range
(`draw_strength`). Adding one for a new lab data set = one function decorated with
`@crappifier("name")`.

Names follow the original PSSR command lines (`--crap_func new_crap_AG_SP` etc.).
"""
from typing import Callable, Dict, Tuple

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from .errors import PSSRError, fail

__all__ = ["CRAPPIFIERS", "crappifier", "crappify", "downsample", "parse_strength", "parse_blur", "parse_bandwidth",
           "draw_strength", "draw_bandwidth", "parse_share", "parse_counts", "draw_counts", "draw_clean", "probe_blur",
           "scan_bandwidth", "shot_noise", "scan_lr"]

Crappifier = Callable[..., np.ndarray]
CRAPPIFIERS: Dict[str, Crappifier] = {}


def crappifier(*names: str) -> Callable[[Crappifier], Crappifier]:
    """Register a crappifier under one or more `--crap_func` names."""
    def register(f: Crappifier) -> Crappifier:
        for name in names:
            CRAPPIFIERS[name] = f
        return f
    return register


def check_crappifier(name: str) -> None:
    if name not in CRAPPIFIERS:
        fail(None, f"unknown crappifier '{name}'; known: {', '.join(sorted(CRAPPIFIERS))}")


def crappify(name: str, img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Apply the crappifier registered as `name` at noise `strength`; unknown names list the known ones."""
    check_crappifier(name)
    img = np.asarray(img, np.float32)
    if strength == 1.0:  # crappifiers registered without a strength parameter keep working
        return CRAPPIFIERS[name](img, scale, rng)
    try:
        return CRAPPIFIERS[name](img, scale, rng, strength)
    except TypeError as e:
        raise PSSRError(f"crappifier '{name}' takes no strength parameter, so --crap_strength cannot vary it "
                        f"({e})") from None


def _parse_range(value, flag: str, unit: str) -> Tuple[float, float]:
    """One value (`1`) or a range (`0.25,1.5`, or a list from fire) as (lo, hi)."""
    try:
        parts = [float(v) for v in (str(value).strip("[]()").split(",") if not isinstance(value, (list, tuple))
                                    else value)]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 0 <= parts[0] <= parts[1]:
        fail(None, f"{flag} {value}: give one value or 'lo,hi' with 0 <= lo <= hi ({unit})")
    return parts[0], parts[1]


def parse_strength(value) -> Tuple[float, float]:
    """`--crap_strength`: one level (`1`) or a range (`0.25,1.5`) of the paper's noise."""
    return _parse_range(value, "--crap_strength", "1 = the paper's noise")


def parse_blur(value) -> Tuple[float, float]:
    """`--crap_blur`: one probe-blur sigma or a range, in HR pixels (0 = the paper's point sampling)."""
    return _parse_range(value, "--crap_blur", "Gaussian sigma in HR pixels; 0 = none, as the paper")


def parse_bandwidth(value) -> Tuple[float, float]:
    """`--crap_bandwidth`: one detector-bandwidth sigma or a range, in LR px along x (0 = none, as the paper)."""
    return _parse_range(value, "--crap_bandwidth", "Gaussian sigma along x in LR px; 0 = none, as the paper")


def parse_counts(value) -> Tuple[float, float]:
    """`--crap_counts`: detector counts for a white LR pixel, one value or a range (0 = none, as the paper)."""
    counts = _parse_range(value, "--crap_counts", "counts for a white LR pixel; 0 = none, as the paper")
    if counts[0] == 0 < counts[1]:
        fail(None, f"--crap_counts {value}: a range needs lo > 0 (0 counts is a scan without signal)")
    return counts


def draw_strength(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform in [lo, hi] (noise levels span orders of magnitude); uniform when lo is 0."""
    if lo == hi:
        return lo
    if lo == 0:
        return float(rng.uniform(0, hi))
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def parse_share(value, flag: str = "--crap_bandwidth_share") -> float:
    """A share of the training stacks that get a degradation (`--crap_bandwidth_share`, `--crap_counts_share`),
    from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        fail(None, f"{flag} must be a share from 0 to 1, not {value!r}")
    return float(value)


def _drawn(rng: np.random.Generator, on: bool, share: float) -> bool:
    """Whether this stack gets a degradation that is `on` for a `share` of the stacks. Nothing is drawn when it
    is off, and no coin when every stack gets it, so the seeds of runs without either keep their pairs."""
    return on and share > 0 and (share >= 1 or rng.random() < share)


def draw_bandwidth(rng: np.random.Generator, sigmas: Tuple[float, float], share: float = 1.0) -> float:
    """A detector-bandwidth sigma, uniform in `sigmas`, for a `share` of the stacks (0 for the rest: white noise)."""
    return float(rng.uniform(*sigmas)) if _drawn(rng, sigmas[1] > 0, share) else 0.0


def draw_counts(rng: np.random.Generator, counts: Tuple[float, float], share: float = 1.0) -> float:
    """Detector counts for one stack, log-uniform in `counts`, for a `share` of the stacks (0 for the rest: no
    shot noise)."""
    return draw_strength(rng, *counts) if _drawn(rng, counts[1] > 0, share) else 0.0


def draw_clean(rng: np.random.Generator, share: float) -> bool:
    """Whether this stack is crappified without any noise (`--crap_clean_share`): nearly noise-free real LR
    holds detail that a model trained on noisy LR alone smooths away as if it were noise."""
    return _drawn(rng, True, share)


def probe_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each HR frame before a crappifier samples it: a probe or pinhole wider than an HR pixel,
    or a detector integrating while the beam moves, which the paper's point-sampling crappifiers leave out."""
    if sigma <= 0:
        return frames
    return np.stack([ndimage.gaussian_filter(f, sigma, mode="reflect", truncate=3.0) for f in frames])


def scan_bandwidth(lr: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth crappified LR frames along x, the fast scan axis, signal and noise alike: a detector chain too slow
    for a short dwell, which blurs a fast scan along its lines and correlates its noise there (the paper's
    crappifiers draw white noise). Zero phase: real scanners compensate the detector's lag."""
    if sigma <= 0:
        return lr
    return ndimage.gaussian_filter1d(lr, sigma, axis=-1, mode="reflect", truncate=3.0)


def shot_noise(lr: np.ndarray, counts: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise of each LR pixel (each one dwell of a point scan): Poisson at `counts` for white, on top of a
    crappifier's noise. The paper's crappifiers add theirs to the HR before downsampling, which averages it,
    and clip it to [0, 1]: on real EM the EM crappifier's noise level (lrstats.noise_level) stops rising near 3x
    the paper's strength (0.20 at 3x, 0.23 at 6x), where a scan at 5 photons per white pixel reads 0.29."""
    if counts <= 0:
        return lr
    return np.clip(rng.poisson(np.clip(lr, 0, 1) * counts) / counts, 0, 1).astype(np.float32)


def scan_lr(name: str, img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0,
            counts: float = 0.0, bandwidth: float = 0.0) -> np.ndarray:
    """One LR frame as training draws it: the crappifier, shot noise on its pixels, then the detector's
    bandwidth (which smooths that noise too). The one place the order lives, so quick.sh's plan measures the
    LR train.py will see."""
    return scan_bandwidth(shot_noise(crappify(name, img, scale, rng, strength), counts, rng), bandwidth)


def downsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Order-1 spline (bilinear) downsampling by `scale`, as in the paper.

    No anti-aliasing blur: a fast scan samples sparse points, it does not average the
    pixels it skips (the original's scipy `zoom(order=1)` did not blur either)."""
    h, w = img.shape[-2:]
    out = resize(img, (h // scale, w // scale), order=1, mode="reflect", anti_aliasing=False,
                 preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


def _salt_pepper(img: np.ndarray, amount: float, rng: np.random.Generator, salt: float = 0.5) -> np.ndarray:
    """`amount` of the pixels set to 1 (a `salt` share of them) or 0, as scikit-image's random_noise 's&p'
    (which draws twice, in float64), from one float32 uniform draw."""
    if amount <= 0:
        return img
    u = rng.random(img.shape, dtype=np.float32)
    return np.where(u < amount * salt, 1, np.where(u < amount, 0, img)).astype(np.float32, copy=False)


def _local_gaussian(img: np.ndarray, sigma: float, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise whose variance follows the blurred local brightness, clipped to [0, 1].

    Shot-noise-like: brighter regions of a short-dwell scan are noisier in absolute terms. What
    scikit-image's random_noise 'localvar' draws, in float32: random_noise's float64 work was half of the
    fluorescence crappifier's time (4.3 -> 3.0 ms per 256² frame, which a 5-frame sample pays 5 times)."""
    if gain == 0:
        return img
    lvar = ndimage.gaussian_filter(np.asarray(img, np.float32), sigma, mode="nearest", truncate=4.0) + 1e-10
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img + noise * np.sqrt(lvar * gain), 0, 1)


@crappifier("no_crap")
def no_crap(img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Downsampling only: the network learns pure upsampling."""
    return downsample(img, scale)


@crappifier("em_AG_D_sameas_preprint")
def em_ag_d(img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The paper's EM crappifier: additive Gaussian noise, then order-1 spline downsampling.

    Noise parameters (local variance 0.05 x brightness blurred with sigma 3) are the
    original's. The original returned a (down, up) tuple the tiler could not save; this
    returns the downsampled image only (the tiler upsamples with --upsample)."""
    return downsample(_local_gaussian(img, sigma=3, gain=0.05 * strength ** 2, rng=rng), scale)


@crappifier("new_crap_AG_SP")
def fluo_sp_ag_d(img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The paper's fluorescence crappifier: salt-and-pepper on 0.5% of pixels, then additive
    Gaussian noise, then order-1 spline downsampling.

    Follows the paper's order and amount. The original code of this name added the Gaussian
    noise first and then salt AND pepper at 0.005 each (1% of pixels); that variant is
    `new_crap_AG_SP_original`. Gaussian parameters (0.5 x brightness blurred with sigma 5)
    are the original's. The original's rescale-by-max step is dropped: salt pins the max at
    1, so it did nothing."""
    x = _salt_pepper(img, 0.005 * strength, rng)
    return downsample(_local_gaussian(x, sigma=5, gain=0.5 * strength ** 2, rng=rng), scale)


@crappifier("new_crap_AG_SP_original")
def fluo_ag_sp_d_original(img: np.ndarray, scale: int, rng: np.random.Generator,
                          strength: float = 1.0) -> np.ndarray:
    """The original code's `new_crap_AG_SP`: Gaussian noise first, then salt (0.5%) and pepper
    (0.5%) separately, then downsampling. Kept so old data sets can be regenerated."""
    x = _local_gaussian(img, sigma=5, gain=0.5 * strength ** 2, rng=rng)
    x = _salt_pepper(x, 0.005 * strength, rng, salt=1.0)
    x = _salt_pepper(x, 0.005 * strength, rng, salt=0.0)
    return downsample(x, scale)


# Photons at full brightness: what skimage's Poisson mode used on the original's 8-bit tiles.
POISSON_PEAK = 256


@crappifier("poisson", "em_P_D_001")
def poisson_d(img: np.ndarray, scale: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Poisson (shot) noise at `POISSON_PEAK` photons for white, then order-1 spline downsampling.

    The peak is explicit because skimage infers it from the number of distinct values, which
    for float tiles would make the noise vanish. The original `em_P_D_001` passed a fixed
    seed=1, giving every tile the same noise draw; here the tile's own generator is used."""
    if strength == 0:
        return downsample(img, scale)
    peak = POISSON_PEAK / strength ** 2  # noise std scales with 1/sqrt(peak)
    x = rng.poisson(np.clip(img, 0, 1) * peak) / peak
    return downsample(np.clip(x, 0, 1), scale)
