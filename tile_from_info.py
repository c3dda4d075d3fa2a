"""Step 2: crappified HR/LR training tile pairs from the step-1 info CSV.

    python tile_from_info.py --out datasets --info live_mitotracker.csv --tile 128 256 \\
        --n_train 5000 --n_valid 500 --crap_func new_crap_AG_SP --n_frames 5 --lr_type t \\
        [--scale 4] [--ftypes tif czi] [--upsample] [--only A B | --skip A B] [--clean | --resume] \\
        [--seed 0] [--workers 4] [--hr_only]

Writes OUT/{lr_type}_{n_frames}_{info stem}_{crap_func}/ (see utils/tiling.py). `--hr_only` writes
OUT/{lr_type}_{n_frames}_{info stem}_hr/ with HR tiles alone (stacks for --n_frames 5), for
`train.py --crap_func NAME`, which crappifies them afresh at every epoch.

An interrupted run leaves a data set without dataset.json: the same command with `--resume` finishes it
(keeping the tiles written, byte-identical to an uninterrupted run), `--clean` writes it again.
"""
import sys

import utils  # noqa: F401  (quiets library import warnings)
from utils import dist
from utils.errors import run_cli
from utils.tiling import DatasetSpec, make_dataset

LIST_FLAGS = ("--tile", "--ftypes", "--only", "--skip")


def main(out: str, info: str, tile, n_train: int, n_valid: int, crap_func: str = "no_crap", n_frames: int = 1,
         lr_type: str = "s", scale: int = 4, ftypes=None, upsample: bool = False, only=None, skip=None,
         clean: bool = False, seed: int = 0, workers: int = 1, hr_only: bool = False, resume: bool = False) -> None:
    """Draw n_train + n_valid random frames, cut one tile per --tile size from each, crappify, write.

    resume: finish an interrupted run of this same command (keeps its tiles)."""
    spec = DatasetSpec(_names(tile), n_train, n_valid, None if hr_only else crap_func, n_frames, lr_type, scale,
                       upsample, seed, _names(ftypes), _names(only), _names(skip))
    meta = make_dataset(out, info, spec, workers, clean, resume)
    if not dist.is_main():
        return
    print(f"{meta['n_tiles']} tiles in {meta['hr_dirs']}" + (f" / {meta['lr_dirs']}" if meta["lr_dirs"] else "") + "; "
          f"{meta['n_files_skipped']} files skipped, {meta['n_mostly_background']} tiles below "
          f"{meta['fg_frac']:.0%} foreground")


def _names(v):
    """fire gives a scalar, a tuple or None; accept `a,b` and (see below) `a b` alike."""
    if v is None:
        return None
    items = list(v) if isinstance(v, (tuple, list)) else [v]
    return [s for item in items for s in str(item).split(",") if s]


def join_list_flags(argv):
    """Let `--tile 128 256` mean one list as in the original's argparse CLI: fire takes `128,256`."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        i += 1
        if out[-1] in LIST_FLAGS:
            vals = []
            while i < len(argv) and not argv[i].startswith("--"):
                vals.append(argv[i])
                i += 1
            out.append(",".join(vals))
    return out


if __name__ == "__main__":
    sys.argv[1:] = join_list_flags(sys.argv[1:])
    run_cli(main)
