"""Lazy access to microscopy files: one 2D frame (or a region of it) at a time.

Real EM sources are 24576² pixels and data sets are 100+ GB, so nothing here
reads more than the frame region asked for when the file layout allows it:
uncompressed contiguous TIFF series are read row by row with positioned reads, chunked/compressed ones
go through tifffile's zarr store (only the strips/tiles touched are decoded),
and CZI regions are composed by libCZI from the subblocks that intersect them.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import tifffile

from .errors import PSSRError, fail, warn
from .norm import MAX_PCT_PIXELS, subsample_step
from .omezarr import is_zarr, open_ngff

__all__ = ["Source", "open_source", "SUFFIXES", "find_images", "Box"]

SUFFIXES = (".tif", ".tiff", ".czi")
Box = Tuple[int, int, int, int]  # y0, x0, h, w

# Stack axes tifffile may report for plain multi-page files with no axis metadata.
_GENERIC_STACK_AXES = "IQ"


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files and OME-Zarr folders in `folder`, sorted by name (hidden and temporary ones ignored)."""
    folder = Path(folder)
    it = _walk(folder) if recursive else folder.iterdir()
    return sorted(p for p in it if (is_zarr(p) or p.is_file() and p.suffix.lower() in SUFFIXES)
                  and not p.name.startswith("."))


def _walk(folder: Path):
    """Every path below `folder`, without descending into `.zarr` images (thousands of chunk files each)."""
    for root, dirs, files in os.walk(folder):
        r = Path(root)
        yield from (r / f for f in files)
        yield from (r / d for d in dirs)
        dirs[:] = [d for d in dirs if not is_zarr(r / d)]


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
    """Open a `.tif/.tiff/.czi` file or `.zarr` OME-Zarr folder lazily. `live`: unlabelled stack pages are
    time points, else z (OME-Zarr axes are always labelled).

    Raises `PSSRError` (one line naming the file) for zero-byte, corrupt,
    unsupported, RGB or floating-point files."""
    path = Path(path)
    if not path.exists():
        fail(path, "no such file")
    if is_zarr(path):
        return _open_zarr(path)
    if path.stat().st_size == 0:
        fail(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path, live)
    if suffix == ".czi":
        return _open_czi(path)
    fail(path, f"unsupported file type '{path.suffix}'; expected one of {', '.join(SUFFIXES)}")


# --------------------------------------------------------------------------- OME-Zarr

def _open_zarr(path: Path) -> Source:
    """An OME-Zarr image folder: its full-resolution level, chunks decoded only where a read touches them."""
    img = open_ngff(path)
    dtype = _check_dtype(path, img.array.dtype)
    n = {a: (img.array.shape[img.axes.index(a)] if a in img.axes else 1) for a in "czt"}
    ny, nx = img.array.shape[-2:]
    return Source(path, n["c"], n["z"], n["t"], ny, nx, dtype, img.pixel_size, "zarr", img)


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


class _LogRecords(logging.Handler):
    """Collect tifffile's log messages (its complaints about a damaged file) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        log = logging.getLogger("tifffile")
        self._propagate, log.propagate = log.propagate, False
        log.addHandler(self)
        return self

    def __exit__(self, *exc):
        log = logging.getLogger("tifffile")
        log.removeHandler(self)
        log.propagate = self._propagate


def _ifd_chain(tif: tifffile.TiffFile) -> Tuple[int, bool]:
    """Number of IFDs in the main chain, and whether it ends as a TIFF should (next offset 0).

    Reads two small fields per page (no tags, no pixels): a file cut short leaves its last
    complete IFD pointing past the end, or at a half-written one."""
    fh, fmt, size = tif.filehandle, tif.tiff, tif.filehandle.size
    offset = tif.pages.first.offset
    n, seen = 0, set()
    while offset:
        if offset in seen or offset + fmt.tagnosize > size:
            return n, False
        seen.add(offset)
        fh.seek(offset)
        tagno = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
        nxt = offset + fmt.tagnosize + tagno * fmt.tagsize
        if tagno > 4096 or nxt + fmt.offsetsize > size:
            return n, False
        fh.seek(nxt)
        offset = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]
        n += 1
    return n, True


_TAG_TYPE_SIZES = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}  # else 1 byte


def _first_ifd_values_inside(tif: tifffile.TiffFile) -> bool:
    """The first page's tag values (where OME-XML and ImageJ metadata live) lie inside the file: a file
    cut just before its trailing OME-XML keeps every page, but tifffile silently loses the axes."""
    fh, fmt, size = tif.filehandle, tif.tiff, tif.filehandle.size
    bo = tif.byteorder
    offset = tif.pages.first.offset
    fh.seek(offset)
    tagno = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
    raw = fh.read(tagno * fmt.tagsize)
    count_fmt = bo + ("Q" if fmt.offsetsize == 8 else "I")
    for i in range(min(tagno, len(raw) // fmt.tagsize)):
        entry = raw[i * fmt.tagsize:(i + 1) * fmt.tagsize]
        dtype = struct.unpack(bo + "H", entry[2:4])[0]
        count = struct.unpack(count_fmt, entry[4:4 + fmt.offsetsize])[0]
        nbytes = count * _TAG_TYPE_SIZES.get(dtype, 1)
        if nbytes > fmt.offsetsize:  # not inline: the entry holds an offset
            value_at = struct.unpack(fmt.offsetformat, entry[4 + fmt.offsetsize:])[0]
            if value_at + nbytes > size:
                return False
    return True


def _data_inside(page) -> bool:
    """Every strip/tile of `page` lies inside its file (an OME file set may hold pages of other files;
    None: a page the series lacks)."""
    if page is None:
        return False
    ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
    return not len(ends) or int(ends.max()) <= page.parent.filehandle.size


def _expected_pages(tif: tifffile.TiffFile, series, per_page: int) -> int:
    """Pages the series should have: its shape, or the writer's metadata when tifffile could not shape it."""
    m = int(np.prod(series.shape)) // per_page
    if tif.is_shaped and tif.shaped_metadata and "shape" in tif.shaped_metadata[0]:
        m = max(m, int(np.prod(tif.shaped_metadata[0]["shape"])) // per_page)
    if tif.is_imagej and tif.imagej_metadata:
        m = max(m, int(tif.imagej_metadata.get("images", 1)))
    return m


def _readable_pages(tif: tifffile.TiffFile, series, m: int, per_page: int) -> int:
    size = tif.filehandle.size
    if series.dataoffset is not None:  # contiguous: count whole frames before the end of the file
        return min(m, max(0, size - series.dataoffset) // (per_page * np.dtype(series.dtype).itemsize))
    n = sum(_data_inside(p) for p in series.pages)
    if n < m:  # a series tifffile fell back to (its first page) hides the intact pages after it
        try:
            n = max(n, min(m, sum(_data_inside(p) for p in tif.pages)))
        except Exception:
            pass
    return n


def _check_complete(path: Path, tif: tifffile.TiffFile, series) -> None:
    """Fail on a file cut short or with pages missing, from headers alone: tifffile otherwise shapes a
    truncated 12-frame stack as one frame, or reads the missing frames as zeros."""
    if tif.is_ndpi:  # Hamamatsu's 64-bit-offset variant: none of the layout below applies
        return
    n_ifd, clean = _ifd_chain(tif)
    per_page = int(np.prod(series.keyframe.shape))
    m = _expected_pages(tif, series, per_page)
    n = _readable_pages(tif, series, m, per_page)
    if not clean:  # a page whose IFD is cut short is not readable, whatever its data
        n = min(n, n_ifd)
    if n < m or not clean:
        total = str(m) if clean or m > n_ifd else f"at least {n_ifd + 1}"
        fail(path, f"truncated or corrupt TIFF ({n} of {total} pages readable)")
    if not _first_ifd_values_inside(tif):
        fail(path, "truncated or corrupt TIFF (the first page's metadata lies past the end of the file)")


def _open_tiff(path: Path, live: bool) -> Source:
    try:
        with _LogRecords() as log:
            tif = tifffile.TiffFile(path)
            series = tif.series[0]
            axes, shape = series.axes, series.shape
    except Exception as e:
        fail(path, f"not a readable TIFF ({type(e).__name__}: {e})")
    try:
        with log:
            _check_complete(path, tif, series)
        for message in log.messages:  # the file is whole: what tifffile noticed is worth a line
            warn(path, f"tifffile: {message}")
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
    except PSSRError:
        tif.close()
        raise
    except Exception as e:  # a damaged tag that tifffile only trips over now
        tif.close()
        fail(path, f"cannot open TIFF ({type(e).__name__}: {e})")


# --------------------------------------------------------------------------- CZI
# Read through Zeiss's libCZI (pylibCZIrw): ZEN writes zstd-compressed subblocks today, which czifile
# 2019.7.2.3 (the last release for Python 3.11) cannot decode. libCZI composes a region from only the
# subblocks that intersect it, placing mosaic tiles at their stage positions (later tiles over earlier
# ones where they overlap, as ZEN shows a tile region; pixels no tile covers are 0).

_CZI_GREY = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}
_CZI_PLANE_AXES = "CZT"
_CZI_BAND_BYTES = 8 << 20  # a read is composed in full-width bands of at most this size
_CZI_CACHE_BYTES = 64 << 20  # decoded compressed subblocks kept for the next band or tile


class _CziReader:
    """Region reads of one (c, z, t) plane; `starts` maps the Source's 0-based indices to the file's."""

    def __init__(self, doc, x0: int, y0: int, starts: dict, dtype: np.dtype):
        self.doc, self.x0, self.y0, self.starts, self.dtype = doc, x0, y0, starts, np.dtype(dtype)

    def _roi(self, plane: dict, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return self.doc.read(roi=(self.x0 + x0, self.y0 + y0, w, h), plane=plane)[..., 0]

    def read(self, c, z, t, y0, x0, h, w, step=1):
        """Every step-th pixel of the box, composed band by band into the result: libCZI's transient
        memory (2-3x what it composes) then stays that of one band, not of the frame."""
        plane = {a: v + self.starts[a] for a, v in zip(_CZI_PLANE_AXES, (c, z, t))}
        out = np.empty((-(-h // step), -(-w // step)), self.dtype)
        if out.size == 0:
            return out
        band = max(1, _CZI_BAND_BYTES // (w * self.dtype.itemsize) // step) * step
        for y in range(y0, y0 + h, band):
            rows = (min(band, y0 + h - y) - 1) // step * step + 1  # up to the band's last sampled row
            part = self._roi(plane, y, x0, rows, w)[::step, ::step]
            out[(y - y0) // step:][:len(part)] = part
        return out

    def close(self):
        self.doc.close()


@dataclass
class _CziLayout:
    """What the layer-0 subblock headers say: index range per dimension, pixel types, planes present."""
    lo: dict
    hi: dict
    pixel_types: set
    planes: set


def _czi_layout(doc) -> _CziLayout:
    """One pass over the subblock directory (headers only, no pixels)."""
    lo, hi, types, planes = {}, {}, set(), set()

    def visit(_, info):
        coord = info.coordinate.to_dict()
        for a, v in coord.items():
            lo[a], hi[a] = min(lo.get(a, v), v), max(hi.get(a, v), v)
        types.add(info.pixelType.name)
        planes.add(tuple(coord.get(a, 0) for a in _CZI_PLANE_AXES))
        return True

    doc.enumerate_subblocks_subset(visit, only_layer0=True)
    return _CziLayout(lo, hi, types, planes)


def _czi_check_layout(path: Path, lay: _CziLayout) -> np.dtype:
    """Refuse what would otherwise become a silent wrong frame; return the pixel dtype."""
    size = {a: lay.hi[a] - lay.lo[a] + 1 for a in lay.lo}
    if not lay.planes:
        fail(path, "CZI holds no image subblocks")
    if size.get("H", 1) > 1:
        fail(path, f"Airyscan raw data (H axis of {size['H']} detector elements); "
                   "process it in ZEN (Airyscan Processing) and give the processed file")
    if size.get("S", 1) > 1:
        fail(path, f"{size['S']} scenes (S axis: positions or wells of a mosaic acquisition); "
                   "split the scenes into one file each in ZEN and give those")
    other = {a: n for a, n in size.items() if a not in _CZI_PLANE_AXES + "SH" and n > 1}
    if other:
        fail(path, "unsupported CZI axes " + ", ".join(f"{a} of length {n}" for a, n in other.items())
             + "; export the planes to use as separate files")
    if any(t.startswith("Bgr") for t in lay.pixel_types):
        fail(path, f"RGB CZI ({', '.join(sorted(lay.pixel_types))}); export one grey channel")
    if len(lay.pixel_types) > 1:
        fail(path, f"channels differ in pixel type ({', '.join(sorted(lay.pixel_types))}); "
                   "export them with one type")
    n_planes = np.prod([size.get(a, 1) for a in _CZI_PLANE_AXES])
    if len(lay.planes) < n_planes:  # an interrupted acquisition: missing planes would read as black frames
        fail(path, f"only {len(lay.planes)} of {n_planes} (c, z, t) planes hold data (interrupted acquisition?)")
    ptype = next(iter(lay.pixel_types))
    if ptype not in _CZI_GREY:
        fail(path, f"unsupported CZI pixel type {ptype}")
    return _check_dtype(path, _CZI_GREY[ptype])


def _czi_pixel_size(doc) -> Optional[float]:
    """Micrometres per pixel from Scaling/Items/Distance[@Id='X'] (metres); ZEN writes 0 when unknown."""
    try:
        root = ET.fromstring(doc.raw_metadata)
    except Exception:
        return None
    for d in root.iter("Distance"):
        if d.get("Id") == "X":
            v = d.find("Value")
            try:
                um = float(v.text) * 1e6
            except (AttributeError, TypeError, ValueError):
                return None
            return float(f"{um:.10g}") if um > 0 else None  # 1e-6 scaling leaves ...99999996 noise
    return None


def _open_czi(path: Path) -> Source:
    from pylibCZIrw import czi as pyczi
    try:
        doc = pyczi.CziReader(str(path), cache_options=pyczi.CacheOptions(max_memory_usage=_CZI_CACHE_BYTES))
    except Exception as e:
        fail(path, f"not a readable CZI ({type(e).__name__}: {e})")
    try:
        lay = _czi_layout(doc)
        dtype = _czi_check_layout(path, lay)
        box = doc.total_bounding_rectangle_no_pyramid
        starts = {a: lay.lo.get(a, 0) for a in _CZI_PLANE_AXES}
        n = {a: lay.hi.get(a, 0) - starts[a] + 1 for a in _CZI_PLANE_AXES}
        return Source(path, n["C"], n["Z"], n["T"], box.h, box.w, dtype, _czi_pixel_size(doc), "czi",
                      _CziReader(doc, box.x, box.y, starts, dtype))
    except PSSRError:
        doc.close()
        raise
    except Exception as e:  # a damaged subblock directory or metadata segment
        doc.close()
        fail(path, f"not a readable CZI ({type(e).__name__}: {e})")
