"""Step 4: restore every image, z-stack and time-lapse under SRC_DIR with trained models.

    python image_gen.py SRC_DIR OUT_DIR --models NAME [NAME ...] [--model_dir models] [--baselines]
                        [--tile_sz N | --whole] [--overlap 16] [--seam blur|cosine|linear]
                        [--gpu N | --device cpu] [--fast] [--dtype float32|uint16|uint8]
                        [--channel C] [--drop_edges] [--tta] [--force | --resume]
                        [--out_format tif|ome-zarr] [--pixel_size UM]

Writes OUT_DIR/<relative dir>/<model>/<stem>_<model>.tif (the original's tree), one
ImageJ TIFF per input with all its frames and the pixel size divided by the scale
(`--out_format ome-zarr`: `<stem>_<model>.ome.zarr`, chunked, with a multiscale pyramid).
Inputs whose pixel size differs from the model's training input are resampled to it first (the paper's
Methods: FIB-SEM 4 nm -> 8 nm, 10 nm -> 8 nm); `--pixel_size` replaces the files' own.
`--baselines` adds LR-bilinear and LR-bicubic upsamplings under the same tree.

Frames are restored in overlapping LR tiles of the size each model was trained on (its `.json`: size / scale),
joined by the paper's seam blur (`--seam cosine` blends the overlap instead): a U-Net trained on small crops can behave differently on much larger inputs
(self-attention and the bottleneck see a different context), and memory stays bounded by the tile row.
`--tile_sz N` picks another tile size, `--whole` restores each frame in one piece.

Several processes: `accelerate launch --multi_gpu --num_processes N image_gen.py ... [--device cuda]` gives
each process a contiguous share of the (model, file, frame) work (utils/dist.py); a file split between
processes is restored frame by frame into part files that rank 0 copies into the output (utils/restore.py).
"""
import io
import sys
from contextlib import redirect_stderr
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import utils  # noqa: F401  (silences library import chatter first)
import torch

from utils.errors import PSSRError, fail, run_cli, warn, warn_skip
from utils.lrstats import unlike_training
from utils.norm import PCT_HI, PCT_LO
from utils import dist
from utils.restore import (OUT_DTYPES, SEAMS, Predictor, RestoreSpec, Upsampler, part_dir, plan_frames, restore_file,
                           restore_parts)
from utils.omezarr import zarr_stem
from utils.progress import child_progress, master_progress
from utils.resample import match_pixel_size
from utils.sources import find_images, open_source

BASELINES = {"LR-bilinear": "bilinear", "LR-bicubic": "bicubic"}
OUT_FORMATS = {"tif": ".tif", "ome-zarr": ".ome.zarr"}


def names_list(models: Union[None, str, Sequence[str]]) -> List[str]:
    """`--models a b`, `--models a,b` and `--models '[a, b]'` all mean [a, b]."""
    if models is None:
        return []
    items = [models] if isinstance(models, str) else list(models)
    return [n.strip() for m in items for n in str(m).split(",") if n.strip()]


def pick_device(gpu: Optional[int], device: str) -> str:
    if gpu is None:
        return device
    if not torch.cuda.is_available():
        fail(None, f"--gpu {gpu}: no CUDA device available here; use --device cpu")
    return f"cuda:{gpu}"


def frame_bar(mb, label: str):
    """Per-frame progress under the per-file one: a bar in a terminal, a few plain lines in a log."""
    return child_progress(mb, f"{label} frames")


def processors(models: List[str], model_dir: Path, device: str, baselines: bool, scale: int, fast: bool,
               batch_size: int, tta: bool = False):
    """(name, predictor, meta) for each model, then the interpolation baselines (same scale as the models)."""
    from utils.model import load_model  # fastai import: only when a model is asked for
    from utils.speed import native_bf16
    if fast and models and device == "cpu" and not native_bf16():
        warn("--fast", "this CPU has no bfloat16 instructions (AMX, AVX-512 BF16): emulated bf16 is slower than fp32")
    out = []
    for name in models:
        model, meta = load_model(name, model_dir, device)
        out.append((name, Predictor(model, int(meta["scale"]), device, fast, batch_size, tta=tta), meta))
    if baselines:
        scale = int(out[0][2]["scale"]) if out else scale
        norm = out[0][2]["norm"] if out else {"lo": PCT_LO, "hi": PCT_HI}
        for name, mode in BASELINES.items():
            meta = {"scale": scale, "n_frames": 1, "lr_type": "s", "norm": norm,
                    "hr_pixel_size": out[0][2].get("hr_pixel_size") if out else None}  # the models' grid
            out.append((name, Predictor(Upsampler(scale, mode), scale, device, False, batch_size, multiple=1), meta))
    return out


def main(src_dir: str, out_dir: str, models: Union[None, str, Sequence[str]] = None, model_dir: str = "models",
         baselines: bool = False, use_tiles: bool = True, tile_sz: Optional[int] = None, overlap: int = 16,
         seam: str = "blur", gpu: Optional[int] = None, device: str = "cpu", fast: bool = False,
         batch_size: int = 4, dtype: str = "float32", channel: Optional[int] = None, drop_edges: bool = False,
         scale: int = 4, mode: str = "L", force: bool = False, resume: bool = False, whole: bool = False,
         tta: bool = False, out_format: str = "tif", pixel_size: Optional[float] = None) -> None:
    """Restore SRC_DIR into OUT_DIR.

    tile_sz: LR tile side (default: the model's training crop, size / scale; 256 for baselines alone), tiles
    overlap by `overlap` pixels (at most a quarter of the tile) joined by `seam`: the paper's 'blur' (cut in the
    middle, Gaussian sigma 1 on a 10-px band centred on the seam; Methods, "Elimination of Tiling Artifacts"),
    or cosine/linear blending ramps; memory is bounded by the tile row.
    whole: each frame in one piece (use_tiles is the original's flag, kept: tiling is the default now).
    drop_edges: multi-frame models skip the first/last 2 frames as the original did (default: the edge frame repeated).
    scale: upsampling of --baselines when no model is given. resume: keep outputs already written.
    out_format: tif (ImageJ hyperstack) or ome-zarr. pixel_size: µm per input pixel, replacing the files' own
    (inputs are resampled to the model's training pixel size when its .json records one)."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    names = names_list(models)
    if not names and not baselines:
        fail(None, "nothing to do: give --models NAME [NAME ...] and/or --baselines")
    if mode != "L":
        fail(None, f"--mode {mode}: only single-channel grey ('L') images are supported")
    if dtype not in OUT_DTYPES:
        fail(None, f"--dtype {dtype}: choose one of {', '.join(OUT_DTYPES)}")
    if seam not in SEAMS:
        fail(None, f"--seam {seam}: choose one of {', '.join(SEAMS)}")
    if out_format not in OUT_FORMATS:
        fail(None, f"--out_format {out_format}: choose one of {', '.join(OUT_FORMATS)}")
    if pixel_size is not None and not (isinstance(pixel_size, (int, float)) and pixel_size > 0):
        fail(None, f"--pixel_size {pixel_size}: give the input pixel size in micrometres, e.g. 0.008")
    if not src_dir.is_dir():
        fail(src_dir, "SRC_DIR is not a folder")
    files = find_images(src_dir, recursive=True)
    if not files:
        fail(src_dir, "SRC_DIR holds no .tif/.tiff/.czi images or .zarr folders")
    if out_dir.exists() and not out_dir.is_dir():
        fail(out_dir, "OUT_DIR is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (force or resume):
        fail(out_dir, "OUT_DIR exists already; pass --force to overwrite its results or --resume to keep them")
    dist.barrier()  # every rank has checked OUT_DIR before any rank writes into it
    procs = processors(names, Path(model_dir), dist.device(pick_device(gpu, device)), baselines, scale, fast,
                       batch_size, tta)
    jobs = [(p, f) for p in procs for f in files]
    work, shared = my_work(jobs, channel, drop_edges)
    done, kept, bad = set(), set(), set()
    unlike = set()  # (job, kind, value): inputs noisier, or smoother along x, than the model's training LR
    mb = master_progress(work)

    def restore(j: int, frames: Optional[List[int]], parts: bool, bar: bool = True) -> None:
        """Job j: the whole file (frames None; `parts`: copy in frames restored already), or only `frames`."""
        (name, predict, meta), path = jobs[j]
        dest = output_path(out_dir / path.parent.relative_to(src_dir) / name, path, name, out_format)
        tile = None if whole or not use_tiles else int(tile_sz or meta.get("size", 1024) // int(meta["scale"]))
        if resume and dest.exists():
            kept.update([j] if frames is None else [])
            return
        mb.write(f"{name}: {path}" + (f" (frames {frames[0]}-{frames[-1]})" if frames else ""))
        spec = RestoreSpec.of_model(meta, channel=channel, drop_edges=drop_edges, tile=tile,
                                    overlap=min(overlap, tile // 4) if tile else overlap, seam=seam, dtype=dtype)
        progress = frame_bar(mb, f"{path.name} ({name})") if bar else None
        try:
            with open_source(path, live=meta["lr_type"] == "t") as src:
                src = match_pixel_size(src, meta, pixel_size, say=mb.write)
                if frames is None:
                    unlike.update((j, kind, value) for kind, value in unlike_training(src, meta))
                    restore_file(src, dest, predict, spec, progress=progress,
                                 parts=part_dir(dest) if parts else None)
                    done.add(j)
                else:
                    restore_parts(src, part_dir(dest), frames, predict, spec, progress=progress, keep=resume)
        except PSSRError as e:
            warn_skip(path, f"{name}: {str(e).removeprefix(str(path) + ': ')}")
            bad.add(j)

    for j, frames in mb:
        restore(j, frames, resume)
    dist.barrier()  # every frame of the shared files is on disk: rank 0 puts each file together
    for j in shared if dist.is_main() else []:
        restore(j, None, True, bar=False)
    done, kept, bad, unlike = (set().union(*sets) for sets in zip(*dist.gather((done, kept, bad, unlike))))
    main_rank = dist.is_main()
    dist.finish()  # the last collective: every rank has what it needs
    bad -= done  # a file that failed on one rank but was finished by rank 0
    skipped, n_bad = len(bad), len({jobs[j][1] for j in bad})
    if main_rank:
        print(f"wrote {len(done)} restored file(s) under {out_dir}"
              + (f"; kept {len(kept)} existing" if kept else "")
              + (f"; skipped {skipped} ({n_bad} input file(s), see warnings)" if skipped else ""))
        warn_unlike(jobs, unlike)
    if not done and not kept:
        fail(src_dir, f"no file could be restored ({skipped} skipped)")


UNLIKE = {  # kind: (what the input is, the .json key of the training LR's value, what the model never saw)
    "smoother": ("smoother along x (the scan lines) than the model's training LR (fast-axis ratio",
                 "lr_fast_axis_ratio", "a detector bandwidth it never saw"),
    "noisier": ("noisier than any of the model's training LR (noise level", "lr_noise_level",
                "noise beyond its training range"),
    "cleaner": ("cleaner than any of the model's training LR (noise level", "lr_noise_level_min",
                "nearly noise-free LR, on which it gained {clean_gain_db:+.2f} dB over bilinear in training"),
}


def warn_unlike(jobs: list, unlike: set) -> None:
    """One line per model and kind of input unlike its training LR (utils.lrstats.unlike_training): there the
    model's gain over bilinear vanishes (README, Step 4)."""
    groups: dict = {}
    for j, kind, value in sorted(unlike):
        groups.setdefault((jobs[j][0][0], kind), []).append((j, value))
    for (name, kind), hits in groups.items():
        j, value = hits[0]
        (_, _, meta), path = jobs[j]
        what, key, why = UNLIKE[kind]
        warn(path, f"{name}: {len(hits)} input file(s) like this one are {what} {value:.3g} vs {meta[key]:.3g}): "
                   f"{why.format(**meta)}, so expect little gain over bilinear. LR_DIR=<these LR images> "
                   f"recipes/quick.sh ... trains on LR like them")


def output_path(folder: Path, path: Path, name: str, out_format: str = "tif") -> Path:
    """`<stem>_<model>.tif` or `.ome.zarr` in `folder` (an input `cell.ome.zarr` has the stem `cell`)."""
    stem = zarr_stem(path) if path.suffix.lower() == ".zarr" else path.stem
    return folder / f"{stem}_{name}{OUT_FORMATS[out_format]}"


def my_work(jobs: list, channel: Optional[int],
            drop_edges: bool) -> Tuple[List[Tuple[int, Optional[List[int]]]], List[int]]:
    """This rank's (job, frames) and the jobs shared between ranks (utils.dist.share_frames); one process:
    every job whole, nothing opened twice."""
    if not dist.launched():
        return [(j, None) for j in range(len(jobs))], []
    return dist.share_frames(frame_counts(jobs, channel, drop_edges))


def frame_counts(jobs: list, channel: Optional[int], drop_edges: bool) -> List[Tuple[int, float]]:
    """(output frames, cost of one) per (processor, file), from the headers: what ranks share. Cost is LR pixels
    (baselines a twentieth: no network); 0 frames for a file that cannot be restored, which rank 0 then
    meets in its loop and reports, as one process would."""
    out = []
    for (name, _, meta), path in jobs:
        try:
            with open_source(path, live=meta["lr_type"] == "t") as src, redirect_stderr(io.StringIO()):
                n = len(plan_frames(src, int(meta["n_frames"]), meta["lr_type"], channel, drop_edges)[0])
                out.append((n, src.ny * src.nx * (0.05 if name in BASELINES else 1.0)))
        except PSSRError:
            out.append((0, 0.0))
    return out


def gather_nargs(argv: List[str], flag: str = "--models") -> List[str]:
    """Accept the original's `--models a b c` (argparse nargs='+') by joining the names for fire."""
    if flag not in argv:
        return argv
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("-"):
        j += 1
    return argv[:i] + [f"{flag}={','.join(argv[i + 1:j])}"] + argv[j:]


if __name__ == "__main__":
    sys.argv = gather_nargs(sys.argv)
    run_cli(main)
