"""The paper's figures: metric bars with SEM (Fig. 1b-c, 3c), an LR | bilinear | PSSR | HR panel, and
NanoJ-SQUIRREL error maps side by side (Supplementary Figs. 1 and 3)."""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from .fileio import atomic_path
from .metrics import sem

__all__ = ["bar_sem", "comparison_panel", "error_panel"]


def _save(fig, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=Path(dest).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(dest)


def bar_sem(values: Dict[str, Dict[str, Sequence[float]]], dest: Path, title: str = "") -> Path:
    """One subplot per metric, one bar per method (mean ± SEM), as Fig. 1b-c and 3c.

    `values[metric][method]` holds the per-slice values."""
    metrics = list(values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        methods = list(values[m])
        means = [np.nanmean(np.asarray(values[m][k], np.float64)[np.isfinite(values[m][k])]) for k in methods]
        errs = [sem(values[m][k]) for k in methods]
        ax.bar(range(len(methods)), means, yerr=errs, capsize=4, color=plt.cm.tab10(np.arange(len(methods))))
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_ylabel(m.upper())
        lo = min(mu - e for mu, e in zip(means, errs))
        hi = max(mu + e for mu, e in zip(means, errs))
        pad = 0.15 * (hi - lo) + 1e-6
        ax.set_ylim(lo - pad if m == "psnr" else max(0, lo - pad), hi + pad)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, dest)


def _zoom_box(shape, zoom: Optional[Tuple[int, int, int, int]]) -> Tuple[int, int, int, int]:
    """Default zoom: the central quarter (y0, x0, h, w)."""
    if zoom is not None:
        return zoom
    h, w = shape[0] // 4, shape[1] // 4
    return (shape[0] - h) // 2, (shape[1] - w) // 2, h, w


def _display(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, (0.5, 99.8))
    return np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)


def comparison_panel(images: Dict[str, np.ndarray], dest: Path,
                     zoom: Optional[Tuple[int, int, int, int]] = None, title: str = "") -> Path:
    """LR | bilinear | PSSR | HR side by side, with a zoomed region (in HR pixels) below.

    Smaller images (the LR input) are shown nearest-upsampled to the last image's
    size so every panel covers the same field."""
    names = list(images)
    ref = np.shape(images[names[-1]])
    def fit(v):
        v = np.asarray(v, np.float32)
        f = max(1, int(round(ref[0] / v.shape[0])))
        return np.kron(v, np.ones((f, f), np.float32))[:ref[0], :ref[1]] if f > 1 else v
    big = {k: fit(v) for k, v in images.items()}
    y0, x0, h, w = _zoom_box(ref, zoom)
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.4), squeeze=False)
    for j, k in enumerate(names):
        im = _display(big[k])
        axes[0, j].imshow(im, cmap="gray", vmin=0, vmax=1)
        axes[0, j].add_patch(plt.Rectangle((x0, y0), w, h, fill=False, color="yellow", lw=1))
        axes[0, j].set_title(k)
        axes[1, j].imshow(im[y0:y0 + h, x0:x0 + w], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[:, j]:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, dest)


def error_panel(maps: Dict[str, np.ndarray], dest: Path, title: str = "") -> Path:
    """One error map per method on one colour scale (so darker is better across panels), each titled
    with its RSE, the root mean square of the map; NaN (borders cropped by registration) shows blank."""
    names = list(maps)
    finite = np.concatenate([np.asarray(v, np.float32)[np.isfinite(v)] for v in maps.values()])
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names) + 0.6, 3.0), squeeze=False)
    for ax, k in zip(axes[0], names):
        v = np.asarray(maps[k], np.float32)
        im = ax.imshow(v, cmap="inferno", vmin=0, vmax=max(vmax, 1e-9), interpolation="nearest")
        rse = float(np.sqrt(np.nanmean(v.astype(np.float64) ** 2))) if np.isfinite(v).any() else np.nan
        ax.set_title(f"{k}\nRSE {rse:.3g}")
        ax.axis("off")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="|error| (GT range = 1)")
    if title:
        fig.suptitle(title)
    return _save(fig, dest)
