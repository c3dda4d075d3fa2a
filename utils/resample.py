"""Show a test image at the pixel size the model was trained on, band by band.

A PSSR model learns one transformation, e.g. 8 nm → 2 nm pixels; fed 4 nm or 10 nm pixels it sees
structures at the wrong size. The paper (Methods, "EM Imaging and Analysis") therefore resampled
test data first: mouse FIB-SEM 4 nm → 8 nm, fly FIB-SEM 10 nm → 8 nm with bilinear interpolation.

`resample_source` wraps a `Source` so that every `read(box)` returns the resampled pixels of that box,
computed from just the source rows and columns under it: memory stays bounded by the tile row as in
the rest of inference, never by the frame. Upsampling is bilinear (align_corners=False, as torch and
scikit-image); downsampling widens the same triangle filter to the scale (antialiased bilinear: an
area-like average, as torch's `antialias=True` and PIL), so pixels are averaged, not skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np

from .norm import MAX_PCT_PIXELS
from .sources import Source

__all__ = ["PIXEL_TOLERANCE", "linear_weights", "ResampledSource", "resample_source", "model_pixel_size",
           "match_pixel_size", "resample_note"]

# Pixel sizes this close (relative) count as equal: TIFF resolution tags are rationals, and a 0.5%
# change of scale is far below what a network trained with zoom augmentation notices.
PIXEL_TOLERANCE = 0.01


def linear_weights(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Taps (n_out, K) and weights (n_out, K) of the triangle filter mapping n_in samples to n_out.

    Output pixel i is centred at input coordinate (i + 0.5) * n_in / n_out - 0.5; the filter's half
    width is one input pixel when upsampling (bilinear) and n_in / n_out when downsampling
    (antialiased). Taps outside the image are dropped and the rest renormalized."""
    scale = n_in / n_out
    support = max(1.0, scale)
    centre = (np.arange(n_out) + 0.5) * scale - 0.5
    k = int(np.ceil(2 * support)) + 1
    idx = np.floor(centre - support).astype(np.int64)[:, None] + 1 + np.arange(k)
    w = np.clip(1 - np.abs(idx - centre[:, None]) / support, 0, None)
    w[(idx < 0) | (idx >= n_in)] = 0
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


def _apply(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Resample `x` along `axis` with taps already shifted to x's own index range."""
    shape = (len(idx), x.shape[1]) if axis == 0 else (x.shape[0], len(idx))
    out = np.zeros(shape, np.float32)
    for j in range(idx.shape[1]):
        wj = w[:, j][:, None] if axis == 0 else w[:, j][None, :]
        out += wj * np.take(x, idx[:, j], axis=axis)
    return out


class _ResampledReader:
    """Reads the source rows/columns under a box of the resampled grid and resamples them."""

    def __init__(self, src: Source, ny: int, nx: int):
        self.src = src
        self.wy, self.wx = linear_weights(src.ny, ny), linear_weights(src.nx, nx)

    def read(self, c, z, t, y0, x0, h, w, step=1):
        iy, wy = self.wy[0][y0:y0 + h], self.wy[1][y0:y0 + h]
        ix, wx = self.wx[0][x0:x0 + w], self.wx[1][x0:x0 + w]
        r0, r1, c0, c1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
        raw = self.src.read(c, z, t, box=(r0, c0, r1 - r0, c1 - c0)).astype(np.float32)
        rows = _apply(raw, iy - r0, wy, axis=0)
        raw = None
        out = _apply(rows, ix - c0, wx, axis=1)
        return out[::step, ::step] if step > 1 else out

    def close(self):
        self.src.close()


@dataclass
class ResampledSource(Source):
    """A `Source` seen on another pixel grid (float32 pixels). `sample()` (frame statistics) reads the
    original pixels, so normalization percentiles are those of the file, as without resampling."""
    original: Optional[Source] = field(default=None, repr=False)

    def sample(self, c: int = 0, z: int = 0, t: int = 0, max_pixels: int = MAX_PCT_PIXELS) -> np.ndarray:
        return self.original.sample(c, z, t, max_pixels)


def resample_source(src: Source, pixel_size: float) -> ResampledSource:
    """`src` (which knows its pixel size) resampled to `pixel_size` µm; the grid is rounded to whole pixels
    and the returned pixel size is the exact one of that grid."""
    f = src.pixel_size / pixel_size
    ny, nx = max(1, int(round(src.ny * f))), max(1, int(round(src.nx * f)))
    return ResampledSource(src.path, src.nc, src.nz, src.nt, ny, nx, src.dtype, src.pixel_size * src.nx / nx,
                           src.ftype, _ResampledReader(src, ny, nx), original=src)


def model_pixel_size(meta: dict) -> Optional[float]:
    """The LR (input) pixel size in µm a model was trained on, from its `.json`; None when not recorded."""
    hr = meta.get("hr_pixel_size")
    return float(hr) * int(meta["scale"]) if hr else None


def match_pixel_size(src: Source, meta: dict, pixel_size: Optional[float] = None,
                     say: Callable[[str], None] = print) -> Source:
    """`src` as the model should see it: resampled to the model's training pixel size when both sizes are
    known and differ by more than PIXEL_TOLERANCE, else unchanged.

    `pixel_size` (µm, `--pixel_size`) replaces the file's own; it is also what the output records. When
    neither the file nor the option gives a size, or the model does not record one, nothing happens and
    nothing is said."""
    if pixel_size:
        src.pixel_size = float(pixel_size)
    target = model_pixel_size(meta)
    if not target or not src.pixel_size or abs(src.pixel_size / target - 1) <= PIXEL_TOLERANCE:
        return src
    out = resample_source(src, target)
    how = "bilinear" if out.nx > src.nx else "antialiased bilinear"
    say(f"{src.path.name}: pixel size {src.pixel_size * 1e3:.4g} nm -> {out.pixel_size * 1e3:.4g} nm, the model's "
        f"training input ({src.ny}x{src.nx} -> {out.ny}x{out.nx} px, {how})")
    return out


def resample_note(src: Source) -> dict:
    """What the output should record about resampling (empty for a source read as it is)."""
    if not isinstance(src, ResampledSource):
        return {}
    o = src.original
    return {"source_pixel_size_um": o.pixel_size, "resampled_pixel_size_um": src.pixel_size,
            "source_shape_yx": [o.ny, o.nx], "resampled_shape_yx": [src.ny, src.nx]}
