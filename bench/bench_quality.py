"""Real-data quality (not a test): recipes/quick.sh on real data, restored with image_gen.py's defaults on images
training never saw, against bilinear upsampling of the same LR, with paired t-tests.

    python bench/bench_quality.py [--variants quick,fixed_pairs] [--minutes 20] [--work bench/out/quality] [--isbi TIF]
                                  [--reuse] [--train_slices 20]
    python bench/bench_quality.py --references [--work ...]  # what the test LR gives without training
    python bench/bench_quality.py --movies DIR|synthetic|nuclei|zeiss [--minutes 20]  # fluorescence, 5 vs 1 frame

EM (default): the ISBI 2012 ssTEM volume in ../shared/data/em_isbi2012 (30 x 512², 4 nm pixels): slices 0-19 are
the training source, 20-23 its validation split, 24-29 the test set. Test LR: `scan`, written here and unlike
every crappifier (probe blur sigma 1 HR px, 4x point sampling, Poisson noise at 50 photons for white plus Gaussian
read noise 0.01), `em`, the paper's EM crappifier that training uses, and FOREIGN_EM: LR made the way others
make it (another sampling phase, an integrating detector, anti-aliased rescaling, lower dose, white noise, a
detector whose bandwidth smooths along the scan lines).

Fluorescence (`--movies`): time-lapse TIFF/CZI files (2D + t; the first channel and middle slice are used). With
three or more, the last is the test movie, the one before it validation, the rest training; with fewer, each is
split in time (the last 20% of the frames test, the 10% before them validation, at least 5 frames each).
`synthetic` generates seeded movies of drifting mitochondria (utils.sample_data) where no real one is at hand;
`nuclei` a small source like a lab's first time-lapse: one 130² x 30-frame movie of slowly moving nuclei to train
on, a 130² x 10 one for validation and a held-out 256² x 20 one to test. `zeiss`: real fluorescence z-stacks
(../shared/data/czi_zeiss, zeiss_stacks), the 5-frame model on 5 neighbouring slices (LR_TYPE z).
quick.sh trains the 5-frame and the 1-frame model; test LR: `shot` (low dose: PSF blur sigma 1 HR px, 4x point
sampling, Poisson noise at 30 photons for white over 2 of background, read noise 1.5 photons, stored as uint16
counts as a detector gives them), `mild` (the same at 300 photons, read noise 3) and `fluo`, the paper's
fluorescence crappifier that training uses, and FOREIGN_FLUO: milder LR unlike both (no noise; white noise on
the crappifiers' downsampling) and `mild` sampled otherwise (binned blocks; anti-aliased rescaling). Every frame
of a movie is scored.

Metrics as metric_gen.py (PSNR/SSIM after norm_minmse). Each variant is quick.sh with some settings fixed
(VARIANTS below); results go to WORK/quality.csv and are printed as a table. bench/RESULTS.md records every run
so far and what it showed; the README's "What to expect" sums it up.
"""
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: F401,E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from scipy import stats  # noqa: E402
from scipy.ndimage import gaussian_filter, gaussian_filter1d, shift  # noqa: E402
from scipy.signal import lfilter  # noqa: E402
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, estimate_sigma  # noqa: E402
from skimage.transform import rescale, resize  # noqa: E402

from utils.crappifiers import crappify, downsample  # noqa: E402
from utils.errors import fail, run_cli  # noqa: E402
from utils.metrics import slice_metrics  # noqa: E402
from utils.norm import normalize, percentiles, to_uint8  # noqa: E402
from utils.sample_data import (FLUO_PIXEL_UM, NUCLEI_PIXEL_UM, fluo_movie, nuclei_movie,  # noqa: E402
                               save_unlabelled_stack)
from utils.sources import find_images, open_source  # noqa: E402
from utils.testset import read_stack  # noqa: E402

ISBI = ROOT.parent / "shared" / "data" / "em_isbi2012" / "isbi2012_train.tif"
ZEISS = ROOT.parent / "shared" / "data" / "czi_zeiss"
# name: settings fixed for quick.sh (environment variables; see recipes/quick.sh)
VARIANTS = {
    "quick": {},
    "fixed_pairs": {"FRESH": "0"},
    "paper_noise": {"STRENGTH": "1"},
    "narrow_noise": {"STRENGTH": "0.5,2"},  # quick.sh's range before the 0.2 floor
    "mid_noise": {"STRENGTH": "0.25,2"},
    "wide_noise": {"STRENGTH": "0.1,2"},
    "clean_share": {"CLEAN_SHARE": "0.15"},
    "mse": {"LOSS": ""},
    "l1": {"LOSS": "--l1_loss"},  # without the SSIM term
    "resnet18": {"ARCH": "resnet18"},
    # the paper's HR-space network (~5x slower per image than --lr_space, so fewer epochs), without and with
    # the residual bilinear skip (--lr_space always has it)
    "paper_net": {"NET": "", "LOSS": "", "LR": "1e-3", "EPOCHS": "2"},
    "paper_net_residual": {"NET": "--residual", "LOSS": "", "LR": "1e-3", "EPOCHS": "2"},
    "lr_1e-3": {"LR": "1e-3"},
    "no_rotate_zoom": {"TRAIN_EXTRA": "--max_rotate 0 --max_zoom 1"},
    # a probe blur drawn per tile before crappifying (sigma 0-1.5 HR px; the paper's crappifiers sample points)
    "blur": {"TRAIN_EXTRA": "--crap_blur 0,1.5"},
    # a fast scan's detector bandwidth: the LR smoothed along x (sigma 0-1 LR px per tile) after crappifying
    "bandwidth": {"BANDWIDTH": "0,1"},
    # ... for a third of the tiles only (the rest white, as the paper)
    "bandwidth_third": {"BANDWIDTH": "0.35,1", "BANDWIDTH_SHARE": "0.33"},
    # a lab's real LR scans (no ground truth) centre the noise range: here the noisiest test set's LR (the
    # others measure 1.0-1.1x the crappifier's level; RESULTS.md), {data} being the bench's data folder
    "lr_dir_dose20": {"LR_DIR": "{data}/test/lr_dose20"},
    "lr_dir_lines": {"LR_DIR": "{data}/test/lr_lines"},  # LR smoothed along x: sets BANDWIDTH too
    "lr_dir_rc": {"LR_DIR": "{data}/test/lr_rc"},  # ... by a response shape training does not draw
    # shot noise on each LR pixel for every tile, from very low dose to none (a hedge: LR_DIR sets it from real LR)
    "shot_hedge": {"COUNTS": "2,2000"},
    "shot_hedge_ssim": {"COUNTS": "2,2000", "LOSS": "--l1_loss --ssim_weight 0.06"},  # SSIM term 0.06 (EM's now)
    "no_hedge": {"COUNTS": "0", "LOSS": "--l1_loss --ssim_weight 0.03"},  # the blind default when it was measured
    "shot_hedge_half": {"COUNTS": "2,2000", "COUNTS_SHARE": "0.5"},  # ... on half of the tiles only
    "lr_dir_dose2": {"LR_DIR": "{data}/test/lr_dose2"},  # LR beyond the default noise range
    "lr_dir_dose5": {"LR_DIR": "{data}/test/lr_dose5"},  # ... and beyond what the crappifier's noise reaches
    "lr_dir_gauss_hi": {"LR_DIR": "{data}/test/lr_gauss_hi"},  # ... the same level, but not shot noise
    # quick.sh before the noise channel (a blind network; SSIM term 0.03; the encoder stride of 256-px EM tiles)
    "blind": {"NET": "--lr_space --encoder_stride 16", "LOSS": "--l1_loss --ssim_weight 0.03"},
}
Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
SCALE = 4  # every test degradation samples 1 pixel in 4 along each axis


def counts(lr: np.ndarray, rng: np.random.Generator, photons: float = 50) -> np.ndarray:
    """Poisson noise at `photons` for white plus Gaussian read noise 0.01, float."""
    return rng.poisson(np.clip(lr, 0, 1) * photons) / photons + rng.normal(0, 0.01, lr.shape)


def counted(lr: np.ndarray, rng: np.random.Generator, photons: float = 50) -> np.ndarray:
    """`counts` as uint8."""
    return to_uint8(np.clip(counts(lr, rng, photons), 0, 1))


def sampled(hr: np.ndarray) -> np.ndarray:
    """A scan before its noise (`scan`, `shot` and their kin): probe or PSF blur (sigma 1 HR px), 4x point sampling."""
    return downsample(gaussian_filter(hr, 1.0), 4)


def binned(hr: np.ndarray) -> np.ndarray:
    """Each LR pixel the mean of its 4x4 HR block: an integrating detector, or a camera binning its pixels."""
    return hr.reshape(hr.shape[0] // 4, 4, hr.shape[1] // 4, 4).mean((1, 3))


def smoothed(hr: np.ndarray) -> np.ndarray:
    """scikit-image's `rescale` by 1/4 with its default anti-aliasing (Gaussian sigma 1.5 HR px)."""
    return rescale(hr, 0.25, anti_aliasing=True)


def white_noise_lr(hr: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """White Gaussian noise of `sigma` on the downsampled image (the crappifiers' downsampling), in [0, 1]."""
    return np.clip(downsample(hr, 4) + rng.normal(0, sigma, np.shape(hr[::4, ::4])), 0, 1)


def gaussian_lr(hr: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """`white_noise_lr` as uint8."""
    return to_uint8(white_noise_lr(hr, rng, sigma))


def degrade_scan(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fast EM point scan unlike any crappifier: probe blur, 4x point sampling, Poisson + read noise; uint8."""
    return counted(sampled(hr), rng)


# Test LR made the way other people make it (none is used in training): where `scan` samples the centre of
# each 4x4 block, `stride` takes its corner (hr[::4, ::4], 1.5 HR px off), `area` integrates the block (a
# slow detector), `aa` is scikit-image's rescale with its default anti-aliasing; `dose20` is `scan` at 20
# photons, `gauss` white Gaussian noise (sigma 0.08) on the downsampled image, `clean` the scan without noise
# (quick.sh's noise range stops at 0.2x: does a model smooth away detail that noise-free LR carries?). A fast
# scan's detector chain smooths along the fast axis (x), signal and noise alike: `lines` is `scan` through a
# zero-phase Gaussian response (sigma 0.7 LR px) with an offset per line, `rc` through a first-order (RC)
# response (time constant 0.7 LR px) whose lag is shifted back, as a scanner's delay compensation does. `dose5`
# and `dose2` are `scan` at 5 and 2 photons: noisier than the top of the training range; `gauss_hi` is `gauss`
# at sigma 0.3, as noisy as `dose5` by its noise level but additive, not shot noise.
FOREIGN_EM = {
    "stride": lambda hr, rng: counted(gaussian_filter(hr, 1.0)[::4, ::4], rng),
    "area": lambda hr, rng: counted(binned(hr), rng),
    "aa": lambda hr, rng: counted(smoothed(hr), rng),
    "dose20": lambda hr, rng: counted(sampled(hr), rng, 20),
    "gauss": lambda hr, rng: gaussian_lr(hr, rng, 0.08),
    "clean": lambda hr, rng: to_uint8(sampled(hr)),
    "lines": lambda hr, rng: scan_lines(hr, rng),
    "rc": lambda hr, rng: scan_rc(hr, rng),
    "dose5": lambda hr, rng: counted(sampled(hr), rng, 5),
    "dose2": lambda hr, rng: counted(sampled(hr), rng, 2),
    "gauss_hi": lambda hr, rng: gaussian_lr(hr, rng, 0.3),
}


def scan_lines(hr: np.ndarray, rng: np.random.Generator, bandwidth: float = 0.7, jitter: float = 0.02) -> np.ndarray:
    """`scan`'s counts smoothed along x by a Gaussian of sigma `bandwidth` LR px, plus an offset of sigma
    `jitter` per line; uint8."""
    c = counts(sampled(hr), rng)
    lined = gaussian_filter1d(c, bandwidth, axis=1, mode="reflect") + rng.normal(0, jitter, (c.shape[0], 1))
    return to_uint8(np.clip(lined, 0, 1))


def scan_rc(hr: np.ndarray, rng: np.random.Generator, tau: float = 0.7) -> np.ndarray:
    """`scan`'s counts through a first-order low-pass along x (time constant `tau` LR px), its mean lag
    shifted back (cubic); uint8."""
    c = counts(sampled(hr), rng)
    a = np.exp(-1 / tau)
    y, _ = lfilter([1 - a], [1, -a], c, axis=1, zi=c[:, :1] * a)  # settled on each line's first value
    return to_uint8(np.clip(shift(y, (0, -a / (1 - a)), order=3, mode="nearest"), 0, 1))


def shot(photons: float, read: float, sample: Callable[[np.ndarray], np.ndarray] = sampled) -> Degradation:
    """A fast confocal scan: PSF blur and 4x point sampling (or `sample` in place of both), Poisson noise at
    `photons` for white over a 2-photon background, Gaussian read noise of `read` photons; uint16 counts (x10, as a
    detector's gain)."""
    def degrade(hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lr = sample(hr)
        counts = rng.poisson(lr * photons + 2) + rng.normal(0, read, lr.shape)
        return np.clip(np.round(counts * 10), 0, 65535).astype(np.uint16)
    return degrade


def fluo_counts(lr: np.ndarray, gain: float = 3000) -> np.ndarray:
    """LR in [0, 1] as uint16 detector counts (`shot`'s scale at 300 photons for white)."""
    return np.clip(np.round(lr * gain), 0, 65535).astype(np.uint16)


# Fluorescence test LR unlike `shot` and the crappifier, milder than both (others judge models on such LR: a model
# trained on noisy LR may smooth away what nearly clean LR carries): `clean` is `shot`'s scan without noise,
# `gauss_lo` the crappifiers' downsampling (no PSF blur) with white Gaussian noise of sigma 0.02. `area` and `aa`
# are `mild` made from LR that others make: binned 4x4 blocks (a camera, an integrating detector) and scikit-image's
# anti-aliased rescale (how many make test LR), both blurrier than the crappifiers' downsampling.
FOREIGN_FLUO = {
    "clean": lambda hr, rng: fluo_counts(sampled(hr)),
    "gauss_lo": lambda hr, rng: fluo_counts(white_noise_lr(hr, rng, 0.02)),
    "area": shot(300, 3.0, binned),
    "aa": shot(300, 3.0, smoothed),
}


def crappified(name: str) -> Degradation:
    return lambda hr, rng: to_uint8(crappify(name, hr, 4, rng))


@dataclass
class Bench:
    """What quick.sh trains on one kind of data and how its test LR is made."""
    crap_func: str
    n_frames: Tuple[int, ...]
    degradations: Dict[str, Degradation]
    src: str = ""  # quick.sh's SRC_DIR under data/src
    foreign: Dict[str, Degradation] = field(default_factory=dict)  # more test LR, written when missing
    env: Dict[str, str] = field(default_factory=dict)  # quick.sh settings of every variant


EM = Bench("em_AG_D_sameas_preprint", (1,), {"scan": degrade_scan, "em": crappified("em_AG_D_sameas_preprint")},
           foreign=FOREIGN_EM)
FLUO = Bench("new_crap_AG_SP", (5, 1), {"shot": shot(30, 1.5), "mild": shot(300, 3.0),
                                         "fluo": crappified("new_crap_AG_SP")}, src="live", foreign=FOREIGN_FLUO)
# Real z-stacks: the 5-frame model reads 5 neighbouring slices (the paper's multi-frame in z).
FLUO_Z = Bench(FLUO.crap_func, FLUO.n_frames, FLUO.degradations, src="zstack", foreign=FOREIGN_FLUO,
               env={"LR_TYPE": "z"})


def write_test_set(data: Path, gts: Dict[str, np.ndarray], bench: Bench, seed: int,
                   to_unit: Callable[[np.ndarray], np.ndarray]) -> None:
    """data/test/gt/NAME.tif and data/test/lr_DEG/NAME.tif: each GT image or movie brought to [0, 1] by
    `to_unit`, then degraded frame by frame."""
    rng = np.random.default_rng(seed)
    for d in ["gt"] + [f"lr_{k}" for k in bench.degradations]:
        (data / "test" / d).mkdir(parents=True, exist_ok=True)
    for name, gt in gts.items():
        gt = gt[..., :gt.shape[-2] // SCALE * SCALE, :gt.shape[-1] // SCALE * SCALE]  # restorations are LR x 4
        tifffile.imwrite(data / "test/gt" / f"{name}.tif", gt, photometric="minisblack")  # 3 frames are no RGB
        for deg, degrade in bench.degradations.items():
            tifffile.imwrite(data / "test" / f"lr_{deg}" / f"{name}.tif", degrade_frames(gt, degrade, rng, to_unit),
                             photometric="minisblack")


def degrade_frames(gt: np.ndarray, degrade: Degradation, rng: np.random.Generator,
                   to_unit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Every 2D frame of a GT image or movie brought to [0, 1] and degraded, in the GT's shape."""
    lr = np.stack([degrade(f, rng) for f in as_frames(np.clip(to_unit(gt), 0, 1))])
    return lr.reshape(*gt.shape[:-2], *lr.shape[-2:])


def write_foreign_sets(data: Path, bench: Bench, seed: int, to_unit: Callable[[np.ndarray], np.ndarray]) -> None:
    """data/test/lr_DEG for each of `bench.foreign` not yet there, from data/test/gt: each with its own seeded
    draws, so adding one changes no other test set."""
    for k, (deg, degrade) in enumerate(bench.foreign.items()):
        dest = data / "test" / f"lr_{deg}"
        if dest.is_dir():
            continue
        rng, tmp = np.random.default_rng([seed, k]), dest.with_name(dest.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for gt in sorted((data / "test/gt").glob("*.tif")):
            tifffile.imwrite(tmp / gt.name, degrade_frames(tifffile.imread(gt), degrade, rng, to_unit),
                             photometric="minisblack")
        tmp.rename(dest)


def em_to_unit(g: np.ndarray) -> np.ndarray:
    return g / np.float32(255)


def make_em_data(work: Path, isbi: Path = ISBI, train_slices: int = 20) -> Path:
    """Source tree and test sets under WORK/data (kept between runs); the first `train_slices` of slices 0-19
    are the training source (fewer measure what more HR data is worth)."""
    data = work / "data"
    if (data / "done").exists():
        with tifffile.TiffFile(data / "src/em/train/isbi_train.tif") as tif:
            have = len(tif.pages)
        if have != train_slices:
            fail(work, f"its data folder trains on {have} slices, not {train_slices}: use another --work")
        write_foreign_sets(data, EM, 2013, em_to_unit)
        return data
    if not 1 <= train_slices <= 20:
        fail(None, f"--train_slices {train_slices}: choose 1-20 (slices 20-29 are validation and test)")
    vol = tifffile.imread(isbi)
    for split, part in (("train", vol[:train_slices]), ("valid", vol[20:24])):
        (data / "src/em" / split).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(data / "src/em" / split / f"isbi_{split}.tif", part, imagej=True,
                         resolution=(250, 250), metadata={"unit": "um", "axes": "ZYX", "spacing": 0.05})
    write_test_set(data, {f"s{i}": hr for i, hr in enumerate(vol[24:], start=24)}, EM, 2012, em_to_unit)
    write_foreign_sets(data, EM, 2013, em_to_unit)
    (data / "done").touch()
    return data


def read_movies(movies: str) -> Dict[str, Tuple[np.ndarray, Optional[float]]]:
    """name: ((t, y, x) movie, pixel size) of every time-lapse under MOVIES, or seeded synthetic ones."""
    synthetic = {"synthetic": (fluo_movie, [(384, 20), (384, 20), (256, 12), (320, 16)], FLUO_PIXEL_UM),
                 "nuclei": (nuclei_movie, [(130, 30), (130, 10), (256, 20)], NUCLEI_PIXEL_UM)}  # train..., valid, test
    if movies in synthetic:
        make, sizes, px = synthetic[movies]
        rng = np.random.default_rng(7)
        return {f"movie{i}": (make(s, t, rng), px) for i, (s, t) in enumerate(sizes)}
    files = find_images(Path(movies), recursive=True)
    if not files:
        fail(movies, "no .tif/.tiff/.czi time-lapse in this folder")
    out = {}
    for p in files:
        with open_source(p, live=True) as src:
            if src.nt < 5:
                fail(p, f"{src.nt} time points; a time-lapse for the 5-frame model needs at least 5")
            out[p.stem] = read_stack(src)[:, src.nz // 2, 0], src.pixel_size
    return out


def split_movies(movies: dict) -> Tuple[dict, dict, dict]:
    """(train, valid, test) movies: whole movies when there are 3 or more, else each split in time (the last
    20% of the frames test, the 10% before them validation, at least 5 frames each; the rest train)."""
    names = list(movies)
    if len(names) >= 3:
        return ({n: movies[n] for n in names[:-2]}, {names[-2]: movies[names[-2]]}, {names[-1]: movies[names[-1]]})
    parts = ({}, {}, {})
    for n, (m, px) in movies.items():
        t = len(m)
        b = t - max(5, round(0.2 * t))
        a = b - max(5, round(0.1 * t))
        if a < 5:
            fail(n, f"{t} time points: too few to split in time (train, validation and test need 5 each); "
                    "give 3 or more movies instead")
        for part, (lo, hi) in zip(parts, ((0, a), (a, b), (b, t))):
            part[n] = m[lo:hi], px
    return parts


def zeiss_stacks(folder: Path = ZEISS) -> Tuple[dict, dict, dict]:
    """(train, valid, test) real fluorescence z-stacks from Zeiss's CellDivision CZIs (../shared), one per
    channel and time point: chromosomes (file 1, channel 0) t0-t1 and the spindle (channel 1) t0-t2 train,
    chromosomes t2 validate, and the deconvolved interphase nucleus of file 2, t0-t2, is the test: a
    structure training never saw."""
    def stacks(label: str, name: str, c: int, ts) -> dict:
        with open_source(folder / name) as src:
            return {f"{label}_t{t}": (np.stack([src.read(c, z, t) for z in range(src.nz)]), src.pixel_size)
                    for t in ts}
    mitosis, nucleus = "CellDivision_T3_Z5_CH2_X240_Y170_comp1.czi", "CellDivision_T3_Z6_CH1_X300_Y200_DCV_ZSTD.czi"
    return ({**stacks("chromosomes", mitosis, 0, (0, 1)), **stacks("spindle", mitosis, 1, (0, 1, 2))},
            stacks("chromosomes", mitosis, 0, (2,)), stacks("nucleus", nucleus, 0, (0, 1, 2)))


def fluo_bench(movies: str) -> Bench:
    return FLUO_Z if movies == "zeiss" else FLUO


def fluo_to_unit(m: np.ndarray) -> np.ndarray:
    return normalize(m.astype(np.float32), *percentiles(m))


def make_fluo_data(work: Path, movies: str) -> Path:
    """Step-1 source tree and test sets under WORK/data: time-lapses in a `live` folder (stack pages are time
    points), `zeiss` z-stacks in a `zstack` one (pages are slices)."""
    data, bench = work / "data", fluo_bench(movies)
    if (data / "done").exists():
        write_foreign_sets(data, bench, 98, fluo_to_unit)
        return data
    train, valid, test = zeiss_stacks() if movies == "zeiss" else split_movies(read_movies(movies))
    for split, part in (("train", train), ("valid", valid)):
        for name, (m, px) in part.items():
            save_unlabelled_stack(data / "src" / bench.src / "fluo" / split / f"{name}.tif", m, px)
    write_test_set(data, {n: m for n, (m, _) in test.items()}, bench, 99, fluo_to_unit)
    write_foreign_sets(data, bench, 98, fluo_to_unit)
    (data / "done").touch()
    return data


def run_quick(data: Path, out: Path, bench: Bench, n_frames: int, env: dict, minutes: float) -> tuple:
    """(model name, seconds) of one quick.sh run; its log goes to OUT/quick.log."""
    t0 = time.time()
    env = {k: v.format(data=data) for k, v in {**bench.env, **env}.items()}
    with open(out / "quick.log", "w") as log:
        r = subprocess.run(["bash", str(ROOT / "recipes" / "quick.sh"), str(data / "src" / bench.src), str(out),
                            bench.crap_func, str(n_frames)], stdout=subprocess.PIPE, stderr=log, text=True,
                           env={**os.environ, "PY": sys.executable, "MINUTES": str(minutes), **env})
    if r.returncode:
        fail(out / "quick.log", f"quick.sh failed (exit {r.returncode})")
    return r.stdout.strip().splitlines()[-1], time.time() - t0


def trained_model(out: Path, n_frames: int = 1) -> Optional[str]:
    """The name of the one `n_frames` model a finished quick.sh run left in OUT/models, if there is exactly one
    (a 5-frame run also leaves the 1-frame model it started from)."""
    names = [j.stem for j in (out / "models").glob(f"*_{n_frames}_quick_*.json") if "_best_" not in j.stem]
    return names[0] if len(names) == 1 else None


def as_frames(x: np.ndarray) -> np.ndarray:
    """An image or movie as a stack of 2D frames."""
    return x.reshape(-1, *x.shape[-2:])


def frame_metrics(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(PSNR, SSIM) of every 2D frame of a GT image or movie and its restoration."""
    g, p = as_frames(gt).astype(np.float32), as_frames(pred)
    return np.array([slice_metrics(a, b) for a, b in zip(g, p)])


def restore(data: Path, out: Path, model: str, deg: str) -> Dict[str, np.ndarray]:
    """Per-frame (PSNR, SSIM) of `model` and of bilinear on test set `deg`, restored with image_gen's defaults."""
    dest = out / f"restored_{deg}"
    subprocess.run([sys.executable, str(ROOT / "image_gen.py"), str(data / "test" / f"lr_{deg}"), str(dest),
                    "--models", model, "--model_dir", str(out / "models"), "--baselines", "--force"],
                   check=True, capture_output=True)
    scores = {model: [], "bilinear": []}
    for gt in sorted((data / "test/gt").glob("*.tif")):
        g = tifffile.imread(gt)
        for key, name in ((model, model), ("bilinear", "LR-bilinear")):
            scores[key].append(frame_metrics(g, tifffile.imread(dest / name / f"{gt.stem}_{name}.tif")))
    return {k: np.concatenate(v) for k, v in scores.items()}


def compare(m: np.ndarray, ref: np.ndarray, ref_name: str) -> dict:
    """Mean gains of per-frame scores `m` over `ref` and the paired t-test of PSNR."""
    return {f"d_psnr_{ref_name}": (m[:, 0] - ref[:, 0]).mean(),
            f"p_psnr_{ref_name}": stats.ttest_rel(m[:, 0], ref[:, 0]).pvalue,
            f"d_ssim_{ref_name}": (m[:, 1] - ref[:, 1]).mean()}


def score(data: Path, outs: Dict[int, Tuple[Path, str]], bench: Bench) -> list:
    """Rows per degradation and model: mean PSNR/SSIM, gains over bilinear and, for several frames, over the
    1-frame model of the same variant."""
    rows = []
    for deg in [*bench.degradations, *bench.foreign]:
        per = {nf: restore(data, out, model, deg) for nf, (out, model) in outs.items()}
        for nf, s in per.items():
            m, b = s[outs[nf][1]], s["bilinear"]
            row = dict(degradation=deg, n_frames=nf, model=outs[nf][1], frames=len(m), psnr=m[:, 0].mean(),
                       ssim=m[:, 1].mean(), psnr_bilinear=b[:, 0].mean(), ssim_bilinear=b[:, 1].mean(),
                       **compare(m, b, "bilinear"))
            if nf > 1 and 1 in per:
                row.update(compare(m, per[1][outs[1][1]], "1frame"))
            rows.append(row)
    return rows


def in_band(gt: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """The truth low-passed (ideal filter) to the band that `scale`x sampling carries: a restoration that got
    every frequency the LR can hold exactly right, free of noise and aliasing, and added nothing above it."""
    f = np.fft.fft2(gt.astype(np.float64))
    fy, fx = (np.abs(np.fft.fftfreq(n)) <= 0.5 / scale for n in gt.shape[-2:])
    return np.real(np.fft.ifft2(f * (fy[:, None] & fx[None]))).astype(np.float32)


def denoise_tv(lr: np.ndarray) -> np.ndarray:
    return denoise_tv_chambolle(lr, weight=0.05)


def denoise_nlm(lr: np.ndarray) -> np.ndarray:
    sigma = estimate_sigma(lr)
    return denoise_nl_means(lr, h=0.6 * sigma, sigma=sigma, patch_size=3, patch_distance=5, fast_mode=True)


# Restorations without training, (LR filter, spline order up to HR, half-width of a window of neighbouring
# frames averaged first): the filter acts on LR brought to [0, 1]; the windowed ones, the classical counterpart
# of the 5-frame model, score on multi-frame benches only (edge frames repeated, as image_gen.py does).
CLASSICAL = {"bilinear": (None, 1, 0), "bicubic": (None, 3, 0),
             "gauss0.5+bilinear": (lambda x: gaussian_filter(x, 0.5), 1, 0), "tv+bilinear": (denoise_tv, 1, 0),
             "nlm+bilinear": (denoise_nlm, 1, 0), "mean3+bilinear": (None, 1, 1), "mean5+bilinear": (None, 1, 2)}
TRUTH = {"in_band": in_band, "blur1.5": lambda g: gaussian_filter(g.astype(np.float32), 1.5)}


def classical(lr: np.ndarray, i: int, shape: Tuple[int, int], name: str) -> np.ndarray:
    """Frame `i` of the LR frames `lr` restored to `shape` by CLASSICAL[name]."""
    smooth, order, w = CLASSICAL[name]
    x = lr[np.clip(np.arange(i - w, i + w + 1), 0, len(lr) - 1)].astype(np.float32).mean(0)
    x = normalize(x, *percentiles(x, (0, 100)))
    return resize(smooth(x) if smooth else x, shape, order=order).astype(np.float32)


def reference_scores(data: Path, bench: Bench) -> pd.DataFrame:
    """What the test LR gives without training, frame by frame as `score` scores models: the classical
    restorations above on each test set (gains over bilinear), and two restorations made from the truth
    itself (`TRUTH`; test set `truth`): the LR's band restored perfectly, and the truth blurred."""
    rows, frames = [], {p.stem: as_frames(tifffile.imread(p)) for p in sorted((data / "test/gt").glob("*.tif"))}
    for name, make in TRUTH.items():
        m = np.concatenate([[slice_metrics(g, make(g)) for g in fr] for fr in frames.values()])
        rows.append(dict(degradation="truth", reference=name, frames=len(m), psnr=m[:, 0].mean(), ssim=m[:, 1].mean()))
    names = [k for k, (*_, w) in CLASSICAL.items() if w == 0 or max(bench.n_frames) > 1]
    for deg in [*bench.degradations, *bench.foreign]:
        per = {k: [] for k in names}
        for stem, fr in frames.items():
            lr = as_frames(tifffile.imread(data / "test" / f"lr_{deg}" / f"{stem}.tif"))
            for k in names:
                per[k] += [slice_metrics(g, classical(lr, i, g.shape, k)) for i, g in enumerate(fr)]
        b = np.array(per["bilinear"])
        for k, v in per.items():
            m = np.array(v)
            rows.append(dict(degradation=deg, reference=k, frames=len(m), psnr=m[:, 0].mean(), ssim=m[:, 1].mean(),
                             **compare(m, b, "bilinear")))
    return pd.DataFrame(rows)


def main(variants: str = "quick", minutes: float = 20, work: str = "bench/out/quality", isbi: str = str(ISBI),
         movies: Optional[str] = None, reuse: bool = False, train_slices: int = 20, references: bool = False) -> None:
    """Run each variant of quick.sh and score it. --isbi points at the EM volume where ../shared is elsewhere,
    --train_slices N trains on its first N slices only (default all 20);
    --movies DIR (or `synthetic`, `nuclei`, `zeiss`) benchmarks fluorescence instead (module docstring). --reuse
    scores the model a variant's folder already holds instead of training again (test sets added since, or a
    run cut off while scoring); its minutes are then left blank. --references trains nothing: it scores the
    restorations made without training (`reference_scores`) into WORK/references.csv."""
    names = list(variants) if isinstance(variants, (list, tuple)) else [v for v in str(variants).split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        fail(None, f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    work = Path(work).resolve()
    if movies:
        bench, data = fluo_bench(str(movies)), make_fluo_data(work, str(movies))
    else:
        if not Path(isbi).is_file():
            fail(isbi, "real EM volume not found (../shared/data/em_isbi2012, or give --isbi)")
        bench, data = EM, make_em_data(work, Path(isbi), int(train_slices))
    if references:
        df = reference_scores(data, bench)
        df.to_csv(work / "references.csv", index=False)
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        return
    results = []
    for v in names:
        outs, secs = {}, {}
        for nf in bench.n_frames:
            out = work / (v if len(bench.n_frames) == 1 else f"{v}_{nf}frame")
            out.mkdir(parents=True, exist_ok=True)
            model = trained_model(out, nf) if reuse else None
            if model:
                secs[nf] = float("nan")
            else:
                model, secs[nf] = run_quick(data, out, bench, nf, VARIANTS[v], minutes)
            outs[nf] = out, model
        for row in score(data, outs, bench):
            results.append(dict(variant=v, minutes=round(secs[row["n_frames"]] / 60, 1), **row))
            print(" ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}" for k, x in results[-1].items()),
                  flush=True)
    df = pd.DataFrame(results)
    csv = work / "quality.csv"
    if csv.exists():
        df = pd.concat([pd.read_csv(csv), df])
    df.to_csv(csv, index=False)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    run_cli(main)
