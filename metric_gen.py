"""Step 5: PSNR/SSIM (after norm_minmse), RSE/RSP error maps, SNR and FRC resolution of restorations vs
ground truth.

    python metric_gen.py --pred_dir OUT_OF_IMAGE_GEN --gt_dir GT [--lr_dir LR] [--baseline_dir DIR] [--out stats]
        [--register] [--rsf_sigma fit|PIXELS] [--noerror_maps]
    python metric_gen.py -e EXPERIMENT -p PREDSET [--stats_dir stats]      # the original's layout:
        stats/output/EXPERIMENT/PREDSET, stats/bilinear/EXPERIMENT, stats/ground_truth/EXPERIMENT

Writes OUT/NAME_per_slice.csv (one row per method and slice), OUT/NAME_summary.csv
(mean ± SEM per method, paired t-test against the bilinear baseline), prints the
summary table, writes the NanoJ-SQUIRREL-style error maps (Supplementary Figs. 1 and 3) as float32
TIFFs under OUT/NAME_error_maps/<rel dir>/<method>/<stem>_<method>_error.tif, and draws
OUT/NAME_bars.png (Fig. 1b-c / 3c style), OUT/NAME_panel_<stem>.png (LR | bilinear | PSSR | HR with
a zoomed region) and OUT/NAME_errors_<stem>.png (the error maps of the middle frame).
"""
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import utils  # noqa: F401  (silences library import chatter first)
import numpy as np
import pandas as pd

from utils.errors import fail, run_cli, warn, warn_skip
from utils.evaluate import (BASELINE_NAMES, error_map_path, find_predictions, gt_files, measure_file, read_tzc,
                            summarize, unmatched_predictions)
from utils.figures import bar_sem, comparison_panel, error_panel
from utils.fileio import atomic_path, tmp_name
from utils.progress import progress

_MAX_WARNED = 20  # restorations without ground truth named one by one; the rest are counted


def _box(bg_box) -> Optional[Tuple[int, int, int, int]]:
    if bg_box is None:
        return None
    v = tuple(int(x) for x in (bg_box.split(",") if isinstance(bg_box, str) else bg_box))
    if len(v) != 4:
        fail(None, f"--bg_box needs y0,x0,h,w, got {bg_box}")
    return v


def _rsf(rsf_sigma) -> Union[float, str]:
    """--rsf_sigma: 'fit' or a width in pixels (0 = no resolution scaling)."""
    if rsf_sigma == "fit":
        return "fit"
    try:
        v = None if isinstance(rsf_sigma, bool) else float(rsf_sigma)
    except (TypeError, ValueError):
        v = None
    if v is None or not np.isfinite(v) or v < 0:
        fail(None, f"--rsf_sigma takes 'fit' or a Gaussian width in pixels >= 0, got {rsf_sigma!r}")
    return v


def _warn_unmatched(folders, used, gt_dir: Path, exclude: Sequence[Path]) -> None:
    """A restoration that no ground-truth image claims is not scored: say so instead of dropping it silently."""
    lost = unmatched_predictions([Path(f) for f in folders if f], used, exclude)
    for p in lost[:_MAX_WARNED]:
        warn(p, f"no ground-truth image in {gt_dir} matches it; not scored")
    if len(lost) > _MAX_WARNED:
        warn(folders[0], f"{len(lost) - _MAX_WARNED} more restorations without ground truth; not scored")


def _write_csv(df: pd.DataFrame, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False)


def _middle(a: np.ndarray) -> np.ndarray:
    return np.asarray(a[a.shape[0] // 2, a.shape[1] // 2, 0], np.float32)


def ordered(methods) -> list:
    """Baselines first (bilinear before bicubic), then the models, as in the paper's figures."""
    base = [m for m in BASELINE_NAMES + ("LR-bicubic",) if m in methods]
    return base + [m for m in methods if m not in base and m != "HR"]


def panel(gt_path: Path, preds: dict, lr_path: Optional[Path], dest: Path) -> None:
    """LR | baselines | models | HR for the middle frame of one file."""
    images = {}
    if lr_path is not None and lr_path.is_file():
        images["LR"] = _middle(read_tzc(lr_path))
    gt = read_tzc(gt_path)
    for m in ordered(preds):
        images[m] = _middle(read_tzc(preds[m]))  # dropped edge frames keep the middle frame in the middle
    images["HR"] = _middle(gt)
    comparison_panel(images, dest, title=gt_path.stem)


def errors_figure(gt_path: Path, gt_dir: Path, methods, maps_dir: Path, dest: Path) -> None:
    """The error maps of the middle frame of one file, baselines first (Supplementary Figs. 1 and 3)."""
    maps = {}
    for m in ordered(methods):
        p = error_map_path(maps_dir, gt_path, gt_dir, m)
        if p.is_file():
            maps[m] = _middle(read_tzc(p))
    if maps:
        error_panel(maps, dest, title=f"{gt_path.stem}: |GT - (a (x * RSF) + b)|")


def _measure_all(gt_dir: Path, pred_dir: Path, baseline_dir, pair_dir, maps_dir: Optional[Path],
                 bg_box, frc: bool, register: bool, rsf_sigma, ours: Sequence[Path] = ()) -> Tuple[list, list, int]:
    """(rows, [(ground truth, {method: restoration})], ground-truth files skipped) over every ground truth.
    `ours`: folders of this script's own TIFFs (error maps), not restorations even inside PRED."""
    gts = gt_files(gt_dir)
    stems = [p.stem for p in gts]
    rows, skipped, matched = [], 0, []
    for g in progress(gts, label="ground-truth files"):
        preds = find_predictions(g, gt_dir, pred_dir, None, stems)
        if baseline_dir:
            preds.update(find_predictions(g, gt_dir, Path(baseline_dir), "bilinear", stems))
        if not preds:
            warn_skip(g, f"no restoration of it in {pred_dir}")
            skipped += 1
            continue
        pairs = find_predictions(g, gt_dir, Path(pair_dir), None, stems) if pair_dir else None
        maps = {m: error_map_path(maps_dir, g, gt_dir, m) for m in preds} if maps_dir else None
        rows += measure_file(g, preds, pairs, bg_box, frc, register, rsf_sigma, maps)
        matched.append((g, preds))
    _warn_unmatched([pred_dir, baseline_dir], [p for _, preds in matched for p in preds.values()], gt_dir,
                    [d for d in (maps_dir, *ours) if d])
    if not matched:
        fail(pred_dir, f"no restoration matches any ground-truth image in {gt_dir}")
    return rows, matched, skipped


@contextmanager
def _staged(dest: Optional[Path]) -> Iterator[Optional[Path]]:
    """A hidden folder to fill; it replaces `dest` only when the block finishes, so a failed run leaves
    the earlier error maps as they were (as atomic_path does for one file)."""
    if dest is None:
        yield None
        return
    tmp = tmp_name(dest)
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.mkdir(parents=True, exist_ok=True)  # no maps at all (only HR rows) still leaves the folder
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(pred_dir: Optional[str] = None, gt_dir: Optional[str] = None, baseline_dir: Optional[str] = None,
         lr_dir: Optional[str] = None, pair_dir: Optional[str] = None, out: str = "stats",
         experiment: Optional[str] = None, predset: Optional[str] = None, stats_dir: str = "stats",
         name: Optional[str] = None, bg_box: Optional[Sequence[int]] = None, frc: bool = True,
         register: bool = False, rsf_sigma: Union[float, str] = "fit", error_maps: bool = True,
         figures: bool = True, force: bool = False) -> None:
    """Measure restorations against ground truth (see module docstring).

    pair_dir: restorations of a second, independent acquisition (same tree as pred_dir; a method folder `HR`
    holds the ground truth's second acquisition) for a two-image FRC; without it FRC splits each image in two. bg_box: y0,x0,h,w of the SNR background (default: the emptiest
    window of each ground-truth slice). register: align each restoration to its ground truth first
    (real-world LR/HR pairs; a sub-pixel translation, recorded per row; every method scored on one region).
    rsf_sigma: the Gaussian resolution-scaling function of RSE/RSP, in ground-truth pixels, or 'fit' (per
    image, as NanoJ-SQUIRREL). error_maps: write them (--noerror_maps: don't).
    -e/--experiment, -p/--predset: the original's stats/ layout."""
    if experiment or predset:
        if not (experiment and predset):
            fail(None, "-e/--experiment and -p/--predset go together")
        sd = Path(stats_dir)
        pred_dir, gt_dir = str(sd / "output" / experiment / predset), str(sd / "ground_truth" / experiment)
        baseline_dir = baseline_dir or str(sd / "bilinear" / experiment)
        out, name = str(sd / "csv"), name or f"stats_{experiment}_{predset}"
    if not pred_dir or not gt_dir:
        fail(None, "give --pred_dir and --gt_dir (or -e EXPERIMENT -p PREDSET)")
    pred_dir, gt_dir, out = Path(pred_dir), Path(gt_dir), Path(out)
    if not pred_dir.is_dir():
        fail(pred_dir, "prediction folder not found")
    name, rsf_sigma = name or "metrics", _rsf(rsf_sigma)
    targets = [out / f"{name}_per_slice.csv", out / f"{name}_summary.csv"]
    maps_dir = out / f"{name}_error_maps" if error_maps else None
    existing = [p for p in targets + [maps_dir] if p is not None and p.exists()]
    if existing and not force:
        fail(existing[0], "results exist already; pass --force to overwrite them")
    with _staged(maps_dir) as staging:
        rows, matched, skipped = _measure_all(gt_dir, pred_dir, baseline_dir, pair_dir, staging, _box(bg_box),
                                              frc, register, rsf_sigma, ours=[out / f"{name}_error_maps"])
        df = pd.DataFrame(rows)
        methods = list(dict.fromkeys(df.method))
        summary = summarize(df, next((b for b in BASELINE_NAMES if b in methods), None))
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(df, targets[0])
        _write_csv(summary, targets[1])
    cols = ["method", "n", "psnr_mean", "psnr_sem", "ssim_mean", "ssim_sem", "rse_mean", "rsp_mean",
            "rsf_sigma_mean", "snr_mean", "frc_px_mean"]
    cols += [c for c in ("psnr_p", "ssim_p", "rse_p", "rsp_p") if c in summary]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if frc and (df.frc_from == "split").any():
        print("FRC: one image split in two (fallback, no finer than 4 px); the paper's way is two independent "
              "acquisitions (--pair_dir)")
    if figures:
        scored = df[df.method != "HR"]
        order = ordered(methods)
        bar_sem({k: {m: scored[scored.method == m][k].to_numpy(float) for m in order}
                 for k in ("psnr", "ssim", "rse", "rsp")}, out / f"{name}_bars.png", title=name)
        for g, preds in matched:
            rel = g.relative_to(gt_dir)
            panel(g, preds, Path(lr_dir) / rel if lr_dir else None, out / f"{name}_panel_{g.stem}.png")
            if maps_dir:
                errors_figure(g, gt_dir, preds, maps_dir, out / f"{name}_errors_{g.stem}.png")
    print(f"wrote {targets[0]}, {targets[1]}" + (" and figures" if figures else "") + f" under {out}"
          + (f"; skipped {skipped} ground-truth file(s) without restorations" if skipped else ""))


def short_flags(argv: Sequence[str]) -> list:
    """The original's -e/-p (fire cannot tell -p from --pred_dir/--pair_dir)."""
    alias = {"-e": "--experiment", "-p": "--predset"}
    return [alias.get(a, a) for a in argv]


if __name__ == "__main__":
    sys.argv = short_flags(sys.argv)
    run_cli(main)
