"""Real-data quality (not a test): recipes/quick.sh on real EM, restored with image_gen.py's defaults on slices
training never saw, against bilinear upsampling of the same LR, with a paired t-test.

    python bench/bench_quality.py [--variants quick,fixed_pairs] [--minutes 20] [--work bench/out/quality] [--isbi TIF]

Data: the ISBI 2012 ssTEM volume in ../shared/data/em_isbi2012 (30 x 512², 4 nm pixels): slices 0-19 are the
training source, 20-23 its validation split, 24-29 the test set. The test LR comes from two degradations:
`scan`, written here and unlike every crappifier (probe blur sigma 1 HR px, 4x point sampling, Poisson noise at
50 photons for white plus Gaussian read noise 0.01), and `em`, the paper's EM crappifier that training uses.
Metrics as metric_gen.py (PSNR/SSIM after norm_minmse). Each variant is quick.sh with some settings fixed
(VARIANTS below); results go to WORK/quality.csv and are printed as a table.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: F401,E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from utils.crappifiers import crappify, downsample  # noqa: E402
from utils.errors import fail, run_cli  # noqa: E402
from utils.metrics import slice_metrics  # noqa: E402
from utils.norm import to_uint8  # noqa: E402

ISBI = ROOT.parent / "shared" / "data" / "em_isbi2012" / "isbi2012_train.tif"
# name: settings fixed for quick.sh (environment variables; see recipes/quick.sh)
VARIANTS = {
    "quick": {},
    "fixed_pairs": {"FRESH": "0"},
    "paper_noise": {"STRENGTH": "1"},
    "mse": {"LOSS": ""},
    "resnet18": {"ARCH": "resnet18"},
    # the paper's HR-space network (~5x slower per image than --lr_space, so fewer epochs), without and with
    # the residual bilinear skip (--lr_space always has it)
    "paper_net": {"NET": "", "LOSS": "", "LR": "1e-3", "EPOCHS": "2"},
    "paper_net_residual": {"NET": "--residual", "LOSS": "", "LR": "1e-3", "EPOCHS": "2"},
    "lr_1e-3": {"LR": "1e-3"},
    "no_rotate_zoom": {"TRAIN_EXTRA": "--max_rotate 0 --max_zoom 1"},
}


def degrade_scan(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fast point scan unlike any crappifier: probe blur, 4x point sampling, Poisson + read noise."""
    lr = downsample(gaussian_filter(hr, 1.0), 4)
    return np.clip(rng.poisson(lr * 50) / 50 + rng.normal(0, 0.01, lr.shape), 0, 1)


DEGRADATIONS = {"scan": degrade_scan,
                "em": lambda hr, rng: crappify("em_AG_D_sameas_preprint", hr, 4, rng)}


def make_data(work: Path, isbi: Path = ISBI) -> Path:
    """Source tree and test sets under WORK/data (kept between runs)."""
    data = work / "data"
    if (data / "done").exists():
        return data
    vol = tifffile.imread(isbi)
    for split, part in (("train", vol[:20]), ("valid", vol[20:24])):
        (data / "src/em" / split).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(data / "src/em" / split / f"isbi_{split}.tif", part, imagej=True,
                         resolution=(250, 250), metadata={"unit": "um", "axes": "ZYX", "spacing": 0.05})
    rng = np.random.default_rng(2012)
    for d in ["gt"] + [f"lr_{k}" for k in DEGRADATIONS]:
        (data / "test" / d).mkdir(parents=True, exist_ok=True)
    for i, hr in enumerate(vol[24:], start=24):
        tifffile.imwrite(data / "test/gt" / f"s{i}.tif", hr)
        for k, degrade in DEGRADATIONS.items():
            tifffile.imwrite(data / "test" / f"lr_{k}" / f"s{i}.tif", to_uint8(degrade(hr / np.float32(255), rng)))
    (data / "done").touch()
    return data


def run_quick(data: Path, out: Path, env: dict, minutes: float) -> tuple:
    """(model name, seconds) of one quick.sh run; its log goes to OUT/quick.log."""
    t0 = time.time()
    with open(out / "quick.log", "w") as log:
        r = subprocess.run(["bash", str(ROOT / "recipes" / "quick.sh"), str(data / "src"), str(out),
                            "em_AG_D_sameas_preprint"], stdout=subprocess.PIPE, stderr=log, text=True,
                           env={**os.environ, "PY": sys.executable, "MINUTES": str(minutes), **env})
    if r.returncode:
        fail(out / "quick.log", f"quick.sh failed (exit {r.returncode})")
    return r.stdout.strip().splitlines()[-1], time.time() - t0


def score(data: Path, out: Path, model: str) -> list:
    """Per-degradation rows: mean PSNR/SSIM of the model and of bilinear, and the paired t-test p."""
    rows = []
    for deg in DEGRADATIONS:
        dest = out / f"restored_{deg}"
        subprocess.run([sys.executable, str(ROOT / "image_gen.py"), str(data / "test" / f"lr_{deg}"), str(dest),
                        "--models", model, "--model_dir", str(out / "models"), "--baselines", "--force"],
                       check=True, capture_output=True)
        m, b = [], []
        for gt in sorted((data / "test/gt").glob("*.tif")):
            g = tifffile.imread(gt).astype(np.float32)
            m.append(slice_metrics(g, tifffile.imread(dest / model / f"{gt.stem}_{model}.tif")))
            b.append(slice_metrics(g, tifffile.imread(dest / "LR-bilinear" / f"{gt.stem}_LR-bilinear.tif")))
        m, b = np.array(m), np.array(b)
        rows.append(dict(degradation=deg, psnr=m[:, 0].mean(), psnr_bilinear=b[:, 0].mean(),
                         d_psnr=(m[:, 0] - b[:, 0]).mean(), p_psnr=stats.ttest_rel(m[:, 0], b[:, 0]).pvalue,
                         ssim=m[:, 1].mean(), ssim_bilinear=b[:, 1].mean(), d_ssim=(m[:, 1] - b[:, 1]).mean()))
    return rows


def main(variants: str = "quick", minutes: float = 20, work: str = "bench/out/quality", isbi: str = str(ISBI)) -> None:
    """Run each variant of quick.sh and score it; --isbi points at the volume where ../shared is elsewhere."""
    if not Path(isbi).is_file():
        fail(isbi, "real EM volume not found (../shared/data/em_isbi2012, or give --isbi)")
    names = [v for v in str(variants).replace(" ", "").split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        fail(None, f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    work = Path(work).resolve()
    data = make_data(work, Path(isbi))
    results = []
    for v in names:
        out = work / v
        out.mkdir(parents=True, exist_ok=True)
        model, secs = run_quick(data, out, VARIANTS[v], minutes)
        for row in score(data, out, model):
            results.append(dict(variant=v, model=model, minutes=round(secs / 60, 1), **row))
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results[-1].items()),
                  flush=True)
    df = pd.DataFrame(results)
    csv = work / "quality.csv"
    if csv.exists():
        df = pd.concat([pd.read_csv(csv), df])
    df.to_csv(csv, index=False)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    run_cli(main)
