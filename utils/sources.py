"""Lazy access to microscopy files: one 2D frame (or a region of it) at a time.

Real EM sources are 24576² pixels and data sets are 100+ GB, so nothing here
reads more than the frame region asked for when the file layout allows it:
uncompressed contiguous TIFF series are read row by row with positioned reads, chunked/compressed ones
go through tifffile's zarr store (only the strips/tiles touched are decoded),
and CZI frames are assembled from the subblocks that intersect the region.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import tifffile

from .errors import PSSRError, fail
from .norm import MAX_PCT_PIXELS, subsample_step

__all__ = ["Source", "open_source", "SUFFIXES", "find_images", "Box"]

SUFFIXES = (".tif", ".tiff", ".czi")
Box = Tuple[int, int, int, int]  # y0, x0, h, w

# Stack axes tifffile may report for plain multi-page files with no axis metadata.
_GENERIC_STACK_AXES = "IQ"


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder`, sorted by name (hidden and temporary files ignored)."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def _check_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        fail(path, f"{dtype} (floating-point) data is not supported; save it as 8- or 16-bit integers")
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        fail(path, f"{dtype} data is not supported; expected 8- or 16-bit integer pixels")
    return dtype


@dataclass
class Source:
    """One image file seen as frames indexed by channel c, depth z and time t.

    `read(c, z, t, box)` returns a 2D array of the file's dtype; `box` is
    (y0, x0, h, w) and keeps memory bounded by the region, not the frame."""
    path: Path
    nc: int
    nz: int
    nt: int
    ny: int
    nx: int
    dtype: np.dtype
    pixel_size: Optional[float] = None  # micrometres per pixel along x (and y)
    ftype: str = ""
    _reader: object = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return self.nc * self.nz * self.nt

    def read(self, c: int = 0, z: int = 0, t: int = 0, box: Optional[Box] = None, step: int = 1) -> np.ndarray:
        """`step` > 1 returns every step-th pixel in y and x of the box (a cheap subsample:
        only the sampled rows are paged in or the chunks holding them decoded)."""
        if not (0 <= c < self.nc and 0 <= z < self.nz and 0 <= t < self.nt):
            raise IndexError(f"{self.path}: frame c={c} z={z} t={t} outside c<{self.nc} z<{self.nz} t<{self.nt}")
        y0, x0, h, w = box if box is not None else (0, 0, self.ny, self.nx)
        if y0 < 0 or x0 < 0 or y0 + h > self.ny or x0 + w > self.nx:
            raise IndexError(f"{self.path}: box {box} outside the {self.ny}x{self.nx} frame")
        try:
            return np.asarray(self._reader.read(c, z, t, y0, x0, h, w, step))
        except PSSRError:
            raise
        except Exception as e:  # truncated strips, bad compression: name the file, one line
            fail(self.path, f"cannot read frame c={c} z={z} t={t}: {type(e).__name__}: {e}")

    def sample(self, c: int = 0, z: int = 0, t: int = 0, max_pixels: int = MAX_PCT_PIXELS) -> np.ndarray:
        """The whole frame, or a regular-grid subsample of at most `max_pixels` when it is larger:
        frame statistics (percentiles, mean) without paging in a 24576² frame."""
        return self.read(c, z, t, step=subsample_step(self.ny, self.nx, max_pixels))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(path: Path, live: bool = False) -> Source:
    """Open a `.tif/.tiff/.czi` lazily. `live`: unlabelled stack pages are time points, else z.

    Raises `PSSRError` (one line naming the file) for zero-byte, corrupt,
    unsupported, RGB or floating-point files."""
    path = Path(path)
    if not path.exists():
        fail(path, "no such file")
    if path.stat().st_size == 0:
        fail(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path, live)
    if suffix == ".czi":
        return _open_czi(path)
    fail(path, f"unsupported file type '{path.suffix}'; expected one of {', '.join(SUFFIXES)}")


# --------------------------------------------------------------------------- TIFF

class _ContiguousArray:
    """An uncompressed, contiguous TIFF series read with positioned reads of just the rows asked for.

    Not a memmap: every page a memmap touches (and the kernel's fault-around neighbours, up
    to 64 KB per fault) counts in the process's RSS until it is unmapped, so tiling a
    20000² frame through a memmap grew past 500 MB; positioned reads keep only the result."""

    def __init__(self, path: Path, offset: int, shape: tuple, dtype: np.dtype):
        self.fd = os.open(path, os.O_RDONLY)
        self.offset, self.shape, self.dtype = offset, tuple(shape), np.dtype(dtype)
        self.strides = tuple(int(np.prod(self.shape[i + 1:])) * self.dtype.itemsize for i in range(len(self.shape)))

    def __getitem__(self, idx):
        *lead, ys, xs = idx
        base = self.offset + sum(i * s for i, s in zip(lead, self.strides))
        rows, cols = range(*ys.indices(self.shape[-2])), range(*xs.indices(self.shape[-1]))
        item, row_bytes = self.dtype.itemsize, self.strides[-2]
        if not len(rows) or not len(cols):
            return np.empty((len(rows), len(cols)), self.dtype)
        if rows.step == 1 and cols.step == 1 and len(cols) == self.shape[-1]:  # whole rows: one read
            buf = os.pread(self.fd, len(rows) * row_bytes, base + rows.start * row_bytes)
            return np.frombuffer(buf, self.dtype).reshape(len(rows), -1).copy()
        out = np.empty((len(rows), len(cols)), self.dtype)
        span = (cols[-1] - cols[0] + 1) * item
        for k, y in enumerate(rows):
            buf = os.pread(self.fd, span, base + y * row_bytes + cols[0] * item)
            out[k] = np.frombuffer(buf, self.dtype)[::cols.step]
        return out

    def close(self):
        os.close(self.fd)


class _TiffReader:
    """Index a tifffile series by (c, z, t) through positioned reads or a zarr array."""

    def __init__(self, tif: tifffile.TiffFile, series, index_of):
        self.tif, self.index_of = tif, index_of
        self.arr = None
        if series.dataoffset is not None:  # uncompressed, contiguous: read only the rows asked for
            # series.dtype is native-endian; the bytes on disk follow the file's byte order
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            self.arr = _ContiguousArray(tif.filehandle.path, series.dataoffset, series.shape, dtype)
        if self.arr is None:
            import zarr
            self.store = series.aszarr()
            self.arr = zarr.open(self.store, mode="r")
            if hasattr(self.arr, "shape") is False:  # multiscale group: level 0
                self.arr = self.arr[0]

    def read(self, c, z, t, y0, x0, h, w, step=1):
        return self.arr[self.index_of(c, z, t) + (slice(y0, y0 + h, step), slice(x0, x0 + w, step))]

    def close(self):
        if isinstance(self.arr, _ContiguousArray):
            self.arr.close()
        self.arr = None
        self.tif.close()


def _tiff_pixel_size(tif: tifffile.TiffFile, page) -> Optional[float]:
    """Micrometres per pixel from OME-XML or the X resolution tag (ImageJ writes the unit)."""
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m:
            scale = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3}.get(u.group(1) if u else "µm", 1.0)
            return float(m.group(1)) * scale
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    if not num or not den:
        return None
    px = den / num  # units per pixel
    unit = (tif.imagej_metadata or {}).get("unit", "")
    if unit in ("micron", "um", "µm", "\\u00B5m"):
        return px
    if unit == "nm":
        return px * 1e-3
    res_unit = page.tags.get("ResolutionUnit")
    ru = int(res_unit.value) if res_unit is not None else 2
    if ru == 3:  # centimetre
        return px * 1e4
    if ru == 2 and tif.imagej_metadata is None and px < 1:  # inch, only if it looks physical
        return px * 25400
    return None


def _open_tiff(path: Path, live: bool) -> Source:
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        axes, shape = series.axes, series.shape
    except Exception as e:
        fail(path, f"not a readable TIFF ({type(e).__name__}: {e})")
    try:
        if "S" in axes and shape[axes.index("S")] > 1:
            fail(path, f"RGB/multi-sample image (axes {axes}, shape {shape}); save one grey channel per page")
        dtype = _check_dtype(path, series.dtype)
        if not axes.endswith("YX") and not axes.endswith("YXS"):
            fail(path, f"unexpected TIFF axes '{axes}'; the last two must be YX")
        pos = {}
        stack_axes = []
        for i, a in enumerate(axes[:-2] if axes.endswith("YX") else axes[:-3]):
            if a in "CZT":
                pos[a] = i
            elif a in _GENERIC_STACK_AXES:
                stack_axes.append(i)
            elif shape[i] != 1:
                fail(path, f"unsupported TIFF axis '{a}' of length {shape[i]} (axes {axes})")
        if stack_axes:
            a = "T" if live else "Z"
            if a in pos or len(stack_axes) > 1:
                fail(path, f"ambiguous stack axes '{axes}' {shape}; save as an ImageJ hyperstack")
            pos[a] = stack_axes[0]
        ndim_lead = len(axes) - (2 if axes.endswith("YX") else 3)
        ny, nx = shape[ndim_lead], shape[ndim_lead + 1]
        n = {a: (shape[pos[a]] if a in pos else 1) for a in "CZT"}

        def index_of(c, z, t):
            idx = [0] * ndim_lead
            for a, v in zip("CZT", (c, z, t)):
                if a in pos:
                    idx[pos[a]] = v
            return tuple(idx)

        reader = _TiffReader(tif, series, index_of)
        if axes.endswith("YXS"):  # single-sample trailing axis
            base = reader.read
            reader.read = lambda *a: base(*a)[..., 0]
        return Source(path, n["C"], n["Z"], n["T"], ny, nx, dtype,
                      _tiff_pixel_size(tif, series.pages[0] if series.pages else tif.pages[0]),
                      "tif", reader)
    except Exception:
        tif.close()
        raise


# --------------------------------------------------------------------------- CZI

class _CziReader:
    """Assemble a frame region from the CZI subblocks that intersect it."""

    def __init__(self, czi, axes: str):
        self.czi, self.axes = czi, axes
        self.entries = list(czi.filtered_subblock_directory)
        self.start = czi.start

    def read(self, c, z, t, y0, x0, h, w, step=1):
        want = {"C": c, "Z": z, "T": t}
        out = np.zeros((-(-h // step), -(-w // step)), self.czi.dtype)
        iy, ix = self.axes.index("Y"), self.axes.index("X")
        for e in self.entries:
            rel = [s - s0 for s, s0 in zip(e.start, self.start)]
            if any(a in want and not (rel[i] <= want[a] < rel[i] + e.shape[i])
                   for i, a in enumerate(self.axes)):
                continue
            if any(a not in want and a not in "YX0" and rel[i] != 0 for i, a in enumerate(self.axes)):
                continue  # other scenes/positions/phases: first only
            ey, ex, eh, ew = rel[iy], rel[ix], e.shape[iy], e.shape[ix]
            # overlap, with its start moved onto the step grid of the box
            oy0, oy1 = y0 + -(-max(0, ey - y0) // step) * step, min(y0 + h, ey + eh)
            ox0, ox1 = x0 + -(-max(0, ex - x0) // step) * step, min(x0 + w, ex + ew)
            if oy0 >= oy1 or ox0 >= ox1:
                continue
            tile = e.data_segment().data(resize=True, order=0)
            idx = []
            for i, a in enumerate(self.axes):
                if a in want:
                    idx.append(want[a] - rel[i])
                elif a == "Y":
                    idx.append(slice(oy0 - ey, oy1 - ey, step))
                elif a == "X":
                    idx.append(slice(ox0 - ex, ox1 - ex, step))
                else:
                    idx.append(0)
            part = tile[tuple(idx)]
            oy, ox = (oy0 - y0) // step, (ox0 - x0) // step
            out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
        return out

    def close(self):
        self.czi.close()


def _czi_pixel_size(czi) -> Optional[float]:
    try:
        root = ET.fromstring(czi.metadata())
    except Exception:
        return None
    for d in root.iter("Distance"):
        if d.get("Id") == "X":
            v = d.find("Value")
            if v is not None and v.text:
                return float(v.text) * 1e6  # metres -> micrometres
    return None


def _open_czi(path: Path) -> Source:
    import czifile
    try:
        czi = czifile.CziFile(path)
        axes, shape = czi.axes, czi.shape
    except Exception as e:
        fail(path, f"not a readable CZI ({type(e).__name__}: {e})")
    try:
        if axes.endswith("0") and shape[-1] > 1:
            fail(path, f"RGB/multi-sample CZI (shape {shape}); export one grey channel")
        dtype = _check_dtype(path, czi.dtype)
        n = {a: (shape[axes.index(a)] if a in axes else 1) for a in "CZTYX"}
        return Source(path, n["C"], n["Z"], n["T"], n["Y"], n["X"], dtype,
                      _czi_pixel_size(czi), "czi", _CziReader(czi, axes))
    except Exception:
        czi.close()
        raise
