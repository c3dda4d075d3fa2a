"""Step 4: restore every image, z-stack and time-lapse under SRC_DIR with trained models.

    python image_gen.py SRC_DIR OUT_DIR --models NAME [NAME ...] [--model_dir models] [--baselines]
                        [--tile_sz N | --whole] [--overlap 16] [--seam cosine|linear|blur]
                        [--gpu N | --device cpu] [--fast] [--dtype float32|uint16|uint8]
                        [--channel C] [--drop_edges] [--tta] [--force | --resume]

Writes OUT_DIR/<relative dir>/<model>/<stem>_<model>.tif (the original's tree), one
ImageJ TIFF per input with all its frames and the pixel size divided by the scale.
`--baselines` adds LR-bilinear and LR-bicubic upsamplings under the same tree.

Frames are restored in overlapping LR tiles of the size each model was trained on (its `.json`: size / scale),
blended across the overlap: a U-Net trained on small crops can behave differently on much larger inputs
(self-attention and the bottleneck see a different context), and memory stays bounded by the tile row.
`--tile_sz N` picks another tile size, `--whole` restores each frame in one piece.
"""
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

import utils  # noqa: F401  (silences library import chatter first)
import torch
from fastprogress.fastprogress import master_bar, progress_bar

from utils.errors import PSSRError, fail, run_cli, warn_skip
from utils.norm import PCT_HI, PCT_LO
from utils.restore import OUT_DTYPES, SEAMS, Predictor, Upsampler, restore_file
from utils.sources import find_images, open_source

BASELINES = {"LR-bilinear": "bilinear", "LR-bicubic": "bicubic"}


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
    """Per-frame progress under the per-file bar, labelled (fastprogress' console default says 'Epoch i/n')."""
    def bar(items):
        pb = progress_bar(items, parent=mb)
        pb.prefix = f"{label} frames:"
        return pb
    return bar


def processors(models: List[str], model_dir: Path, device: str, baselines: bool, scale: int, fast: bool,
               batch_size: int, tta: bool = False):
    """(name, predictor, meta) for each model, then the interpolation baselines (same scale as the models)."""
    from utils.model import load_model  # fastai import: only when a model is asked for
    out = []
    for name in models:
        model, meta = load_model(name, model_dir, device)
        out.append((name, Predictor(model, int(meta["scale"]), device, fast, batch_size, tta=tta), meta))
    if baselines:
        scale = int(out[0][2]["scale"]) if out else scale
        norm = out[0][2]["norm"] if out else {"lo": PCT_LO, "hi": PCT_HI}
        for name, mode in BASELINES.items():
            meta = {"scale": scale, "n_frames": 1, "lr_type": "s", "norm": norm}
            out.append((name, Predictor(Upsampler(scale, mode), scale, device, False, batch_size, multiple=1), meta))
    return out


def main(src_dir: str, out_dir: str, models: Union[None, str, Sequence[str]] = None, model_dir: str = "models",
         baselines: bool = False, use_tiles: bool = True, tile_sz: Optional[int] = None, overlap: int = 16,
         seam: str = "cosine", gpu: Optional[int] = None, device: str = "cpu", fast: bool = False,
         batch_size: int = 4, dtype: str = "float32", channel: Optional[int] = None, drop_edges: bool = False,
         scale: int = 4, mode: str = "L", force: bool = False, resume: bool = False, whole: bool = False,
         tta: bool = False) -> None:
    """Restore SRC_DIR into OUT_DIR.

    tile_sz: LR tile side (default: the model's training crop, size / scale; 256 for baselines alone), tiles
    overlap by `overlap` pixels (at most a quarter of the tile) blended by `seam` (cosine/linear ramps, or the
    paper's 'blur': cut in the middle, Gaussian sigma 1 over 10 px); memory is bounded by the tile row.
    whole: each frame in one piece (use_tiles is the original's flag, kept: tiling is the default now).
    drop_edges: multi-frame models skip the first/last 2 frames as the original did (default: reflected window).
    scale: upsampling of --baselines when no model is given. resume: keep outputs already written."""
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
    if not src_dir.is_dir():
        fail(src_dir, "SRC_DIR is not a folder")
    files = find_images(src_dir, recursive=True)
    if not files:
        fail(src_dir, "SRC_DIR holds no .tif/.tiff/.czi images")
    if out_dir.exists() and not out_dir.is_dir():
        fail(out_dir, "OUT_DIR is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (force or resume):
        fail(out_dir, "OUT_DIR exists already; pass --force to overwrite its results or --resume to keep them")
    procs = processors(names, Path(model_dir), pick_device(gpu, device), baselines, scale, fast, batch_size, tta)
    done = skipped = kept = 0
    bad = set()
    mb = master_bar([(p, f) for p in procs for f in files])
    for (name, predict, meta), path in mb:
        dest = out_dir / path.parent.relative_to(src_dir) / name / f"{path.stem}_{name}.tif"
        tile = None if whole or not use_tiles else int(tile_sz or meta.get("size", 1024) // int(meta["scale"]))
        if resume and dest.exists():
            kept += 1
            continue
        mb.write(f"{name}: {path}")
        try:
            with open_source(path, live=meta["lr_type"] == "t") as src:
                restore_file(src, dest, predict, int(meta["scale"]), int(meta["n_frames"]), meta["lr_type"],
                             (meta["norm"]["lo"], meta["norm"]["hi"]), channel, drop_edges,
                             tile, min(overlap, tile // 4) if tile else overlap, seam, dtype,
                             progress=frame_bar(mb, f"{path.name} ({name})"))
            done += 1
        except PSSRError as e:
            warn_skip(path, f"{name}: {str(e).removeprefix(str(path) + ': ')}")
            skipped += 1
            bad.add(path)
    print(f"wrote {done} restored file(s) under {out_dir}"
          + (f"; kept {kept} existing" if kept else "")
          + (f"; skipped {skipped} ({len(bad)} input file(s), see warnings)" if skipped else ""))
    if not done and not kept:
        fail(src_dir, f"no file could be restored ({skipped} skipped)")


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
