"""Step 5: PSNR/SSIM (after norm_minmse), SNR and FRC resolution of restorations vs ground truth.

    python metric_gen.py --pred_dir OUT_OF_IMAGE_GEN --gt_dir GT [--lr_dir LR] [--baseline_dir DIR] [--out stats]
    python metric_gen.py -e EXPERIMENT -p PREDSET [--stats_dir stats]      # the original's layout:
        stats/output/EXPERIMENT/PREDSET, stats/bilinear/EXPERIMENT, stats/ground_truth/EXPERIMENT

Writes OUT/NAME_per_slice.csv (one row per method and slice), OUT/NAME_summary.csv
(mean ± SEM per method, paired t-test against the bilinear baseline), prints the
summary table, and draws OUT/NAME_bars.png (Fig. 1b-c / 3c style) and
OUT/NAME_panel_<stem>.png (LR | bilinear | PSSR | HR with a zoomed region).
"""
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import utils  # noqa: F401  (silences library import chatter first)
import numpy as np
import pandas as pd
from fastprogress.fastprogress import progress_bar

from utils.errors import fail, run_cli, warn_skip
from utils.evaluate import BASELINE_NAMES, find_predictions, gt_files, measure_file, read_tzc, summarize
from utils.figures import bar_sem, comparison_panel
from utils.fileio import atomic_path


def _box(bg_box) -> Optional[Tuple[int, int, int, int]]:
    if bg_box is None:
        return None
    v = tuple(int(x) for x in (bg_box.split(",") if isinstance(bg_box, str) else bg_box))
    if len(v) != 4:
        fail(None, f"--bg_box needs y0,x0,h,w, got {bg_box}")
    return v


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


def main(pred_dir: Optional[str] = None, gt_dir: Optional[str] = None, baseline_dir: Optional[str] = None,
         lr_dir: Optional[str] = None, pair_dir: Optional[str] = None, out: str = "stats",
         experiment: Optional[str] = None, predset: Optional[str] = None, stats_dir: str = "stats",
         name: Optional[str] = None, bg_box: Optional[Sequence[int]] = None, frc: bool = True,
         figures: bool = True, force: bool = False) -> None:
    """Measure restorations against ground truth (see module docstring).

    pair_dir: restorations of a second, independent acquisition (same tree as pred_dir; a method folder `HR`
    holds the ground truth's second acquisition) for a two-image FRC; without it FRC splits each image in two. bg_box: y0,x0,h,w of the SNR background (default: the emptiest
    window of each ground-truth slice). -e/--experiment, -p/--predset: the original's stats/ layout."""
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
    name = name or "metrics"
    targets = [out / f"{name}_per_slice.csv", out / f"{name}_summary.csv"]
    if any(p.exists() for p in targets) and not force:
        fail(targets[0], "results exist already; pass --force to overwrite them")
    gts = gt_files(gt_dir)
    stems = [p.stem for p in gts]
    rows, skipped, matched = [], 0, []
    for g in progress_bar(gts):
        preds = find_predictions(g, gt_dir, pred_dir, None, stems)
        if baseline_dir:
            preds.update(find_predictions(g, gt_dir, Path(baseline_dir), "bilinear", stems))
        if not preds:
            warn_skip(g, f"no restoration of it in {pred_dir}")
            skipped += 1
            continue
        pairs = find_predictions(g, gt_dir, Path(pair_dir), None, stems) if pair_dir else None
        rows += measure_file(g, preds, pairs, _box(bg_box), frc)
        matched.append((g, preds))
    if not matched:
        fail(pred_dir, f"no restoration matches any ground-truth image in {gt_dir}")
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(df.method))
    baseline = next((b for b in BASELINE_NAMES if b in methods), None)
    summary = summarize(df, baseline)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(df, targets[0])
    _write_csv(summary, targets[1])
    cols = ["method", "n", "psnr_mean", "psnr_sem", "ssim_mean", "ssim_sem", "snr_mean", "frc_px_mean"]
    cols += [c for c in ("psnr_p", "ssim_p") if c in summary]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if figures:
        scored = df[df.method != "HR"]
        order = ordered(methods)
        bar_sem({k: {m: scored[scored.method == m][k].to_numpy(float) for m in order} for k in ("psnr", "ssim")},
                out / f"{name}_bars.png", title=name)
        for g, preds in matched:
            rel = g.relative_to(gt_dir)
            panel(g, preds, Path(lr_dir) / rel if lr_dir else None, out / f"{name}_panel_{g.stem}.png")
    print(f"wrote {targets[0]}, {targets[1]}" + (" and figures" if figures else "") + f" under {out}"
          + (f"; skipped {skipped} ground-truth file(s) without restorations" if skipped else ""))


def short_flags(argv: Sequence[str]) -> list:
    """The original's -e/-p (fire cannot tell -p from --pred_dir/--pair_dir)."""
    alias = {"-e": "--experiment", "-p": "--predset"}
    return [alias.get(a, a) for a in argv]


if __name__ == "__main__":
    sys.argv = short_flags(sys.argv)
    run_cli(main)
