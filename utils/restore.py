"""Inference engine: restore whole frames, z-stacks and time-lapses with bounded memory.

A frame is processed one row of tiles at a time: the LR band under the tile row is
read from the file (`Source.read` with a box), normalized with the percentiles of
the frame being restored (a multi-frame window's neighbours take the centre frame's,
exactly as step 2 normalizes training stacks), predicted in batches of tiles, blended into an
output row buffer, and finished output rows are streamed into the TIFF as strips (or into an
OME-Zarr as chunk rows, `utils.omezarr`).
Peak memory is therefore set by the tile size and the image width, never by the
image area (real EM frames are 24576²).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torch import nn

from .errors import fail, warn
from .fileio import atomic_path
from .norm import PCT_HI, PCT_LO, MAX_PCT_PIXELS, normalize
from .omezarr import ZARR_SUFFIX, write_omezarr_stream
from .resample import resample_note
from .sources import Source

__all__ = ["SEAMS", "SEAM_BAND", "SEAM_SIGMA", "OUT_DTYPES", "frame_windows", "tile_starts",
           "axis_weights", "dihedral", "Upsampler", "Predictor", "frame_percentiles", "restore_frame", "to_dtype",
           "write_tif_stream", "write_output", "plan_frames", "RestoreSpec", "frame_restorer", "part_dir", "read_part",
           "restore_parts", "restore_file"]

# 'linear'/'cosine': overlapping tiles cross-fade with a ramp over the overlap.
# 'blur': the paper's method - tiles meet at the middle of the overlap and a
# Gaussian (sigma 1) smooths a 10-pixel band across each seam.
SEAMS = ("cosine", "linear", "blur")
SEAM_BAND, SEAM_SIGMA = 10, 1.0
_BLUR_RADIUS = int(4 * SEAM_SIGMA)  # scipy's default truncation
_SEAM_CONTEXT = SEAM_BAND // 2 + _BLUR_RADIUS
OUT_DTYPES = ("float32", "uint16", "uint8")


# --------------------------------------------------------------------------- frames

def frame_windows(n: int, n_frames: int, drop_edges: bool = False) -> List[Tuple[int, List[int]]]:
    """(output frame, input frames t-k..t+k) for each frame a multi-frame model sees.

    Edge frames repeat the edge frame where the movie has no frame (t=0 sees 0,0,0,1,2), so the output keeps
    all `n` frames. Not a reflected window (2,1,0,1,2): a trained model reads its neighbours as motion before
    and after t, and a mirrored past puts both on one side; measured on a held-out synthetic time-lapse, the
    first and last frames scored 2.0-3.5 dB higher repeated than reflected. `drop_edges` reproduces the original
    (the first and last k frames are dropped, n - 2k outputs)."""
    k = n_frames // 2
    if drop_edges:
        return [(t, list(range(t - k, t + k + 1))) for t in range(k, n - k)]
    return [(t, [min(max(t + d, 0), n - 1) for d in range(-k, k + 1)]) for t in range(n)]


# --------------------------------------------------------------------------- tiles

def tile_starts(n: int, tile: int, overlap: int) -> List[int]:
    """Evenly spaced tile starts covering [0, n) with at least `overlap` pixels shared."""
    if n <= tile:
        return [0]
    if not 0 <= overlap < tile:
        fail(None, f"overlap {overlap} must be >= 0 and smaller than the tile size {tile}")
    k = int(np.ceil((n - tile) / (tile - overlap))) + 1
    return [int(v) for v in np.round(np.linspace(0, n - tile, k))]


def _ramp(m: int, mode: str) -> np.ndarray:
    """Rising weights over an overlap of m pixels (strictly positive, so sums never vanish)."""
    u = (np.arange(m) + 0.5) / m
    if mode == "linear":
        return u
    if mode == "cosine":
        return 0.5 - 0.5 * np.cos(np.pi * u)
    return (np.arange(m) >= m // 2).astype(np.float64)  # 'blur': hard cut at the middle


def axis_weights(starts: Sequence[int], length: int, i: int, scale: int, mode: str) -> np.ndarray:
    """Output-pixel weights of tile `i` along one axis: ramps where it overlaps its neighbours."""
    w = np.ones(length * scale)
    if i > 0:
        m = (starts[i - 1] + length - starts[i]) * scale
        if m > 0:
            w[:m] *= _ramp(m, mode)
    if i < len(starts) - 1:
        m = (starts[i] + length - starts[i + 1]) * scale
        if m > 0:
            w[len(w) - m:] *= _ramp(m, mode)[::-1]
    return w.astype(np.float32)


def _seams(starts: Sequence[int], length: int, scale: int) -> List[int]:
    """Output positions where neighbouring tiles meet in 'blur' mode (middle of each overlap)."""
    out = []
    for a, b in zip(starts[:-1], starts[1:]):
        m = (a + length - b) * scale
        out.append(b * scale + m // 2)
    return out


def _blur_band(x: np.ndarray, c: int, axis: int) -> None:
    """Smooth the SEAM_BAND pixels centred on seam `c` along `axis`, in place."""
    n = x.shape[axis]
    lo, hi = max(0, c - _SEAM_CONTEXT), min(n, c + _SEAM_CONTEXT)
    b0, b1 = max(0, c - SEAM_BAND // 2), min(n, c + SEAM_BAND // 2)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(lo, hi)
    smooth = gaussian_filter1d(x[tuple(sl)], SEAM_SIGMA, axis=axis, mode="nearest")
    src = [slice(None)] * x.ndim
    src[axis] = slice(b0 - lo, b1 - lo)
    dst = [slice(None)] * x.ndim
    dst[axis] = slice(b0, b1)
    x[tuple(dst)] = smooth[tuple(src)]


# --------------------------------------------------------------------------- models

class Upsampler(nn.Module):
    """Baseline 'model': interpolates the centre frame (bilinear or bicubic) by `scale`."""

    def __init__(self, scale: int, mode: str = "bilinear"):
        super().__init__()
        self.scale, self.mode = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        return F.interpolate(x[:, c:c + 1], scale_factor=self.scale, mode=self.mode, align_corners=False)


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """Symmetry k of the square (bit0 flip x, bit1 flip y, bit2 transpose) on the last two axes, or its
    inverse; pixel-exact (training's `data.dihedral_matrix(k)` is the same map as an affine matrix)."""
    if inverse and k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x.transpose(-1, -2) if k & 4 and not inverse else x


class Predictor:
    """Run a model on batches of LR tiles (numpy in, numpy out).

    The network runs as `utils.speed.inference_model` makes it (norms folded into the weights, channels_last,
    the same output to fp32 rounding; `optimize=False` runs `model` as given). `fast`: bfloat16 weights and
    autocast, float32 output (see bench/bench_infer.py for when it pays). `tta`: average the predictions of
    the 8 flips/transposes of each tile (test-time augmentation: the network's errors differ between
    orientations while the image does not, so the mean is closer to the truth; 8x the compute). Tiles are
    reflect-padded to a multiple of `multiple` because the U-Net's encoder halves the size."""

    def __init__(self, model: nn.Module, scale: int, device: str = "cpu", fast: bool = False,
                 batch_size: int = 4, multiple: int = 32, tta: bool = False, optimize: bool = True):
        from .speed import inference_model
        self.device, self.scale, self.fast, self.tta = torch.device(device), scale, fast, tta
        self.batch_size, self.multiple = max(1, batch_size), multiple
        self.model = model.to(self.device).eval()
        self._autocast = fast and not optimize  # an optimized fast model casts by itself
        if optimize:
            self.model = inference_model(self.model, torch.bfloat16 if fast else torch.float32, channels_last=True)
        elif fast:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if not (ph or pw):
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self._pad(x)
        if self._autocast:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                y = self.model(x)
        else:
            y = self.model(x)
        return y[:, 0, :h * self.scale, :w * self.scale].float()

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """tiles (B, n_frames, h, w) float32 in [0, 1] -> (B, h*scale, w*scale) float32."""
        outs = []
        for i in range(0, len(tiles), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i:i + self.batch_size])).to(self.device)
            if self.tta:
                y = sum(dihedral(self._run(dihedral(x, k)), k, inverse=True) for k in range(8)) / 8
            else:
                y = self._run(x)
            outs.append(y.cpu().numpy())
        return np.concatenate(outs)


# --------------------------------------------------------------------------- one frame

def frame_percentiles(src: Source, c: int, z: int, t: int, pcts: Sequence[float] = (PCT_LO, PCT_HI),
                      max_pixels: int = MAX_PCT_PIXELS) -> Tuple[float, float]:
    """Per-frame normalization percentiles from the same frame sample as step 1 (`Source.sample`)."""
    lo, hi = np.percentile(src.sample(c, z, t, max_pixels), pcts)
    return float(lo), float(hi)


def restore_frame(read_band: Callable[[int, int], np.ndarray], ny: int, nx: int, predict: Callable,
                  scale: int, tile: Optional[int] = None, overlap: int = 16,
                  seam: str = "blur") -> Iterator[np.ndarray]:
    """Yield the restored frame as consecutive bands of finished output rows (float32).

    `read_band(y0, h)` returns the normalized LR rows [y0, y0+h) as (n_frames, h, nx).
    `tile`: LR tile side (None: the whole frame as one tile)."""
    if seam not in SEAMS:
        fail(None, f"unknown seam method '{seam}'; choose one of {', '.join(SEAMS)}")
    ty, tx = min(tile or ny, ny), min(tile or nx, nx)
    ys, xs = tile_starts(ny, ty, overlap), tile_starts(nx, tx, overlap)
    wys = [axis_weights(ys, ty, i, scale, seam) for i in range(len(ys))]
    wxs = [axis_weights(xs, tx, j, scale, seam) for j in range(len(xs))]
    W = nx * scale
    wx_sum = np.zeros(W, np.float32)
    for x0, wx in zip(xs, wxs):
        wx_sum[x0 * scale:(x0 + tx) * scale] += wx
    wy_sum = np.zeros(ny * scale, np.float32)
    for y0, wy in zip(ys, wys):
        wy_sum[y0 * scale:(y0 + ty) * scale] += wy
    blur = seam == "blur"
    seams_y = _seams(ys, ty, scale) if blur else []
    seams_x = _seams(xs, tx, scale) if blur else []
    batch = getattr(predict, "batch_size", len(xs))
    # Output rows [base, base + len(buf)); one tile row plus the seam context is all it ever holds.
    buf = np.zeros((ty * scale + _SEAM_CONTEXT + 1, W), np.float32)
    base = finished = 0  # rows below `finished` are normalized (divided by the weight sums)
    for i, y0 in enumerate(ys):
        band = read_band(y0, ty)
        oy0, oy1 = y0 * scale, (y0 + ty) * scale
        rows = buf[oy0 - base:oy1 - base]
        for j in range(0, len(xs), batch):
            preds = predict(np.stack([band[:, :, x0:x0 + tx] for x0 in xs[j:j + batch]]))
            for x0, wx, p in zip(xs[j:j + batch], wxs[j:j + batch], preds):
                p *= wys[i][:, None]
                p *= wx[None, :]
                rows[:, x0 * scale:(x0 + tx) * scale] += p
        final = ys[i + 1] * scale if i + 1 < len(ys) else ny * scale
        done = buf[finished - base:final - base]
        done /= wy_sum[finished:final, None]  # two in-place divisions: no band-sized temporary
        done /= wx_sum[None, :]
        finished = final
        while seams_y and seams_y[0] + _SEAM_CONTEXT <= final:
            _blur_band(buf, seams_y.pop(0) - base, axis=0)
        upto = min(final, seams_y[0] - _SEAM_CONTEXT) if seams_y else final
        if upto > base:
            n = upto - base
            for cx in seams_x:
                _blur_band(buf[:n], cx, axis=1)
            yield buf[:n].copy()
            rest = buf[n:oy1 - base].copy()  # unfinished rows (an overlap's worth) move to the top
            buf[:] = 0
            buf[:len(rest)] = rest
            base = upto


# --------------------------------------------------------------------------- files

def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] prediction to the output dtype (integers clipped and rounded)."""
    if dtype == "float32" or x.dtype == np.dtype(dtype):  # the latter: a part file's rows, converted already
        return np.asarray(x, dtype)
    top = np.iinfo(dtype).max
    return np.clip(np.round(x * top), 0, top).astype(dtype)


def _strips(bands: Iterator[np.ndarray], rows: int, dtype: str) -> Iterator[bytes]:
    """Re-cut bands of any height into strips of exactly `rows` rows (the last one shorter),
    slicing each band in place: only the rows left over between bands are copied."""
    left: Optional[np.ndarray] = None
    for b in bands:
        b = to_dtype(b, dtype)
        i = 0
        if left is not None:
            i = rows - len(left)
            if len(b) < i:
                left = np.concatenate([left, b])
                continue
            yield np.concatenate([left, b[:i]]).tobytes()
            left = None
        while i + rows <= len(b):
            yield b[i:i + rows].tobytes()
            i += rows
        if i < len(b):
            left = b[i:].copy()
        b = None  # let the band go before the producer makes the next one
    if left is not None:
        yield left.tobytes()


def write_tif_stream(dest: Path, pages: Iterator[Iterator[np.ndarray]], shape: Tuple[int, ...], axes: str,
                     dtype: str = "float32", pixel_size: Optional[float] = None, strip_rows: int = 64,
                     note: Optional[dict] = None) -> Path:
    """Write an ImageJ hyperstack page by page, band by band, then rename it into place.

    `pages` yields one iterator of row bands per YX page, in `axes` order; nothing
    larger than a band is ever held, and an interrupted run leaves no file at `dest`.
    `note` (how the input was resampled) goes into the ImageJ 'Info' text as `pssr: {json}`."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    imagej = nbytes < 2 ** 32 - 2 ** 25  # ImageJ hyperstacks are classic TIFF; bigger ones go BigTIFF
    rows = min(strip_rows, shape[-2])
    data = (s for page in pages for s in _strips(page, rows, dtype))
    kw = dict(resolution=(1 / pixel_size, 1 / pixel_size)) if pixel_size else {}
    meta = {"axes": axes, **({"unit": "um"} if pixel_size else {})}
    if note:
        meta["Info"] = f"pssr: {json.dumps(note)}"
    with atomic_path(dest) as tmp:
        tifffile.imwrite(tmp, data=data, shape=shape, dtype=dtype, rowsperstrip=rows, imagej=imagej,
                         bigtiff=not imagej, metadata=meta if imagej else {"axes": axes}, **kw)
    return Path(dest)


def _as_dtype(bands: Iterator[np.ndarray], dtype: str) -> Iterator[np.ndarray]:
    for b in bands:
        b = to_dtype(b, dtype)
        yield b
        b = None  # let the band go before the producer makes the next one


def write_output(dest: Path, pages: Iterator[Iterator[np.ndarray]], shape: Tuple[int, ...], axes: str,
                 dtype: str = "float32", pixel_size: Optional[float] = None, note: Optional[dict] = None) -> Path:
    """`write_tif_stream`, or an OME-Zarr image (chunked, with a pyramid) when `dest` ends in `.zarr`."""
    if Path(dest).suffix.lower() == ZARR_SUFFIX:
        return write_omezarr_stream(dest, (_as_dtype(p, dtype) for p in pages), shape, axes, dtype, pixel_size,
                                    note)
    return write_tif_stream(dest, pages, shape, axes, dtype, pixel_size, note=note)


def plan_frames(src: Source, n_frames: int, lr_type: str = "s", channel: Optional[int] = None,
                drop_edges: bool = False) -> Tuple[List[Tuple[int, int, int, List[Tuple[int, int, int]]]], Dict[str, int]]:
    """Output frames (t, z, c, input frames) in ImageJ TZC order, and the output axis lengths.

    Multi-frame models slide along time ('t') or depth ('z'); raises PSSRError
    when the file cannot feed the model (channel missing, too few frames)."""
    if channel is not None and not 0 <= channel < src.nc:
        fail(src.path, f"has {src.nc} channel(s); channel {channel} does not exist")
    chans = [channel] if channel is not None else list(range(src.nc))
    axis = "z" if lr_type == "z" else "t"
    n_slide = src.nz if axis == "z" else src.nt
    n_other = src.nt if axis == "z" else src.nz
    if n_frames > 1 and n_slide == 1 and n_other > 1:
        other = "time points" if axis == "z" else "z-slices"
        fail(src.path, f"the model needs {n_frames} frames along {'z' if axis == 'z' else 'time'} but the file has "
                       f"1 there and {n_other} {other}")
    if n_frames > 1 and n_slide == 1:
        warn(src.path, f"a single frame: the {n_frames}-frame model sees it {n_frames} times, without the "
                       f"neighbouring frames it was trained to use")
    if n_frames > 1 and drop_edges and n_slide < n_frames:
        fail(src.path, f"{n_slide} frame(s) along {axis}: fewer than the model's {n_frames} (--drop_edges)")
    wins = frame_windows(n_slide, n_frames, drop_edges) if n_frames > 1 else [(i, [i]) for i in range(n_slide)]
    n_out = {"T": src.nt, "Z": src.nz, "C": len(chans)}
    n_out["Z" if axis == "z" else "T"] = len(wins)
    plan = []
    for it in range(n_out["T"]):
        for iz in range(n_out["Z"]):
            for ic, c in enumerate(chans):
                ins = wins[iz if axis == "z" else it][1]
                if axis == "z":
                    frames = [(c, s, it) for s in ins]
                else:
                    frames = [(c, iz, s) for s in ins]
                plan.append((it, iz, ic, frames))
    return plan, n_out


@dataclass(frozen=True)
class RestoreSpec:
    """How one model restores a file: its geometry and input normalization (from its `.json`) and image_gen's
    tiling and output choices. `tile` is the LR tile side (None: whole frames); `seam` the paper's 'blur' or a
    blending ramp; `dtype` the output's."""
    scale: int = 4
    n_frames: int = 1
    lr_type: str = "s"
    norm: Tuple[float, float] = (PCT_LO, PCT_HI)
    channel: Optional[int] = None
    drop_edges: bool = False
    tile: Optional[int] = None
    overlap: int = 16
    seam: str = "blur"
    dtype: str = "float32"

    @classmethod
    def of_model(cls, meta: dict, **choices) -> "RestoreSpec":
        """The spec of a model's metadata (`utils.model` `.json`, or a baseline's), with image_gen's choices."""
        return cls(int(meta["scale"]), int(meta["n_frames"]), meta["lr_type"],
                   (meta["norm"]["lo"], meta["norm"]["hi"]), **choices)


def frame_restorer(src: Source, predict: Callable,
                   spec: RestoreSpec) -> Callable[[List[Tuple[int, int, int]]], Iterator[np.ndarray]]:
    """`page(frames)`: the row bands of one output frame restored from the input `frames` (c, z, t), every one
    normalized with the percentiles of the window's centre frame, as step 2 normalizes training stacks."""
    stats: Dict[Tuple[int, int, int], Tuple[float, float]] = {}

    def stat(f):
        if f not in stats:
            stats[f] = frame_percentiles(src, *f, pcts=spec.norm)
        return stats[f]

    def page(frames):
        lo_hi = stat(frames[len(frames) // 2])

        def read_band(y0, h):
            return np.stack([normalize(src.read(*f, box=(y0, 0, h, src.nx)), *lo_hi) for f in frames])
        return restore_frame(read_band, src.ny, src.nx, predict, spec.scale, spec.tile, spec.overlap, spec.seam)
    return page


# --------------------------------------------------------------------------- frames of one file across ranks
# When the frames of one file are shared between processes, each restores its frames into one-page TIFFs
# `.{dest name}.parts/NNNNNN.tif` (atomic, so a killed run leaves whole parts only), and the rank that writes
# `dest` copies them in, band by band (restore_file's `parts`): the file is then byte-identical to one
# restored by a single process, and a resumed run redoes only the missing frames.

def part_dir(dest: Path) -> Path:
    """The hidden folder holding `dest`'s frames restored by several processes."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.parts")


def _part(parts: Path, i: int) -> Path:
    return Path(parts) / f"{i:06d}.tif"


def _done_parts(parts: Optional[Path], n: int, hw: Sequence[int], dtype: str) -> Dict[int, Path]:
    """{frame index: part file} of the complete parts of the right size and dtype (others are redone)."""
    if parts is None or not Path(parts).is_dir():
        return {}
    done = {}
    for i in range(n):
        p = _part(parts, i)
        if p.exists() and _part_ok(p, hw, dtype):
            done[i] = p
        elif p.exists():
            warn(p, "not a frame of this restoration (size, dtype, or a broken file); restoring it again")
    return done


def _part_ok(path: Path, hw: Sequence[int], dtype: str) -> bool:
    """One contiguous page of the expected size and dtype, all its bytes on disk."""
    try:
        with tifffile.TiffFile(path) as t:
            page = t.pages[0]
            return (page.is_final and page.shape == tuple(hw) and page.dtype == np.dtype(dtype)
                    and path.stat().st_size >= page.dataoffsets[0] + page.nbytes)
    except Exception:
        return False


def read_part(path: Path, band_bytes: int = 1 << 26) -> Iterator[np.ndarray]:
    """A part's rows in bands of about `band_bytes` (64 MiB): memory stays bounded however large the frame."""
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        if not page.is_final:
            fail(path, "part file is not one contiguous, uncompressed page (not written by restore_parts)")
        offset, (h, w) = page.dataoffsets[0], page.shape
        dt = page.dtype.newbyteorder(t.byteorder)
    rows = max(1, band_bytes // (w * dt.itemsize))
    with open(path, "rb") as f:
        f.seek(offset)
        for y0 in range(0, h, rows):
            n = min(rows, h - y0)
            yield np.fromfile(f, dt, n * w).reshape(n, w).astype(dt.newbyteorder("="), copy=False)


def restore_parts(src: Source, parts: Path, pages: Sequence[int], predict: Callable, spec: RestoreSpec,
                  progress: Optional[Callable] = None, keep: bool = False) -> int:
    """Restore only the output frames `pages` (indices into restore_file's frame order) of `src`, each into its
    own part file under `parts`, in the output dtype; `keep` leaves parts already there. Returns how many
    were written."""
    plan, _ = plan_frames(src, spec.n_frames, spec.lr_type, spec.channel, spec.drop_edges)
    page = frame_restorer(src, predict, spec)
    hw = (src.ny * spec.scale, src.nx * spec.scale)
    have = _done_parts(parts, len(plan), hw, spec.dtype) if keep else {}
    todo = [i for i in pages if i not in have]
    for i in progress(todo) if progress else todo:
        write_tif_stream(_part(parts, i), iter([page(plan[i][3])]), hw, "YX", spec.dtype)
    return len(todo)


def restore_file(src: Source, dest: Path, predict: Callable, spec: RestoreSpec = RestoreSpec(),
                 progress: Optional[Callable] = None, parts: Optional[Path] = None) -> Tuple[int, ...]:
    """Restore every frame of `src` into the ImageJ TIFF `dest` (OME-Zarr when it ends in `.zarr`); returns
    the output shape.

    `parts`: a folder of frames restored already (`restore_parts`, by other ranks or a killed run); those
    are copied, the others restored; once `dest` is written no parts folder of it is left.

    Every frame of a window is normalized with the `spec.norm` percentiles of the window's
    centre frame, as step 2 normalizes training stacks (so bleaching or a passing bright
    object stays visible to the network as in the raw data); the pixel size is divided by the scale."""
    if spec.dtype not in OUT_DTYPES:
        fail(None, f"unknown output dtype '{spec.dtype}'; choose one of {', '.join(OUT_DTYPES)}")
    plan, n_out = plan_frames(src, spec.n_frames, spec.lr_type, spec.channel, spec.drop_edges)
    page = frame_restorer(src, predict, spec)
    lead = [(a, n_out[a]) for a in "TZC" if n_out[a] > 1]
    axes = "".join(a for a, _ in lead) + "YX"
    shape = tuple(n for _, n in lead) + (src.ny * spec.scale, src.nx * spec.scale)
    items = progress(plan) if progress else plan
    done = _done_parts(parts, len(plan), shape[-2:], spec.dtype)
    pages = (read_part(done[i]) if i in done else page(frames) for i, (*_, frames) in enumerate(items))
    px = src.pixel_size / spec.scale if src.pixel_size else None
    write_output(dest, pages, shape, axes, spec.dtype, px, resample_note(src))
    shutil.rmtree(parts if parts is not None else part_dir(dest), ignore_errors=True)  # none outlive `dest`
    return shape
