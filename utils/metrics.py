"""Image-quality measures of the paper: PSNR/SSIM after norm_minmse, SNR, and FRC resolution."""
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .norm import normalize

__all__ = ["GT_PCTS", "norm_minmse", "psnr", "ssim", "slice_metrics", "snr", "find_background",
           "frc_curve", "frc_resolution", "checkerboard_split", "FRC_THRESHOLD", "sem"]

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


def sem(v) -> float:
    """Standard error of the mean (ddof=1) of the finite values; 0 for fewer than two."""
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
