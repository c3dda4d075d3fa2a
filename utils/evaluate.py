"""Step 5 bookkeeping: pair restorations with ground truth, measure every slice, summarize.

Restorations may be float32 (image_gen's default), so files are read with tifffile
directly (utils.sources accepts integer acquisitions only) and viewed as
(T, Z, C, Y, X). Pairing is by name: image_gen's tree
`PRED/<rel dir>/<method>/<stem>_<method>.tif`, or a flat folder of `<stem>*.tif`
per method (the original's stats/ layout), against `GT/<rel dir>/<stem>.tif`.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tifffile
from scipy import stats as sstats

from .errors import PSSRError, fail
from .metrics import find_background, frc_resolution, norm_minmse, psnr, sem, snr, ssim
from .sources import find_images, open_source

__all__ = ["read_tzc", "frame_offsets", "find_predictions", "measure_file", "summarize", "gt_files", "BASELINE_NAMES"]

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


def measure_file(gt_path: Path, preds: Dict[str, Path], pairs: Optional[Dict[str, Path]] = None,
                 bg_box: Optional[Tuple[int, int, int, int]] = None, frc: bool = True) -> List[dict]:
    """One row per (method, slice): PSNR/SSIM after norm_minmse, SNR, FRC resolution.

    The ground truth gets rows too (method 'HR': SNR and FRC only). SNR uses one
    background box per slice, found on the ground truth, for every method.
    `pairs[method]`: a second, independent acquisition restored the same way, for a
    two-image FRC; otherwise FRC splits each image in two."""
    gt = read_tzc(gt_path)
    try:
        with open_source(gt_path) as s:
            px = s.pixel_size
    except PSSRError:
        px = None
    arrays = {m: read_tzc(p) for m, p in preds.items()}
    second = {m: read_tzc(p) for m, p in (pairs or {}).items()}
    offs = {m: frame_offsets(a, gt, preds[m], gt_path) for m, a in arrays.items()}
    for m, a in second.items():
        if a.shape != arrays.get(m, gt).shape:
            fail(pairs[m], f"size {_describe(a)} does not match {preds.get(m, gt_path)} "
                           f"{_describe(arrays.get(m, gt))}")
    rows = []
    T, Z, C = gt.shape[:3]
    for t in range(T):
        for z in range(Z):
            for c in range(C):
                y = _slice(gt, t, z, c, gt_path)
                box = bg_box or find_background(y, max(8, min(y.shape) // 16))
                base = dict(file=gt_path.name, t=t, z=z, c=c)
                res_px, res_um = frc_resolution(y, _slice(second["HR"], t, z, c) if "HR" in second else None,
                                                px) if frc else (np.nan, None)
                rows.append(dict(base, method="HR", psnr=np.nan, ssim=np.nan, snr=snr(y, box),
                                 frc_px=res_px, frc_um=res_um))
                for m, a in arrays.items():
                    dt, dz = offs[m]
                    pt, pz = t - dt, z - dz
                    if not (0 <= pt < a.shape[0] and 0 <= pz < a.shape[1]):
                        continue  # dropped edge frame of an original-style multi-frame run
                    x = _slice(a, pt, pz, c, preds[m])
                    g, xs = norm_minmse(y, x)
                    b = _slice(second[m], pt, pz, c) if m in second else None
                    res_px, res_um = frc_resolution(x, b, px) if frc else (np.nan, None)
                    rows.append(dict(base, method=m, psnr=psnr(g, xs), ssim=ssim(g, xs), snr=snr(x, box),
                                     frc_px=res_px, frc_um=res_um))
    return rows


def summarize(df: pd.DataFrame, baseline: Optional[str] = None) -> pd.DataFrame:
    """Per method: mean and SEM of each measure, and a paired t-test of PSNR/SSIM against `baseline`."""
    out = []
    key = ["file", "t", "z", "c"]
    for m, g in df.groupby("method", sort=False):
        row = {"method": m, "n": len(g)}
        for k in ("psnr", "ssim", "snr", "frc_px", "frc_um"):
            v = pd.to_numeric(g[k], errors="coerce")
            fin = v[np.isfinite(v)]
            row[f"{k}_mean"], row[f"{k}_sem"] = (float(fin.mean()) if len(fin) else np.nan), sem(v)
        if baseline and m not in (baseline, "HR"):
            both = g.merge(df[df.method == baseline], on=key, suffixes=("", "_b"))
            for k in ("psnr", "ssim"):
                a, b = both[k].to_numpy(float), both[f"{k}_b"].to_numpy(float)
                ok = np.isfinite(a) & np.isfinite(b)
                if ok.sum() > 1 and np.any(a[ok] != b[ok]):
                    res = sstats.ttest_rel(a[ok], b[ok])
                    row[f"{k}_t"], row[f"{k}_p"] = float(res.statistic), float(res.pvalue)
        out.append(row)
    return pd.DataFrame(out)


def gt_files(gt_dir: Path) -> List[Path]:
    """Ground-truth images under `gt_dir` (recursively); an empty folder is an error."""
    if not Path(gt_dir).is_dir():
        fail(gt_dir, "ground-truth folder not found")
    files = find_images(gt_dir, recursive=True)
    if not files:
        fail(gt_dir, "ground-truth folder holds no .tif/.tiff/.czi images")
    return files
