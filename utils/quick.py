"""Day-one training plan for `recipes/quick.sh`: tile size, tile counts, network, noise level and epochs
that fit a time budget on this machine.

    python -m utils.quick INFO_CSV --crap_func NAME [--n_frames 1] [--minutes 15] [--lr_dir FOLDER]

Prints KEY=VALUE lines (`TILE=256` ...) that quick.sh reads, and writes nothing. The choices, and why:
- `--lr_space` U-Net (the U-Net runs on LR pixels, ~5x more training images per second on a CPU than the
  paper's HR-space U-Net), with the encoder stride that keeps a >= 4x4 bottleneck at the training crop, so
  the model behaves the same on inputs of any size; for EM, told each tile's noise level (`--noise_channel`,
  TOLD_NOISE: on held-out real EM the same PSNR gain on LR like the training LR, up to +0.2 dB more on noisier
  LR);
- crappify on the fly (fresh noise each epoch, HR augmented before crappifying), with the noise strength
  drawn per tile from 0.2-2x (0.1-2x for a model not told the noise level) the level of the lab's real LR
  images when `--lr_dir` gives some (scikit-image's `estimate_sigma`), else of the paper's level: down to nearly
  clean LR, because a model that never saw it smooths it (NOISE_RANGE, BLIND_FLOOR); real LR noisier than the
  crappifier's noise reaches gets shot noise on each LR pixel to match (`estimate_counts`); where those real LR
  images are smoother along x (the fast scan axis) than across, a detector's bandwidth, the LR is smoothed along
  x as much (`estimate_bandwidth`);
- the epoch count from measured rates of the network and of crappifying on the fly (on a CPU they take
  turns; beside a GPU, data-loader workers crappify and the slower side sets the pace), so the whole of
  quick.sh fits the budget; a GPU, when there is one, trains more images in the same time. The plan is a first
  guess: quick.sh gives train.py the time left (`--minutes`), which re-plans the epochs from their measured
  time, so neither a probe that misreads the machine nor a machine busier than at the probe moves the end;
- L1 loss plus SSIM_WEIGHT (SSIM_WEIGHT_TOLD with the noise channel) x (1 - SSIM) (utils.loss: a pixel loss
  alone predicts the smooth conditional mean; on held-out real EM the term raised the SSIM gain over bilinear
  at the same PSNR gain), L1 alone for both models of a multi-frame run (with the term, the 5-frame model
  scored 0.17-0.30 dB lower on held-out synthetic movies);
- lr 1e-2 (one-cycle) for every layer group (no pretrained encoder to protect), which learned fastest on
  real EM (README, "What to expect"); 2e-3 for a multi-frame model that starts from a trained 1-frame one
  (`--warm`): 1e-2 undid part of its start (README).
"""
import os
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .crappifiers import check_crappifier, crappify, scan_lr
from .errors import fail, run_cli
from .lrstats import centre_crop, fast_axis_ratio, lr_sample, noise_level, noise_sigma
from .loss import sr_loss
from .model import LR_HEADS, build_model
from .norm import normalize, to_uint8
from .onthefly import augment_hr
from .sources import find_images, open_source
from .speed import native_bf16

__all__ = ["pick_tile", "pick_stride", "estimate_strength", "strength_range", "estimate_bandwidth", "bandwidth_range",
           "estimate_counts", "counts_range", "match_noise",
           "training_rate", "sample_rate", "pick_workers", "pipeline_rate", "make_plan"]

TILES = (256, 128, 64)  # HR tile sides, largest first: larger crops give the U-Net more context per step
MIN_BOTTLENECK = 4
LR, WARM_LR = 1e-2, 2e-3
SSIM_WEIGHT = 0.03
# Told the noise level, a model smooths LR at the noisy end of its training range more (held-out real EM: the SSIM
# gain on `em` fell from +0.021 to +0.011 at 0.03, +0.014-0.016 at 0.06 over two seeds, PSNR gains equal).
SSIM_WEIGHT_TOLD = 0.06
# Crappifiers whose models are told the noise level (utils.model.tile_noise_sigma). On real EM, seed for seed, it gained
# -0.02..+0.08 dB more than a blind model on LR like the training LR and 0.1-0.2 dB more on noisier LR; on real
# fluorescence z-stacks it lost 0.0-0.4 dB (one run): one sigma per tile reads the noise of a dark background,
# not of the bright structure (bench/RESULTS.md, "Told the noise level").
TOLD_NOISE = ("em_AG_D_sameas_preprint",)
# The drawn noise level spans these multiples of the centre (the paper's level, or LR_DIR's). With 0.5-2x, on
# a small nuclei movie both models fell 1.1-2.6 dB below bilinear on LR with 0.3x the noise; 0.2-2x put them
# 0.5-0.8 dB above it there, -0.53..+0.32 dB against 0.5-2x on the noisy LR; on real EM it cost 0.01-0.04 dB
# (README, "What to expect").
NOISE_RANGE = (0.2, 2.0)
# A blind model (every crappifier but TOLD_NOISE's) cannot read the noise level, so it draws from lower still: with
# 0.1-2x, on real fluorescence z-stacks both models gained 0.07-0.77 dB on every test LR (most on noise-free LR); a
# small synthetic source's 1-frame model gained 1.1-1.8 dB on milder LR, and on the synthetic sources the models
# gave back 0.3-0.6 dB on the noisiest (bench/RESULTS.md, "Noise reaching lower").
BLIND_FLOOR = 0.1
# A share of noise-free tiles (train.py --crap_clean_share) gained most on noise-free z-stack LR but cost SSIM on
# lightly noisy LR: an option, off by default.
CLEAN_SHARE = 0.0
DEFAULT_STRENGTH = 1.0
# A fast scan's detector bandwidth (crappifiers.scan_bandwidth), only where LR_DIR's scans show it: drawn for
# every tile (0-1 LR px), it took real-EM LR smoothed along x from +0.05 to +0.28 dB over bilinear but cost
# 0.02-0.10 dB on every test LR with white noise (README, "What to expect").
BANDWIDTH_GRID = np.array([0.0, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0])
MIN_BANDWIDTH = 0.4  # noise-free EM LR read 0.36 from its structure alone; sigma 0.25 changes no ratio
BANDWIDTH_RANGE = (0.5, 1.5)
# LR noisier than MAX_STRENGTH x the paper's level, beyond which the crappifier's noise no longer follows its
# strength (EM crappifier on real EM, noise above the structure's floor: 1.7x the paper's at 2x, 2.2x at 3x,
# 2.3x at 4x; crappifiers.shot_noise), gets shot noise on each LR pixel instead, at the counts (for white) that
# match its noise level (COUNTS_GRID), drawn per tile from COUNTS_RANGE times them (noise sigma 0.2-2x, as
# NOISE_RANGE; with 0.5-2x every tile was noisy and, on real EM, noise-free LR came out 0.5 dB below bilinear
# where 0.2-2x kept the low-dose LR's gains: README, "Noisier than the crappifier reaches"); the crappifier's
# strength stays centred on the paper's level.
MAX_STRENGTH = 2.0
COUNTS_GRID = np.array([1000, 300, 100, 50, 20, 10, 5, 3, 2, 1])
COUNTS_RANGE = (0.25, 25.0)
# The probes time the network on tensors already in memory and crappifying one frame; the training loop also
# reads and collates tiles and runs fastai's callbacks: on real EM (2 CPU cores, 256² tiles) it trained
# 19.6 images/s where the probes predicted 22.3, and a 20-minute plan ran 22.8 minutes (19.3 with this factor).
LOOP_EFFICIENCY = 0.88


def pick_tile(df: pd.DataFrame, tile: Optional[int] = None, scale: int = 4) -> int:
    """The largest of TILES that every training and validation frame can hold, or `tile` (a user's choice)
    when they all can and it holds whole LR pixels."""
    side = int(min(df.x.min(), df.y.min()))
    if tile:
        if tile > side:
            fail(None, f"TILE {tile} px is larger than the smallest frame ({side} px)")
        if tile % scale:
            fail(None, f"TILE {tile} px is not a multiple of the scale {scale}")
        return int(tile)
    for t in TILES:
        if t <= side:
            return t
    fail(None, f"frames are {side} px; quick.sh needs at least {TILES[-1]} px")


def pick_stride(tile: int, scale: int) -> int:
    """The largest lr_space encoder stride leaving a MIN_BOTTLENECK bottleneck on the LR crop."""
    for s in (16, 8):
        if tile // scale // s >= MIN_BOTTLENECK:
            return s
    return 8


def _frames(df: pd.DataFrame, n: int, rng: np.random.Generator):
    """Up to `n` normalized training frames (their central crops) from the step-1 CSV."""
    rows = df[df.dsplit == "train"]
    for _, r in rows.iloc[rng.permutation(len(rows))[:n]].iterrows():
        with open_source(r.fn, live=int(r.nt) > 1 and int(r.nz) == 1) as src:
            yield normalize(centre_crop(src, int(r.c), int(r.z), int(r.t)), float(r.mi), float(r.ma))


def _lr_frames(lr_dir: Path, n: int = 8):
    """The middle frame's central crop of each of the first `n` images of LR_DIR, normalized."""
    lrs = find_images(Path(lr_dir), recursive=True)
    if not lrs:
        fail(lr_dir, "LR_DIR holds no .tif/.tiff/.czi images")
    for p in lrs[:n]:
        with open_source(p) as src:
            yield lr_sample(src)


def estimate_strength(df: pd.DataFrame, crap_func: str, lr_dir: Path, scale: int = 4, seed: int = 0,
                      bandwidth: float = 0.0) -> Tuple[float, float]:
    """(crappifier strength matching the real LR noise, the LR sigma): the real LR images' noise sigma
    over the sigma the crappifier gives at strength 1 on HR training frames (smoothed along x by `bandwidth`,
    as the real LR is: the wavelet estimate reads smoothed noise low), both measured the same way."""
    real = [noise_sigma(f) for f in _lr_frames(lr_dir)]
    rng = np.random.default_rng(seed)
    crappified = (scan_lr(crap_func, f, scale, rng, bandwidth=bandwidth) for f in _frames(df, 4, rng))
    ours = [noise_level(c) for c in crappified]
    if not ours or np.median(ours) <= 0:
        fail(None, f"crappifier '{crap_func}' adds no measurable noise; cannot match LR_DIR's")
    return float(np.median(real) / np.median(ours)), float(np.median(real))


def training_rate(meta: dict, size: int, bs: int, device: str, steps: int = 4, ssim_weight: float = 0.0,
                  warmup: int = 2) -> float:
    """Training images per second of this network, crop and loss on `device`, after `warmup` steps: on an
    AVX-512 EPYC the second bf16 step still took 1.8x a settled one (oneDNN prepares kernels), and with one
    warm-up step the probe read 17 images/s where training ran 26."""
    torch.manual_seed(0)
    model = build_model(meta).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    n_in = int(meta["n_frames"])
    x = torch.rand(bs, n_in, size // 4, size // 4, device=device)
    y = torch.rand(bs, 1, size, size, device=device)
    cpu = device == "cpu"
    loss_func = sr_loss("l1", ssim_weight)
    if cpu:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    bf16 = not cpu or native_bf16()  # the precision train.py will use (add_precision)

    def step():
        with torch.autocast("cpu" if cpu else "cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_func(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(warmup):
        step()
    if not cpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if not cpu:
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0)


def sample_rate(df: pd.DataFrame, crap_func: str, tile: int, n_frames: int, scale: int = 4, seed: int = 0,
                threads: Optional[int] = None, reps: int = 5) -> float:
    """Training samples per second that one process draws on the fly (HR rotation/zoom, crop, crappify
    each of `n_frames`), on `threads` torch threads (a data-loader worker has one)."""
    rng = np.random.default_rng(seed)
    frame = next(_frames(df, 1, rng))
    hr = np.zeros((n_frames, tile + tile // 4, tile + tile // 4), np.float32)
    h, w = min(hr.shape[1], frame.shape[0]), min(hr.shape[2], frame.shape[1])
    hr[:, :h, :w] = frame[:h, :w]
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        def draw():
            for f in augment_hr(hr, tile, rng, max_rotate=10, max_zoom=1.1, p_affine=1.0):  # the costlier path
                to_uint8(crappify(crap_func, f, scale, rng))
        draw()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            draw()
        return reps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def estimate_bandwidth(df: pd.DataFrame, crap_func: str, lr_dir: Path, scale: int = 4, seed: int = 0,
                       strength: float = 1.0) -> float:
    """Sigma (LR px along x) of `crappifiers.scan_bandwidth` that gives crappified HR training frames the
    fast-axis ratio of the real LR images (medians of each); 0 below MIN_BANDWIDTH. On the real-EM bench it read
    0.76 for LR smoothed with 0.7, 0.56 for a first-order response of time constant 0.7 and 0 for every LR with
    white noise (ratios 0.96-0.99; the crappifier's own 0.97). `strength`: the crappifier's noise level in the
    real LR (estimate_strength). LR images are as scanned: lines along x."""
    real = float(np.median([fast_axis_ratio(f) for f in _lr_frames(lr_dir)]))
    rng = np.random.default_rng(seed)
    frames = list(_frames(df, 4, rng))
    ratios = [np.median([fast_axis_ratio(to_uint8(scan_lr(crap_func, f, scale, rng, strength, bandwidth=s)))
                         for f in frames]) for s in BANDWIDTH_GRID]
    ratios = np.minimum.accumulate(ratios)  # falls with sigma; flat steps from the draws' noise kept monotone
    sigma = float(np.interp(real, ratios[::-1], BANDWIDTH_GRID[::-1]))
    return sigma if sigma >= MIN_BANDWIDTH else 0.0


def _levels(frames, crap_func: str, scale: int, rng: np.random.Generator, bandwidth: float, counts: float) -> float:
    """Median noise level of `frames` crappified at the paper's level plus shot noise at `counts`, as training
    draws them (uint8, as train.py stores LR)."""
    return float(np.median([noise_level(to_uint8(scan_lr(crap_func, f, scale, rng, 1.0, counts, bandwidth)))
                            for f in frames]))


def estimate_counts(df: pd.DataFrame, crap_func: str, real: float, scale: int = 4, seed: int = 0,
                    bandwidth: float = 0.0) -> float:
    """Counts for a white LR pixel (crappifiers.shot_noise, on the crappifier at the paper's level) that give
    crappified HR training frames the real LR's noise level `real` (estimate_strength's sigma; medians of
    each), read from COUNTS_GRID; its last value where the real LR is noisier still."""
    rng = np.random.default_rng(seed)
    frames = list(_frames(df, 4, rng))
    levels = np.maximum.accumulate([_levels(frames, crap_func, scale, rng, bandwidth, c) for c in COUNTS_GRID])
    return float(np.exp(np.interp(real, levels, np.log(COUNTS_GRID))))


def counts_range(counts: float) -> str:
    """`--crap_counts` around estimated counts (COUNTS_RANGE times them); 0 (off) for none."""
    return f"{counts * COUNTS_RANGE[0]:.3g},{counts * COUNTS_RANGE[1]:.3g}" if counts > 0 else "0"


def bandwidth_range(sigma: float) -> str:
    """`--crap_bandwidth` around an estimated sigma (BANDWIDTH_RANGE times it); 0 (off) for none."""
    return f"{sigma * BANDWIDTH_RANGE[0]:.3g},{sigma * BANDWIDTH_RANGE[1]:.3g}" if sigma > 0 else "0"


def strength_range(centre: float, floor: float = NOISE_RANGE[0]) -> str:
    """`--crap_strength` for noise levels around `centre` (x the paper's level): from `floor` to NOISE_RANGE's top
    times it."""
    return f"{centre * floor:.3g},{centre * NOISE_RANGE[1]:.3g}"


def pick_workers(device: str) -> int:
    """Data-loader workers: none on a CPU (the cores train the network), most spare cores beside a GPU."""
    return 0 if device == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 2))


def pipeline_rate(net_rate: float, data_rate: float, workers: int) -> float:
    """Samples/s of training fed by crappifying on the fly. In one process (CPU) the two take turns: on 2
    cores a 5-frame fluorescence model trained at 10.8/s where the network alone ran 15.1/s and crappifying
    49/s (the serial sum predicts 11.6/s; the network's rate alone overran a 20-minute plan by 20%). With
    workers beside a GPU, the slower of the network and the workers."""
    if workers == 0:
        return 1 / (1 / net_rate + 1 / data_rate)
    return min(net_rate, 0.9 * workers * data_rate)  # 0.9: workers share cores with the main process


def make_plan(info: Path, crap_func: str, n_frames: int = 1, minutes: float = 15.0, lr_dir: Optional[Path] = None,
              scale: int = 4, arch: str = "resnet34", seed: int = 0, warm: bool = False,
              ssim_weight: Optional[float] = None, tile: Optional[int] = None) -> Dict[str, object]:
    """Every setting quick.sh needs; see the module docstring for the reasoning. `ssim_weight` None: the
    default for the network (SSIM_WEIGHT, or SSIM_WEIGHT_TOLD). `tile`: the HR tile side, instead of the
    largest that fits; the encoder stride, batch and rates are planned for it."""
    check_crappifier(crap_func)
    told = crap_func in TOLD_NOISE
    if ssim_weight is None:
        ssim_weight = SSIM_WEIGHT_TOLD if told else SSIM_WEIGHT
    df = pd.read_csv(info)
    tile = pick_tile(df, tile, scale)
    stride = pick_stride(tile, scale)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bs = 8 if tile >= 256 else 16
    meta = dict(arch=arch, n_frames=n_frames, scale=scale, lr_space=True, encoder_stride=stride,
                lr_head=LR_HEADS[0], noise_channel=told)
    workers = pick_workers(device)
    data_rate = sample_rate(df, crap_func, tile, n_frames, scale, seed, threads=1 if workers else None)
    rate = pipeline_rate(training_rate(meta, tile, bs, device, ssim_weight=ssim_weight), data_rate, workers)
    # 10% margin for validation, saving and a noisy probe.
    images = rate * LOOP_EFFICIENCY * minutes * 60 * 0.9
    n_train = int(min(4000, max(64, images / 12)))
    epochs = int(max(2, min(100, images // n_train)))
    loss = f"--l1_loss --ssim_weight {ssim_weight:g}" if ssim_weight else "--l1_loss"
    plan = dict(TILE=tile, N_TRAIN=n_train, N_VALID=int(min(64, max(8, n_train // 10))), BS=bs, EPOCHS=epochs,
                LR=WARM_LR if warm else LR, LOSS=loss,
                NET=f"--lr_space --encoder_stride {stride}" + (" --noise_channel" if told else ""),
                DEVICE=device, WORKERS=workers,
                RATE=round(rate, 2))
    return {**plan, **match_noise(df, crap_func, lr_dir, scale, seed)}


def match_noise(df: pd.DataFrame, crap_func: str, lr_dir: Optional[Path] = None, scale: int = 4,
                seed: int = 0) -> Dict[str, object]:
    """The plan's noise settings: the crappifier's strength range, scan-line smoothing and shot noise, matched
    to the real LR in `lr_dir` (with none: around the paper's level, white, no shot noise)."""
    centre, bandwidth, counts, read = DEFAULT_STRENGTH, 0.0, 0.0, {}
    if lr_dir:
        # The noise level sets the ratio the bandwidth is read from, and the bandwidth the noise level read.
        centre, sigma = estimate_strength(df, crap_func, Path(lr_dir), scale, seed)
        bandwidth = estimate_bandwidth(df, crap_func, Path(lr_dir), scale, seed, centre)
        if bandwidth:
            centre, sigma = estimate_strength(df, crap_func, Path(lr_dir), scale, seed, bandwidth)
        if centre > MAX_STRENGTH:
            centre, counts = DEFAULT_STRENGTH, estimate_counts(df, crap_func, sigma, scale, seed, bandwidth)
        read = dict(LR_SIGMA=round(sigma, 4), LR_BANDWIDTH=round(bandwidth, 2))
    # Shares 1: what LR_DIR measured, on every tile (README: a share of them is a hedge)
    floor = NOISE_RANGE[0] if crap_func in TOLD_NOISE else BLIND_FLOOR
    return dict(**read, STRENGTH=strength_range(centre, floor), BANDWIDTH=bandwidth_range(bandwidth),
                COUNTS=counts_range(counts), BANDWIDTH_SHARE=1, COUNTS_SHARE=1, CLEAN_SHARE=CLEAN_SHARE)


def main(info: str, crap_func: str, n_frames: int = 1, minutes: float = 15.0, lr_dir: Optional[str] = None,
         scale: int = 4, arch: str = "resnet34", seed: int = 0, warm: bool = False,
         ssim_weight: Optional[float] = None, tile: Optional[int] = None) -> None:
    """Print the plan as KEY=VALUE lines for quick.sh (values are taken verbatim, spaces included). --warm: the
    model starts from a trained one (quick.sh's multi-frame model from its 1-frame one). --ssim_weight: of the
    loss's SSIM term (quick.sh gives 0 for both models of a multi-frame run, module docstring). --tile: the HR
    tile side (quick.sh's TILE from the environment), for which the rest is planned."""
    if not Path(info).is_file():
        fail(info, "info CSV not found (step 1 writes it)")
    for k, v in make_plan(Path(info), crap_func, n_frames, minutes, lr_dir or None, scale, arch, seed, warm,
                          None if ssim_weight is None else float(ssim_weight), tile and int(tile)).items():
        print(f"{k}={v}")


if __name__ == "__main__":
    run_cli(main)
