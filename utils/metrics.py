"""Image-quality measures of the paper: PSNR/SSIM after norm_minmse, SNR, FRC resolution, and
NanoJ-SQUIRREL's resolution-scaled error and Pearson coefficient (RSE, RSP) with their error map."""
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .norm import normalize

__all__ = ["GT_PCTS", "norm_minmse", "psnr", "ssim", "slice_metrics", "snr", "find_background",
           "frc_curve", "frc_resolution", "checkerboard_split", "FRC_THRESHOLD", "sem",
           "Squirrel", "squirrel", "resolution_scaled", "fit_rsf_sigma", "RSF_SIGMA_MAX", "central_window"]

# CSBDeep / original metric_gen: ground truth is normalized to its 0.1 / 99.9 percentiles, unclipped.
GT_PCTS = (0.1, 99.9)
FRC_THRESHOLD = 1 / 7


def norm_minmse(gt: np.ndarray, x: np.ndarray, normalize_gt: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Percentile-normalize `gt`, then scale `x` affinely to minimize the MSE against it.

    Restorations and baselines come in arbitrary intensity ranges; this makes the
    comparison insensitive to gain and offset, as in CSBDeep and the original.
    Both are returned mean-free (as the original). The original divides a ddof=1
    covariance by a ddof=0 variance (a factor n/(n-1)); we use one ddof so an
    exact affine copy of `gt` is recovered exactly."""
    gt = np.asarray(gt, np.float32)
    if normalize_gt:
        lo, hi = np.percentile(gt, GT_PCTS)
        gt = normalize(gt, lo, hi, clip=False)
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    gt = gt.astype(np.float64) - gt.mean()
    var = float((x * x).sum())
    scale = float((x * gt).sum()) / var if var > 0 else 0.0
    return gt.astype(np.float32), (scale * x).astype(np.float32)


def psnr(gt: np.ndarray, x: np.ndarray) -> float:
    """PSNR with data_range 1 (inf for identical images)."""
    if np.array_equal(gt, x):
        return float("inf")
    return float(peak_signal_noise_ratio(gt, x, data_range=1.0))


def ssim(gt: np.ndarray, x: np.ndarray) -> float:
    """SSIM with data_range 1 and scikit-image's default 7x7 uniform window, as the original."""
    return float(structural_similarity(gt, x, data_range=1.0))


def slice_metrics(gt: np.ndarray, x: np.ndarray) -> Tuple[float, float]:
    """(PSNR, SSIM) of one 2D slice after `norm_minmse`."""
    g, y = norm_minmse(gt, x)
    return psnr(g, y), ssim(g, y)


def find_background(img: np.ndarray, win: int = 32) -> Tuple[int, int, int, int]:
    """Box (y0, x0, h, w) of the window with the lowest mean: the emptiest region of the image."""
    img = np.asarray(img, np.float32)
    win = max(4, min(win, *img.shape))
    means = ndimage.uniform_filter(img, win, mode="nearest")
    half = win // 2
    inner = means[half:img.shape[0] - win + half + 1, half:img.shape[1] - win + half + 1]
    y, x = np.unravel_index(np.argmin(inner), inner.shape)
    return int(y), int(x), win, win


def snr(img: np.ndarray, bg_box: Optional[Tuple[int, int, int, int]] = None, win: int = 32) -> float:
    """The paper's SNR, (I_max - mean_bg) / std_bg; the background box is found when not given."""
    img = np.asarray(img, np.float64)
    y0, x0, h, w = bg_box if bg_box is not None else find_background(img, win)
    bg = img[y0:y0 + h, x0:x0 + w]
    sd = float(bg.std())
    return float((img.max() - bg.mean()) / sd) if sd > 0 else float("inf")


def checkerboard_split(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two half-size sub-images of one acquisition: even-even and odd-odd pixels.

    Their noise is independent, so they stand in for two acquisitions (Koho et al.
    2019). The odd-odd image is shifted by half a sub-pixel diagonally; `frc_curve`
    undoes that shift with a Fourier phase ramp so it does not decorrelate high
    frequencies. Frequencies of the sub-images are per sub-pixel (2 original pixels)."""
    img = np.asarray(img, np.float64)
    ny, nx = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    return img[0:ny:2, 0:nx:2], img[1:ny:2, 1:nx:2]


def _hann2d(shape) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def frc_curve(a: np.ndarray, b: np.ndarray, shift: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images: (frequency in cycles/pixel, FRC).

    Images are cropped to a centred square and Hann-windowed (edge discontinuities
    would otherwise correlate at every frequency). `shift`: sub-pixel diagonal
    offset of `b` relative to `a`, compensated in Fourier space."""
    n = min(*a.shape, *b.shape)
    def crop(x):
        y0, x0 = (x.shape[0] - n) // 2, (x.shape[1] - n) // 2
        x = np.asarray(x[y0:y0 + n, x0:x0 + n], np.float64)
        return (x - x.mean()) * _hann2d(x.shape)
    fa, fb = np.fft.fftshift(np.fft.fft2(crop(a))), np.fft.fftshift(np.fft.fft2(crop(b)))
    k = np.fft.fftshift(np.fft.fftfreq(n))
    ky, kx = np.meshgrid(k, k, indexing="ij")
    if shift:
        fb = fb * np.exp(-2j * np.pi * shift * (ky + kx))
    r = np.round(np.hypot(ky, kx) * n).astype(int)
    nr = n // 2
    sel = r < nr
    num = np.bincount(r[sel], (fa * np.conj(fb)).real[sel], nr)
    da = np.bincount(r[sel], (np.abs(fa) ** 2)[sel], nr)
    db = np.bincount(r[sel], (np.abs(fb) ** 2)[sel], nr)
    frc = num / np.sqrt(np.maximum(da * db, 1e-300))
    return np.arange(nr) / n, frc


def frc_resolution(a: np.ndarray, b: Optional[np.ndarray] = None,
                   pixel_size: Optional[float] = None, threshold: float = FRC_THRESHOLD) -> Tuple[float, Optional[float]]:
    """FRC resolution (pixels, micrometres or None) at the 1/7 threshold.

    With `b`, `a` and `b` are two independent acquisitions of the same field. Without
    it, `a` is split in two (`checkerboard_split`) and the result, measured on
    half-size images, is converted back to original pixels (x2); it cannot report
    finer than 4 pixels, the half-size images' Nyquist limit. The curve is
    smoothed over 3 rings; when it never drops below the threshold the result is
    the Nyquist limit (2 pixels)."""
    factor = 1.0
    if b is None:
        a, b = checkerboard_split(a)
        factor, shift = 2.0, 0.5
    else:
        shift = 0.0
    f, c = frc_curve(a, b, shift)
    c = np.convolve(c, np.ones(3) / 3, mode="same")
    below = np.nonzero(c[1:] < threshold)[0]
    if len(below) == 0:
        res = 2.0  # Nyquist of the images measured
    else:
        i = below[0] + 1
        c0, c1 = c[i - 1], c[i]  # interpolate the crossing between rings i-1 and i
        fx = f[i - 1] + (f[i] - f[i - 1]) * (c0 - threshold) / (c0 - c1) if c0 != c1 else f[i]
        res = 1.0 / max(fx, 1e-9)
    res *= factor
    return float(res), (float(res * pixel_size) if pixel_size else None)


# NanoJ-SQUIRREL error mapping (Culley et al. 2018), as the paper used it: Methods, "Evaluation Metrics",
# RSE and RSP, and Supplementary Figs. 1 and 3. SQUIRREL keeps the trusted reference as it is, convolves
# the image under test with a Gaussian resolution-scaling function (RSF), fits it linearly to the
# reference (alpha, beta) and reports the RMSE (RSE), the Pearson coefficient (RSP) and the absolute
# difference image (the error map). Here the reference is the ground truth (HR) and the image under test a
# restoration at the same pixel size. We do not blur the ground truth instead: its RSE then falls to 0 as
# the RSF widens (a flat reference is matched by a flat fit), so a fitted width runs away, and every method
# would be scored against a different reference.
RSF_SIGMA_MAX = 8.0  # pixels: the widest fitted RSF, two LR pixels of a 4x scan
_RSF_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
_FIT_WINDOW = 512  # the RSF is fitted on a central window at most this size: cost bounded, not by image size


class Squirrel(NamedTuple):
    """RSE (RMSE in ground-truth units: its 0.1/99.9 percentiles span 0..1), RSP, the RSF sigma used
    (pixels) and the error map |GT - (alpha (x * RSF) + beta)| (float32, the slice's shape)."""
    rse: float
    rsp: float
    sigma: float
    error_map: np.ndarray


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma, mode="reflect") if sigma > 0 else x


def _fit_to(ref: np.ndarray, x: np.ndarray) -> Tuple[float, float, np.ndarray]:
    """(RSE, RSP, alpha x + beta): `x` fitted to `ref` by least squares, SQUIRREL's intensity rescaling."""
    xc, rc = x - x.mean(), ref - ref.mean()
    vx, vr, cov = float((xc * xc).sum()), float((rc * rc).sum()), float((xc * rc).sum())
    fitted = (cov / vx if vx > 0 else 0.0) * xc + ref.mean()
    rse = float(np.sqrt(np.mean((ref - fitted) ** 2)))
    rsp = cov / np.sqrt(vx * vr) if vx > 0 and vr > 0 else np.nan  # a flat image correlates with nothing
    return rse, float(rsp), fitted


def central_window(x: np.ndarray, n: int) -> np.ndarray:
    """The central n x n window of `x` (all of it when smaller): global fits at a cost bounded by n."""
    y0, x0 = max(0, (x.shape[0] - n) // 2), max(0, (x.shape[1] - n) // 2)
    return x[y0:y0 + n, x0:x0 + n]


def _reference(gt: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(gt, GT_PCTS)
    return normalize(gt, lo, hi, clip=False).astype(np.float64)


def fit_rsf_sigma(ref: np.ndarray, x: np.ndarray, sigma_max: float = RSF_SIGMA_MAX) -> float:
    """The RSF sigma (pixels) for which blurred `x` matches `ref` best, as SQUIRREL optimizes it.

    With `ref` fixed, the least RSE is the highest RSP. A coarse grid first (the error need not be
    unimodal), then a bounded Brent search between the best point's neighbours."""
    from scipy.optimize import minimize_scalar
    ref, x = (central_window(np.asarray(v, np.float64), _FIT_WINDOW) for v in (ref, x))
    def err(s):
        return _fit_to(ref, _blur(x, s))[0]
    grid = [s for s in _RSF_GRID if s < sigma_max] + [sigma_max]
    errs = [err(s) for s in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(err, bounds=(lo, hi), method="bounded", options={"xatol": 0.01})
    # keep the grid point unless Brent beats it by more than float32 rounding of the data (1e-7 of GT range)
    return float(best.x) if best.fun < errs[i] - 1e-7 else float(grid[i])


def resolution_scaled(gt: np.ndarray, x: np.ndarray, sigma: float) -> Squirrel:
    """RSE, RSP and error map of `x`, blurred by a Gaussian RSF of `sigma` pixels, against `gt`.

    `gt` is scaled to its 0.1/99.9 percentiles first (as for PSNR), so RSE compares across images and
    methods; RSE and RSP do not change when `x` is rescaled linearly."""
    ref = _reference(gt)
    rse, rsp, fitted = _fit_to(ref, _blur(np.asarray(x, np.float64), sigma))
    return Squirrel(rse, rsp, float(sigma), np.abs(ref - fitted).astype(np.float32))


def squirrel(gt: np.ndarray, x: np.ndarray, rsf_sigma: Union[float, str] = "fit") -> Squirrel:
    """`resolution_scaled` with a given RSF sigma (pixels, the same for every method) or `"fit"`: the
    sigma that best matches `x` to `gt`, fitted per image as SQUIRREL does by default. A fitted RSF can
    only smooth a restoration's noise; it cannot add the detail a blurry one lacks."""
    if isinstance(rsf_sigma, str):
        if rsf_sigma != "fit":
            raise ValueError(f"rsf_sigma is a number of pixels or 'fit', got {rsf_sigma!r}")
        sigma = fit_rsf_sigma(_reference(gt), x)
    else:
        sigma = float(rsf_sigma)
    return resolution_scaled(gt, x, sigma)


def sem(v) -> float:
    """Standard error of the mean (ddof=1) of the finite values; 0 for fewer than two."""
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
