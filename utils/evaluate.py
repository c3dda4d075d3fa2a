"""Step 5 bookkeeping: pair restorations with ground truth, measure every slice, summarize.

Restorations may be float32 (image_gen's default), so files are read with tifffile
directly (utils.sources accepts integer acquisitions only) and viewed as
(T, Z, C, Y, X). Pairing is by name: image_gen's tree
`PRED/<rel dir>/<method>/<stem>_<method>.tif`, or a flat folder of `<stem>*.tif`
per method (the original's stats/ layout), against `GT/<rel dir>/<stem>.tif`.
Real-world LR/HR pairs are two acquisitions that need not line up; `register=True`
aligns every restoration to its ground truth by a rigid translation first, as the
paper aligned its real-world image sets (Methods, "EM segmentation and analysis").
"""
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import tifffile
from scipy import fft as sfft
from scipy import ndimage
from scipy import stats as sstats

from .errors import PSSRError, fail, warn
from .fileio import atomic_path
from .metrics import central_window, find_background, frc_resolution, norm_minmse, psnr, sem, snr, squirrel, ssim
from .sources import find_images, open_source

__all__ = ["read_tzc", "frame_offsets", "find_predictions", "measure_file", "summarize", "gt_files", "BASELINE_NAMES",
           "estimate_shift", "apply_shift", "shared_crop", "error_map_path", "unmatched_predictions"]

# Names a bilinear baseline goes by: image_gen's folder, and the original's stats/bilinear folder.
BASELINE_NAMES = ("LR-bilinear", "bilinear")
_STACK_AXES = {"I": "T", "Q": "T"}


def read_tzc(path: Path) -> np.ndarray:
    """The image as a (T, Z, C, Y, X) array (memory-mapped when the file allows it)."""
    try:
        with tifffile.TiffFile(path) as tif:
            s = tif.series[0]
            axes, shape = s.axes, s.shape
            arr = None if s.dataoffset is not None else s.asarray()
        if arr is None:  # uncompressed and contiguous: map it, pages are read as slices are used
            arr = tifffile.memmap(path, mode="r")
    except Exception as e:
        fail(path, f"not a readable TIFF ({type(e).__name__}: {e})")
    axes = "".join(_STACK_AXES.get(a, a) for a in axes)
    if axes.endswith("S") or not axes.endswith("YX") or len(set(axes)) != len(axes) or set(axes) - set("TZCYX"):
        fail(path, f"unsupported axes '{s.axes}' {shape}; expected a grey image, stack or hyperstack")
    for a in "TZC":
        if a not in axes:
            arr, axes = arr[None], a + axes
    return np.transpose(arr, [axes.index(a) for a in "TZCYX"])


def _describe(a: np.ndarray) -> str:
    return "x".join(str(n) for n in a.shape) + " (TZCYX)"


def frame_offsets(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> Tuple[int, int]:
    """(t, z) offset of prediction frame 0 in the ground truth.

    A multi-frame model run with the original's dropped edges outputs 2k fewer
    frames along one axis; its frame i then matches ground-truth frame i + k."""
    if pred.shape[-2:] != gt.shape[-2:] or pred.shape[2] != gt.shape[2]:
        fail(pred_path, f"size {_describe(pred)} does not match ground truth {gt_path} {_describe(gt)}")
    dt, dz = gt.shape[0] - pred.shape[0], gt.shape[1] - pred.shape[1]
    if (dt and dz) or dt < 0 or dz < 0 or dt % 2 or dz % 2:
        fail(pred_path, f"frames {_describe(pred)} cannot be paired with ground truth {gt_path} {_describe(gt)}")
    return dt // 2, dz // 2


def find_predictions(gt_path: Path, gt_dir: Path, pred_dir: Path, label: Optional[str] = None,
                     gt_stems: Sequence[str] = ()) -> Dict[str, Path]:
    """{method: file} restorations of `gt_path` in `pred_dir`.

    Tree layout (image_gen): `<rel dir>/<method>/<stem>_<method>.tif`. Flat layout:
    `<rel dir>/<stem>.tif` or `<stem>_*.tif` (also directly in `pred_dir`), labelled
    `label` or the folder's name; a file goes to the longest ground-truth stem it starts with."""
    rel, stem = gt_path.parent.relative_to(gt_dir), gt_path.stem
    found = {}
    base = pred_dir / rel
    if base.is_dir():
        for m in sorted(d for d in base.iterdir() if d.is_dir()):
            p = m / f"{stem}_{m.name}.tif"
            if p.is_file():
                found[m.name] = p
    if found:
        return found
    for folder in dict.fromkeys([base, pred_dir]):
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.tif")):
            owner = max((s for s in gt_stems if p.stem == s or p.stem.startswith(s + "_")), key=len, default=None)
            if owner == stem:
                return {label or pred_dir.name: p}
    return {}


def _slice(a: np.ndarray, t: int, z: int, c: int, path: Optional[Path] = None) -> np.ndarray:
    """One frame as float32; NaN or inf (a diverged model, a broken export) would make every metric NaN."""
    x = np.asarray(a[t, z, c], np.float32)
    if path is not None and not np.isfinite(x).all():
        fail(path, f"frame t={t} z={z} c={c} holds {int((~np.isfinite(x)).sum())} NaN/inf values; "
                   f"metrics would be meaningless")
    return x


# Registration: the paper aligned its real-world image sets rigidly before comparing them (Methods, "EM
# segmentation and analysis": SIFT stack alignment in ImageJ); here scikit-image's phase correlation finds
# one sub-pixel translation per restoration, as a stack alignment moves each image on its own.
_REG_WINDOW = 1024  # the shift is found on a central window at most this size: cost bounded, not by image size
_SHIFT_PAD = 32  # mirrored border around a slice before its Fourier shift


def estimate_shift(gt: np.ndarray, x: np.ndarray, upsample: int = 20) -> Tuple[float, float]:
    """(dy, dx) that moves `x` onto `gt`, to 1/`upsample` pixel (scikit-image `phase_cross_correlation`).

    Both are made mean-free and Hann-windowed: the edges of non-periodic images would otherwise
    correlate best at no shift at all. Plain cross-correlation, not phase-normalized: whitening the
    spectrum weighs noise-only high frequencies like structure (measured on noisy, blurred restorations
    of random 128-px fields: errors up to 1 px phase-normalized, at most 0.07 px plain; 0.06 px on
    bilinear upsamplings of crappified real EM)."""
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation
    a, b = (central_window(np.asarray(v, np.float64), _REG_WINDOW) for v in (gt, x))
    w = window("hann", a.shape)
    shift, _, _ = phase_cross_correlation((a - a.mean()) * w, (b - b.mean()) * w, upsample_factor=upsample,
                                          normalization=None)
    return float(shift[0]), float(shift[1])


def apply_shift(x: np.ndarray, shift: Tuple[float, float]) -> np.ndarray:
    """`x` moved by `shift`, in Fourier space: sinc interpolation keeps the noise's variance, where a cubic
    spline cuts white noise's variance by 30% at a (0.4, 0.2)-px shift (measured: +1.4 dB PSNR on a noisy
    restoration).
    The slice is mirrored by 32 px + the shift first, so the wrap-around brings in mirrored content, not a
    jump that would ring; the edges the shift drags in are what `shared_crop` removes."""
    if not any(shift):
        return x
    pad = _SHIFT_PAD + int(np.ceil(max(map(abs, shift))))
    p = np.pad(np.asarray(x, np.float32), pad, mode="reflect")
    f = ndimage.fourier_shift(sfft.rfft2(p), shift, n=p.shape[1], axis=-1)
    return sfft.irfft2(f, s=p.shape)[pad:pad + x.shape[0], pad:pad + x.shape[1]].astype(np.float32)


def shared_crop(shifts: Sequence[Tuple[float, float]], shape: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the region no shift dragged an edge into (+1 px for the interpolation's reach).

    One region for every method of a slice, so the prediction and every baseline are scored on the
    same pixels and stay comparable."""
    def margin(v: float) -> int:
        return int(np.ceil(abs(v))) + 1 if v else 0
    top = max([margin(dy) for dy, _ in shifts if dy > 0], default=0)
    bottom = max([margin(dy) for dy, _ in shifts if dy < 0], default=0)
    left = max([margin(dx) for _, dx in shifts if dx > 0], default=0)
    right = max([margin(dx) for _, dx in shifts if dx < 0], default=0)
    return top, shape[0] - bottom, left, shape[1] - right


def _box_in(box: Tuple[int, int, int, int], y0: int, x0: int, shape: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """A ground-truth box in the coordinates of the region starting at (y0, x0), clipped to it."""
    by, bx, h, w = box
    ty, tx = max(by - y0, 0), max(bx - x0, 0)
    h, w = min(by - y0 + h, shape[0]) - ty, min(bx - x0 + w, shape[1]) - tx
    if h < 2 or w < 2:
        fail(None, f"--bg_box {box} lies in the border that registration crops away")
    return ty, tx, h, w


def error_map_path(maps_dir: Path, gt_path: Path, gt_dir: Path, method: str) -> Path:
    """`maps_dir/<rel dir>/<method>/<stem>_<method>_error.tif`, image_gen's tree."""
    rel = Path(gt_path).parent.relative_to(gt_dir)
    return Path(maps_dir) / rel / method / f"{Path(gt_path).stem}_{method}_error.tif"


def _open_maps(stack: ExitStack, dests: Dict[str, Path], shape: Tuple[int, ...],
               pixel_size: Optional[float]) -> Dict[str, np.ndarray]:
    """Memory-mapped float32 (T, Z, C, Y, X) hyperstacks on temporary names, renamed into place when
    `stack` closes without an error: one slice at a time is in memory, and no half-written map survives."""
    imagej = int(np.prod(shape)) * 4 < 2 ** 32 - 2 ** 25  # ImageJ hyperstacks are classic TIFF
    kw = dict(resolution=(1 / pixel_size, 1 / pixel_size)) if pixel_size else {}
    meta = {"axes": "TZCYX", **({"unit": "um"} if pixel_size and imagej else {})}
    out = {}
    for m, dest in dests.items():
        tmp = stack.enter_context(atomic_path(dest))
        out[m] = tifffile.memmap(tmp, shape=shape, dtype=np.float32, imagej=imagej, bigtiff=not imagej,
                                 metadata=meta, **kw)
        stack.callback(out[m].flush)  # runs before the rename (the stack unwinds last-in first-out)
    return out


def _pixel_size(path: Path) -> Optional[float]:
    try:
        with open_source(path) as s:
            return s.pixel_size
    except PSSRError:
        return None


def _score(y: np.ndarray, x: np.ndarray, box: Tuple[int, int, int, int],
           rsf_sigma: Union[float, str]) -> Tuple[dict, np.ndarray]:
    """PSNR/SSIM after norm_minmse, SQUIRREL's RSE/RSP (and error map), SNR of one restored slice."""
    g, xs = norm_minmse(y, x)
    q = squirrel(y, x, rsf_sigma)
    return dict(psnr=psnr(g, xs), ssim=ssim(g, xs), rse=q.rse, rsp=q.rsp, rsf_sigma=q.sigma,
                snr=snr(x, box)), q.error_map


def _method_slices(arrays: Dict[str, np.ndarray], offs: Dict[str, Tuple[int, int]], preds: Dict[str, Path],
                   t: int, z: int, c: int) -> Dict[str, np.ndarray]:
    """{method: slice} matching ground-truth frame (t, z, c); dropped edge frames are left out."""
    out = {}
    for m, a in arrays.items():
        pt, pz = t - offs[m][0], z - offs[m][1]
        if 0 <= pt < a.shape[0] and 0 <= pz < a.shape[1]:
            out[m] = _slice(a, pt, pz, c, preds[m])
    return out


def measure_file(gt_path: Path, preds: Dict[str, Path], pairs: Optional[Dict[str, Path]] = None,
                 bg_box: Optional[Tuple[int, int, int, int]] = None, frc: bool = True, register: bool = False,
                 rsf_sigma: Union[float, str] = "fit", maps: Optional[Dict[str, Path]] = None) -> List[dict]:
    """One row per (method, slice): PSNR/SSIM after norm_minmse, RSE/RSP, SNR, FRC resolution.

    The ground truth gets rows too (method 'HR': SNR and FRC only). SNR uses one
    background box per slice, found on the ground truth, for every method.
    `pairs[method]`: a second, independent acquisition restored the same way, for a
    two-image FRC; otherwise FRC splits each image in two. `register`: align each
    restoration to the ground truth (shift_y/shift_x in the rows; every method is scored
    on the same region, `roi` y0,x0,h,w); FRC is measured on the unregistered images,
    which need no ground truth. `maps[method]`: where to write its error maps."""
    gt = read_tzc(gt_path)
    px = _pixel_size(gt_path)
    arrays = {m: read_tzc(p) for m, p in preds.items()}
    second = {m: read_tzc(p) for m, p in (pairs or {}).items()}
    offs = {m: frame_offsets(a, gt, preds[m], gt_path) for m, a in arrays.items()}
    for m, a in second.items():
        if a.shape != arrays.get(m, gt).shape:
            fail(pairs[m], f"size {_describe(a)} does not match {preds.get(m, gt_path)} "
                           f"{_describe(arrays.get(m, gt))}")
    rows, warned = [], set()
    with ExitStack() as stack:
        emaps = _open_maps(stack, maps or {}, gt.shape, px)
        for t, z, c in np.ndindex(*gt.shape[:3]):
            y = _slice(gt, t, z, c, gt_path)
            xs = _method_slices(arrays, offs, preds, t, z, c)
            shifts = _align(y, xs, register, preds, gt_path, warned)
            y0, y1, x0, x1 = shared_crop(list(shifts.values()), y.shape)
            if y1 - y0 < 16 or x1 - x0 < 16:
                fail(gt_path, f"registration leaves {y1 - y0}x{x1 - x0} px of frame t={t} z={z} c={c} to compare")
            yc = y[y0:y1, x0:x1]
            box = _box_in(bg_box, y0, x0, yc.shape) if bg_box else find_background(yc, max(8, min(yc.shape) // 16))
            base = dict(file=gt_path.name, t=t, z=z, c=c)
            if register:
                base["roi"] = f"{y0},{x0},{y1 - y0},{x1 - x0}"
            b = _slice(second["HR"], t, z, c, pairs["HR"]) if "HR" in second else None
            rows.append(dict(base, method="HR", psnr=np.nan, ssim=np.nan, rse=np.nan, rsp=np.nan, rsf_sigma=np.nan,
                             snr=snr(yc, box), **_frc(y, b, px, frc), **_shift_cols((0.0, 0.0), register)))
            for m in emaps.keys() - xs.keys():
                emaps[m][t, z, c] = np.nan  # dropped edge frame of an original-style multi-frame run
            for m, x in xs.items():
                scores, emap = _score(yc, apply_shift(x, shifts[m])[y0:y1, x0:x1], box, rsf_sigma)
                b = _slice(second[m], t - offs[m][0], z - offs[m][1], c, pairs[m]) if m in second else None
                rows.append(dict(base, method=m, **scores, **_frc(x, b, px, frc), **_shift_cols(shifts[m], register)))
                if m in emaps:
                    emaps[m][t, z, c] = np.nan  # where registration cropped
                    emaps[m][t, z, c, y0:y1, x0:x1] = emap
    return rows


def _align(y: np.ndarray, xs: Dict[str, np.ndarray], register: bool, preds: Dict[str, Path], gt_path: Path,
           warned: set) -> Dict[str, Tuple[float, float]]:
    """{method: shift onto `y`} (no shift without `register`); a shift over 1/8 of the frame is warned
    about once per file, as it more likely means a wrong pairing than a misaligned stage."""
    shifts = {m: estimate_shift(y, x) if register else (0.0, 0.0) for m, x in xs.items()}
    for m, s in shifts.items():
        if max(map(abs, s)) > min(y.shape) / 8 and m not in warned:
            warned.add(m)
            warn(preds[m], f"registration moved it by ({s[0]:.1f}, {s[1]:.1f}) px onto {gt_path}; "
                           f"is that its ground truth?")
    return shifts


def _frc(x: np.ndarray, b: Optional[np.ndarray], px: Optional[float], on: bool) -> dict:
    """FRC columns, labelled with how they were measured: from two independent acquisitions, the paper's
    way (Methods, "Fourier-Ring-Correlation (FRC) analysis"), or one image split in two, the fallback."""
    if not on:
        return dict(frc_px=np.nan, frc_um=None, frc_from="")
    res_px, res_um = frc_resolution(x, b, px)
    return dict(frc_px=res_px, frc_um=res_um, frc_from="split" if b is None else "two acquisitions")


def _shift_cols(shift: Tuple[float, float], register: bool) -> dict:
    return dict(shift_y=shift[0], shift_x=shift[1]) if register else {}


_TESTED = ("psnr", "ssim", "rse", "rsp")


def summarize(df: pd.DataFrame, baseline: Optional[str] = None) -> pd.DataFrame:
    """Per method: mean and SEM of each measure, and a paired t-test of PSNR/SSIM/RSE/RSP against `baseline`."""
    out = []
    key = ["file", "t", "z", "c"]
    for m, g in df.groupby("method", sort=False):
        row = {"method": m, "n": len(g)}
        for k in ("psnr", "ssim", "rse", "rsp", "rsf_sigma", "snr", "frc_px", "frc_um"):
            if k not in g:
                continue
            v = pd.to_numeric(g[k], errors="coerce")
            fin = v[np.isfinite(v)]
            row[f"{k}_mean"], row[f"{k}_sem"] = (float(fin.mean()) if len(fin) else np.nan), sem(v)
        if "frc_from" in g:
            row["frc_from"] = ", ".join(sorted(set(g.frc_from.dropna().astype(str)) - {""}))
        if baseline and m not in (baseline, "HR"):
            both = g.merge(df[df.method == baseline], on=key, suffixes=("", "_b"))
            for k in (k for k in _TESTED if k in g):
                a, b = both[k].to_numpy(float), both[f"{k}_b"].to_numpy(float)
                ok = np.isfinite(a) & np.isfinite(b)
                if ok.sum() > 1 and np.any(a[ok] != b[ok]):
                    res = sstats.ttest_rel(a[ok], b[ok])
                    row[f"{k}_t"], row[f"{k}_p"] = float(res.statistic), float(res.pvalue)
        out.append(row)
    return pd.DataFrame(out)


def unmatched_predictions(folders: Sequence[Path], used: Sequence[Path], exclude: Sequence[Path] = ()) -> List[Path]:
    """Images under `folders` that no ground-truth image claimed: they would be ignored without a word.
    `exclude`: folders to pass over (metric_gen's own error maps, when they lie inside `folders`)."""
    used = {Path(p).resolve() for p in used}
    skip = [Path(e).resolve() for e in exclude]
    out = []
    for f in dict.fromkeys(Path(f) for f in folders):
        for p in find_images(f, recursive=True) if f.is_dir() else []:
            r = p.resolve()
            if r not in used and not any(r.is_relative_to(e) for e in skip):
                out.append(p)
    return out


def gt_files(gt_dir: Path) -> List[Path]:
    """Ground-truth images under `gt_dir` (recursively); an empty folder is an error."""
    if not Path(gt_dir).is_dir():
        fail(gt_dir, "ground-truth folder not found")
    files = find_images(gt_dir, recursive=True)
    if not files:
        fail(gt_dir, "ground-truth folder holds no .tif/.tiff/.czi images")
    return files
