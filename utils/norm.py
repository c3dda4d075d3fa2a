"""Intensity normalization shared by tiling, training and inference (CSBDeep-style)."""
from typing import Sequence, Tuple

import numpy as np

__all__ = ["PCT_LO", "PCT_HI", "MAX_PCT_PIXELS", "percentiles", "normalize", "to_uint8"]

# The original PSSR normalizes each frame to its 2nd and 99.99th percentiles.
PCT_LO, PCT_HI = 2.0, 99.99
# Frames above this many pixels get percentiles from a regular-grid subsample
# (every k-th pixel in y and x), so statistics stay cheap on 24576² EM frames.
MAX_PCT_PIXELS = 4_000_000


def subsample_step(ny: int, nx: int, max_pixels: int = MAX_PCT_PIXELS) -> int:
    """Grid step k such that (ny/k)*(nx/k) <= max_pixels."""
    return max(1, int(np.ceil(np.sqrt(ny * nx / max_pixels))))


def percentiles(x: np.ndarray, pcts: Sequence[float] = (PCT_LO, PCT_HI),
                max_pixels: int = MAX_PCT_PIXELS) -> Tuple[float, ...]:
    """Percentiles of a 2D frame, from a regular subsample when it is huge."""
    k = subsample_step(*x.shape[-2:], max_pixels)
    return tuple(float(v) for v in np.percentile(np.asarray(x[..., ::k, ::k]), pcts))


def normalize(x: np.ndarray, mi: float, ma: float, clip: bool = True, eps: float = 1e-20) -> np.ndarray:
    """Map [mi, ma] to [0, 1] as float32 (clipped by default, as the original tiler does)."""
    y = (np.asarray(x, np.float32) - np.float32(mi)) / np.float32(max(ma - mi, eps))
    return np.clip(y, 0, 1, out=y) if clip else y


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint8 with rounding (values outside are clipped)."""
    return np.clip(np.round(np.asarray(x, np.float32) * 255), 0, 255).astype(np.uint8)
