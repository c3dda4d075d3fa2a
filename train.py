"""Step 3: train the PSSR U-Net on a tile_from_info.py data set.

    python train.py --datasetname s_1_mito_new_crap_AG_SP --bs 8 --lr 4e-4 --size 512 --tile_sz 512 \
        --cycles 50 --save_name mito_AG_SP --lr_type s --n_frames 1 [--schedule recipes/em_progressive.json]

Writes `{model_dir}/{lr_type}_{n_frames}_{save_name}_e{epochs}` (.pth/.json/.pkl; no `_e{epochs}` with
`--minutes`, which fits the epochs to a time) and, per round, the best epoch as `..._best_{size}`; prints
validation PSNR/SSIM next to the bilinear baseline of the same LR tiles.
Multi-GPU: `accelerate launch train.py ...` (batch size is per GPU, as in the original).

`--crap_func NAME` crappifies on the fly: the data set's HR tiles are augmented and then crappified afresh
at every epoch (utils/onthefly.py), with the noise level drawn per tile from `--crap_strength lo,hi`; the
final model is also scored on its validation tiles crappified without noise (`clean_gain_db`).
"""
import os
import sys
from pathlib import Path
from typing import Optional

import utils  # noqa: F401  (quiet fastai/torch import warnings first)
import torch
from fastai.learner import Learner
from fastai.torch_core import rank_distrib, set_seed

from utils.crappifiers import (check_crappifier, parse_bandwidth, parse_blur, parse_counts, parse_share,
                               parse_strength)
from utils.data import MAX_ROTATE, MAX_ZOOM, find_dataset, find_hr_tiles, make_dls
from utils.errors import fail, run_cli
from utils.loss import sr_loss
from utils.lrstats import CLEAN_GAIN
from utils.model import (ARCHS, DEFAULT_META, LR_HEADS, bottleneck_size, build_model, find_weights, load_safe,
                         model_exists, model_paths, read_meta, save_model, widen_frames)
from utils.onthefly import Draws, SetDrawEpoch, make_fly_dls
from utils.progress import plain_training_progress
from utils.training import (CPUFastPath, add_precision, bilinear_baseline, ckpt_path, export_learner, fit_rounds,
                            noise_free_gain, plain_opt_state, plan_of, read_ckpt, read_schedule, single_round,
                            sr_metrics, unet_splitter, unwrap, valid_lr_reference)

WD = 1e-3  # the original's weight decay


def pick_device(device: Optional[str]) -> torch.device:
    """--device, else this process's GPU under `accelerate launch`, else CUDA if present, else CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_names(names: list, model_dir: Path, load_name: Optional[str], resume: bool, force: bool,
                final: str) -> None:
    """Refuse to overwrite models (or abandon an interrupted run) unless told to: --force, --resume, or
    --load_name of the very model being written (continuing it)."""
    if force or resume or load_name in names:
        return
    if ckpt_path(final, model_dir).exists():
        fail(ckpt_path(final, model_dir), "an interrupted run of this model left a checkpoint; "
                                          "pass --resume to continue it or --force to start over")
    for n in names:
        if model_exists(n, model_dir):
            fail(model_paths(n, model_dir)["pth"], "model exists already; pass --force to overwrite it, "
                                                   "--load_name to continue from it, or choose another --save_name")


def load_start(model: torch.nn.Module, load_name: str, model_dir: Path, meta: dict) -> Optional[dict]:
    """--load_name: its weights into `model` (same arch/scale/path); returns its optimizer state if saved.

    A 1-frame model may start a multi-frame one (`widen_frames`): training then begins AT the 1-frame model and
    only has to learn what the neighbours add, which a short movie's few windows can teach."""
    saved = read_meta(load_name, model_dir)
    widen = saved["n_frames"] == 1 and meta["n_frames"] > 1
    keys = ("arch", "n_frames", "scale", "lr_space", "encoder_stride", "residual", "imagenet_norm", "noise_channel")
    for k in keys + (("lr_head",) if meta["lr_space"] else ()):
        if saved.get(k, DEFAULT_META[k]) != meta[k] and not (widen and k == "n_frames"):
            fail(model_paths(load_name, model_dir)["json"], f"--load_name model has {k}={saved.get(k)}, "
                                                             f"this run {k}={meta[k]}")
    pth = model_paths(load_name, model_dir)["pth"]
    state = load_safe(pth, "model weights")
    try:
        model.load_state_dict(widen_frames(model, state, meta["n_frames"]) if widen else state)
    except (KeyError, RuntimeError) as e:
        fail(pth, f"weights do not fit this run's network; its options (--noattn, --nobottle, ...) must match "
                  f"the model's ({str(e).splitlines()[0][:100]})")
    opt_file = model_paths(load_name, model_dir)["opt"]
    opt_state = load_safe(opt_file, "optimizer state") if opt_file.exists() and not widen else None
    print(f"loaded {load_name}" + (" (with optimizer state)" if opt_state else "")
          + (f" (its frame as the centre of {meta['n_frames']})" if widen else ""))
    return opt_state


def main(datasetname: Optional[str] = None, bs: int = 8, lr: float = 4e-4, lr_start: Optional[float] = None,
         size: int = 256, tile_sz: int = 256, cycles: int = 5, save_name: str = "combo", lr_type: str = "s",
         n_frames: int = 1, load_name: Optional[str] = None, freeze: bool = False, pretrain: bool = False,
         weights: Optional[str] = None, arch: str = "resnet34", attn: bool = True, blur: bool = True,
         final_blur: bool = True, last_cross: bool = True, bottle: bool = True, norm: bool = False,
         l1_loss: bool = False, lr_space: bool = False, residual: bool = False,
         data_path: str = "datasets", model_dir: str = "models", schedule: Optional[str] = None, seed: int = 0,
         device: Optional[str] = None, workers: int = 0, fp32: bool = False, resume: bool = False, force: bool = False,
         max_rotate: Optional[float] = None, max_zoom: Optional[float] = None, crap_func: Optional[str] = None,
         crap_strength="1", crap_blur="0", crap_bandwidth="0", crap_bandwidth_share: float = 1.0, crap_counts="0",
         crap_counts_share: float = 1.0, crap_clean_share: float = 0.0,
         encoder_stride: Optional[int] = None,
         lr_head: str = LR_HEADS[0], ssim_weight: float = 0.0, minutes: Optional[float] = None,
         average_epochs: float = 0, noise_channel: bool = False) -> None:
    """Train; every option as the original train.py plus --schedule/--lr_space/--weights/--seed/--device/
    --workers/--model_dir/--fp32/--resume/--force/--crap_func/--crap_strength/--crap_blur/--crap_bandwidth(_share)/
    --crap_counts(_share)/--crap_clean_share/--minutes/--average_epochs/--noise_channel (README, Step 3).

    lr: as the original's `slice(lr)`, the encoder's two layer groups train at lr/10; --lr_start gives a range
    spaced linearly over the three groups (paper, Methods). residual: add the bilinear upsampling to the
    output (an untrained model then equals bilinear); off by default, as in the paper (--lr_space implies it).
    max_rotate/max_zoom: default 10 degrees / 1.1 with --crap_func (the HR is augmented before crappifying),
    none for pre-made pairs (resampling crappified LR smooths its noise). crap_blur: a probe-blur sigma range
    (HR px) drawn per tile before crappifying, for blurred real LR (off, as the paper). crap_bandwidth: a sigma
    range (LR px) of smoothing along x drawn per tile after crappifying, a fast scan's detector bandwidth (off,
    as the paper; utils.crappifiers.scan_bandwidth), for --crap_bandwidth_share of the tiles (default all; the rest
    keep white noise). crap_counts: a range of detector counts for a white LR pixel, drawn per tile: shot noise
    added to each LR pixel after crappifying, for LR noisier than the crappifier's noise reaches (off, as the
    paper; utils.crappifiers.shot_noise), for --crap_counts_share of the tiles (default all; the rest get none).
    crap_clean_share: the share of tiles crappified without any noise (strength 0, no shot noise), for real LR
    nearly free of noise (default 0, as the paper).
    encoder_stride: 16 for --lr_space (its U-Net sees LR pixels), else the paper's 32. lr_head: the --lr_space
    upsampling head, `subpixel` (its last x2 step linear, 1.5x faster training) or `icnr` (every step ReLU'd at HR
    size, models before it was recorded; utils.model.sr_head). ssim_weight: adds this times (1 - SSIM) of the
    prediction fitted to the target, as the evaluation scores it, to the pixel loss (utils.loss; not in the paper).
    load_name: continue a model, or start a multi-frame model from a 1-frame one (its frame becomes the centre: the
    new model starts as exactly the 1-frame one). minutes: train for this wall-clock time from the first epoch on,
    as many epochs as fit (re-planned after each from the measured epoch time; --cycles is the first plan, at most
    4x it run); the one-cycle schedule ends with the last of them. The model is then named without `_e{epochs}` (its
    .json says how many ran). average_epochs: the model keeps its weights averaged (exponentially) over about this
    many last epochs instead of the best epoch's, unless the average validates more than 1% worse
    (utils.training.WeightAverage, keep_better; not in the paper); its .json's final_weights says which.
    noise_channel: the U-Net is also told each input tile's noise level, read from the tile by the model itself
    (utils.model.tile_noise_sigma; not in the paper), so it restores LR noisier than any it trained on."""
    if datasetname is None:
        fail(None, "--datasetname is required (a folder of --data_path written by tile_from_info.py)")
    if lr_type not in ("s", "t", "z"):
        fail(None, f"--lr_type must be s, t or z, not '{lr_type}'")
    if (lr_type == "s") != (n_frames == 1):
        fail(None, f"--lr_type {lr_type} needs {'--n_frames 1' if lr_type == 's' else 'more than one frame'}")
    if arch not in ARCHS:
        fail(None, f"unknown arch '{arch}'; choose one of {', '.join(ARCHS)}")
    if lr_head not in LR_HEADS:
        fail(None, f"unknown --lr_head '{lr_head}'; choose one of {', '.join(LR_HEADS)}")
    if crap_func is not None:
        check_crappifier(crap_func)
    if isinstance(ssim_weight, bool) or not isinstance(ssim_weight, (int, float)) or not 0 <= ssim_weight <= 10:
        fail(None, f"--ssim_weight must be a number from 0 to 10, not {ssim_weight!r}")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        fail(None, f"--minutes must be a positive number, not {minutes!r}")
    if isinstance(average_epochs, bool) or not isinstance(average_epochs, (int, float)) or average_epochs < 0:
        fail(None, f"--average_epochs must be a number of epochs >= 0 (0: off), not {average_epochs!r}")
    if minutes is not None and schedule:
        fail(schedule, "--minutes fits one training stage to the time; a --schedule has its own epochs per round")
    strength, blur_range = parse_strength(crap_strength), parse_blur(crap_blur)
    bandwidth, share = parse_bandwidth(crap_bandwidth), parse_share(crap_bandwidth_share)
    counts, counts_share = parse_counts(crap_counts), parse_share(crap_counts_share, "--crap_counts_share")
    clean_share = parse_share(crap_clean_share, "--crap_clean_share")
    fly = crap_func is not None
    if not fly and (strength != (1.0, 1.0) or blur_range != (0.0, 0.0) or bandwidth != (0.0, 0.0)
                    or share != 1 or counts != (0.0, 0.0) or counts_share != 1 or clean_share):
        fail(None, "--crap_strength, --crap_blur, --crap_bandwidth(_share), --crap_counts(_share) and "
                   "--crap_clean_share act on pairs crappified on the fly: give --crap_func too")
    max_rotate = (MAX_ROTATE if fly else 0.0) if max_rotate is None else float(max_rotate)
    max_zoom = (MAX_ZOOM if fly else 1.0) if max_zoom is None else float(max_zoom)
    encoder_stride = int(encoder_stride or (16 if lr_space else 32))
    rounds = (read_schedule(schedule) if schedule
              else single_round(size, tile_sz, bs, cycles, lr, lr_start, freeze, minutes))
    total = sum(r.epochs for r in rounds)
    model_dir = Path(model_dir)
    final = f"{lr_type}_{n_frames}_{save_name}" + ("" if minutes else f"_e{total}")
    check_names([final] + [f"{final}_best_{r.size}" for r in rounds], model_dir, load_name, resume, force, final)

    # Every data set and weights file is checked before anything is written.
    find = find_hr_tiles if fly else find_dataset
    specs = {}
    for r in rounds:
        name, tile, crop = _key(r, datasetname)
        specs[name, tile, crop] = find(Path(data_path), name, lr_type, tile, n_frames, crop)
    scale = next(iter(specs.values())).scale
    if any(s.scale != scale for s in specs.values()):
        fail(Path(data_path) / datasetname, "rounds use data sets of different scales")
    weights_file = find_weights(arch, weights) if pretrain else None
    ckpt = read_ckpt(ckpt_path(final, model_dir), plan_of(rounds)) if resume else None

    set_seed(seed, reproducible=True)  # also cuDNN's deterministic kernels, no autotuning
    dev = pick_device(device)
    spec0 = next(iter(specs.values()))
    base_meta = dict(scale=scale, n_frames=n_frames, lr_type=lr_type, arch=arch, lr_space=lr_space,
                     self_attention=attn, blur=blur, blur_final=final_blur, last_cross=last_cross, bottle=bottle,
                     weight_norm=True, residual=residual, encoder_stride=encoder_stride, lr_head=lr_head,
                     imagenet_norm=pretrain or norm, pretrained=pretrain, noise_channel=bool(noise_channel),
                     hr_pixel_size=spec0.info.get("hr_pixel_size"),
                     weights=str(weights_file) if weights_file else None, norm=spec0.norm,
                     crap_func=crap_func or spec0.crap_func, crap_strength=list(strength) if fly else None,
                     crap_blur=list(blur_range) if fly else None, crap_bandwidth=list(bandwidth) if fly else None,
                     crap_bandwidth_share=share if fly else None, crap_counts=list(counts) if fly else None,
                     crap_counts_share=counts_share if fly else None, crap_clean_share=clean_share if fly else None,
                     on_the_fly=fly, max_rotate=max_rotate, max_zoom=max_zoom,
                     datasetname=datasetname, loss="l1" if l1_loss else "mse",
                     ssim_weight=float(ssim_weight), average_epochs=float(average_epochs), seed=seed,
                     schedule=plan_of(rounds),
                     load_name=load_name,
                     runtime=runtime())
    check_bottleneck(base_meta, rounds)
    model = build_model(base_meta, weights_file)
    opt_state = load_start(model, load_name, model_dir, base_meta) if load_name else None
    model = model.to(dev)
    precision = []
    draws = Draws(crap_func, scale, strength, seed, max_rotate, max_zoom, blur_range, bandwidth,
                  share, counts, counts_share, clean_share) if fly else None

    def make_learner(rnd):
        # --bs is per process: fastai's DistributedDL hands each rank whole batches of the loader's size, drawn
        # from the rank's 1/world share of the tiles (a loader of bs x world gave each rank bs x world tiles)
        spec = specs[_key(rnd, datasetname)]
        if fly:
            dls = make_fly_dls([hr for _, hr in spec.pairs["train"]], [hr for _, hr in spec.pairs["valid"]],
                               n_frames, rnd.size, draws, rnd.bs, workers, dev)
        else:
            dls = make_dls(spec, n_frames, rnd.size, rnd.bs, workers, dev, max_rotate, max_zoom)
        learn = Learner(dls, model, loss_func=sr_loss(base_meta["loss"], ssim_weight), metrics=sr_metrics(),
                        splitter=unet_splitter, wd=WD, path=Path("."), model_dir=model_dir,
                        cbs=[SetDrawEpoch()] if fly else None)
        plain_training_progress(learn)
        precision.append(add_precision(learn, dev, fp32))
        if not rank_distrib():
            print(f"round: size {rnd.size}, tiles {rnd.tile_sz}, bs {rnd.bs}, {len(dls.train_ds)} train / "
                  f"{len(dls.valid_ds)} valid tiles, {_epochs(rnd)} on {dev} ({precision[-1]})")
        return learn

    def meta_of(rnd):
        return {**base_meta, "size": rnd.size, "tile_sz": rnd.tile_sz, "precision": precision[-1]}

    learn, ran, kept = fit_rounds(rounds, make_learner, final, model_dir, meta_of, ckpt, opt_state, average_epochs)
    # every rank: validate() gathers
    finish(learn, {**meta_of(rounds[-1]), "epochs": ran, "final_weights": kept}, final, model_dir)


def runtime() -> dict:
    """What a seeded run's last digits depend on beyond the seed: library versions, CPU kernels, threads."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None}


def _epochs(rnd) -> str:
    minutes = [s.minutes for s in rnd.stages if s.minutes]
    return (f"~{rnd.epochs} epochs fitted to {minutes[0]:g} minutes" if minutes else f"{rnd.epochs} epochs")


def _key(rnd, datasetname: str) -> tuple:
    """The data a round reads: its own data set (schedule) or --datasetname, at its tile and crop size."""
    return rnd.datasetname or datasetname, rnd.tile_sz, rnd.size


def finish(learn: Learner, meta: dict, final: str, model_dir: Path) -> None:
    """Save the final (best) model with its validation loss next to bilinear upsampling's, so a model that
    is no better than bilinear never passes for one: `beats_bilinear` in its .json, and a warning."""
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, CPUFastPath)])  # evaluate in fp32
    loss, p, s = learn.validate()
    b_loss, bp, bs_ = bilinear_baseline(learn, int(meta["scale"]))
    if rank_distrib():
        return  # the other ranks took part in validate(), whose metrics are gathered across ranks; rank 0 writes
    beats, clean = bool(loss < b_loss), noise_free_gain(learn, int(meta["scale"]))
    save_model(unwrap(learn.model), {**meta, "best_valid_loss": float(loss), "bilinear_valid_loss": b_loss,
                                     "beats_bilinear": beats, **valid_lr_reference(learn),
                                     **({} if clean is None else {"clean_gain_db": clean})},
               final, model_dir,
               opt_state=plain_opt_state(learn.opt.state_dict()) if learn.opt else None)
    export_learner(learn, model_paths(final, model_dir)["pkl"])
    ckpt_path(final, model_dir).unlink(missing_ok=True)
    print(f"saved {model_dir / final}.pth/.json/.pkl")
    print(f"valid PSNR {p:.2f} dB (bilinear {bp:.2f} dB), SSIM {s:.4f} (bilinear {bs_:.4f})"
          + ("" if clean is None else f"; on its validation tiles without noise {clean:+.2f} dB over bilinear"))
    if clean is not None and clean < CLEAN_GAIN:
        print(f"warning: {final} gains {clean:+.2f} dB over bilinear on noise-free LR of its validation tiles: on LR "
              f"cleaner than its training LR it smooths away detail (image_gen.py says where). For such LR, train "
              f"with a noise range reaching lower (--crap_strength 0.05,2; quick.sh: STRENGTH or LR_DIR) or a share of "
              f"noise-free tiles (--crap_clean_share 0.15; quick.sh: CLEAN_SHARE).",
              file=sys.stderr)
    if not beats:
        print(f"warning: {final} does not beat bilinear upsampling on its validation tiles (loss {loss:.5f} vs "
              f"{b_loss:.5f}); its .json says beats_bilinear: false. Train longer, on more tiles, or check the "
              f"crappifier against your real LR images.", file=sys.stderr)


def check_bottleneck(meta: dict, rounds: list) -> None:
    """Refuse a training crop whose deepest feature map collapses to 1x1: its 3x3 convs then never see a
    neighbour and the model breaks on any larger input; warn below 4 px."""
    side = min(bottleneck_size(meta, r.size) for r in rounds)
    if side < 2:
        fail(None, f"--size {min(r.size for r in rounds)} gives a {side}x{side} bottleneck (encoder stride "
                   f"{meta['encoder_stride']}{', on the LR image' if meta['lr_space'] else ''}); use a larger --size"
                   f"{' or --encoder_stride 16' if meta['encoder_stride'] == 32 else ''}")
    if side < 4 and not rank_distrib():
        print(f"warning: the training crop gives a {side}x{side} bottleneck; restore with tiles of the training "
              f"size (image_gen.py's default) or train on larger crops", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
