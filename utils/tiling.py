"""Step 2: random high-resolution tiles and their crappified low-resolution twins.

Plan, then work. The parent process draws the whole plan from `--seed` alone: for each
of the n_train / n_valid samples a category, then a file of it, then a legal frame, all
uniformly at random (the original's sampling: small categories are not swamped by big
ones), and one tile per `--tile` size from that frame. Each tile gets its own generator,
`SeedSequence(seed, spawn_key=(1, tile_id))`, which draws its box and its noise, so the
same seed gives byte-identical tiles and CSV whatever `--workers` is, and whatever the number of
processes: under `accelerate launch` every rank draws the same plan and writes only its contiguous share
(utils/dist.py); rank 0 prepares the folder first and writes the tiles CSV and dataset.json last.

Workers only read, crappify and write. A tile reads just its box through
`Source.read(c, z, t, box)`; the frame's normalization percentiles (mi, ma) come from
the step-1 CSV, so no frame is ever loaded whole and memory is bounded by the tile.

Background rejection (the original's rule, made absolute): a box is kept when at least
`FG_FRAC` = 30% of its pixels exceed the frame's 2nd percentile `mi`. After `MAX_TRIES`
boxes the one with the most foreground is kept, with a warning, and counted.

Multi-frame (`--lr_type t|z --n_frames 5`): HR is the centre frame; LR is the frames
centre-2..centre+2 of the same box, each crappified, saved as a (5, h, w) uint8 `.npy`.
All five are normalized with the centre frame's mi/ma, so brightness changes over time
(bleaching, moving objects) stay visible to the network as in the raw data.

Tiles CSV: the source row (its c, z, t are the HR frame used) plus id, tile_sz, the box
corner y0, x0, its foreground fraction fg_frac and the HR tile's mean/sd/min/max.

HR-only data sets (`crap_func=None`, `tile_from_info.py --hr_only`): no LR is written; one-frame
HR tiles go to `hr_*` as usual and multi-frame ones to `hrs_*` as (n_frames, h, w) uint8 `.npy`
stacks of the same box (all frames normalized with the centre frame's mi/ma), for training that
crappifies on the fly (`train.py --crap_func`, utils/onthefly.py).

Interrupted runs: every tile is written under a temporary name and renamed, and the
tiles CSV and dataset.json are written last, so a data set without `dataset.json` is
incomplete; rerunning refuses to touch an existing data set unless `--clean` is given.
`--resume` finishes an incomplete one instead: the plan is seeded, so each tile of it is
known; a tile whose files are all there and readable is kept (its CSV row is redrawn from
the same box, without writing), a missing or unreadable one is written, and the result is
byte-identical to an uninterrupted run. An existing HR tile with other pixels, or a file the
plan does not write, means the data set was started with other options: that fails.
"""
import json
import math
import signal
import sys
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tifffile
from skimage.transform import resize

from . import dist
from .crappifiers import CRAPPIFIERS, crappify
from .errors import fail, warn, warn_skip
from .fileio import atomic_path, prepare_out_dir, remove_stale_tmp, save_npy, save_tif
from .info import INFO_COLS
from .norm import PCT_HI, PCT_LO, normalize, to_uint8
from .progress import progress
from .sources import Source, open_source

__all__ = ["DatasetSpec", "TileConfig", "FG_FRAC", "MAX_TRIES", "TILE_COLS", "read_info", "select_rows",
           "legal_frame", "plan_tiles", "make_tile", "run_tiles", "dataset_root", "make_dataset", "shared_tiles",
           "tile_paths", "check_resumable"]

FG_FRAC = 0.30
MAX_TRIES = 50
TILE_COLS = ["id", "tile_sz", "y0", "x0", "fg_frac", "after_mean", "after_sd", "after_min", "after_max"]
REQUIRED_COLS = [c for c in INFO_COLS if c != "pixel_size"]  # the original's CSVs have no pixel size
INT_COLS = ["nc", "nz", "nt", "c", "z", "t", "x", "y"]
NUMERIC_COLS = INT_COLS + ["mi", "ma"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a data set holds, as tile_from_info.py's options say it; the same spec and seed give the same tiles.

    tiles: HR tile sides (one tile per side from each drawn frame); crap_func None: HR tiles only (for
    training that crappifies on the fly); ftypes / only / skip: which files and categories of the CSV."""
    tiles: Sequence[int]
    n_train: int
    n_valid: int
    crap_func: Optional[str] = "no_crap"
    n_frames: int = 1
    lr_type: str = "s"
    scale: int = 4
    upsample: bool = False
    seed: int = 0
    ftypes: Optional[Sequence[str]] = None
    only: Optional[Sequence[str]] = None
    skip: Optional[Sequence[str]] = None

    def __post_init__(self):
        object.__setattr__(self, "tiles", [int(t) for t in self.tiles])


@dataclass(frozen=True)
class TileConfig:
    """Everything a worker needs besides its job (`crap_func` None: HR tiles only)."""
    root: str
    crap_func: Optional[str]
    scale: int = 4
    n_frames: int = 1
    lr_type: str = "s"
    upsample: bool = False
    seed: int = 0
    resume: bool = False  # keep tiles already written (make_tile checks each)

    @property
    def multi(self) -> str:
        return f"_{self.lr_type}_{self.n_frames}" if self.lr_type != "s" else ""

    def hr_dir(self, tile: int) -> Path:
        return Path(self.root) / f"hr_{self.lr_type}_{tile}{self.multi}"

    def hrs_dir(self, tile: int) -> Path:
        return Path(self.root) / f"hrs_{self.lr_type}_{tile}{self.multi}"

    def lr_dir(self, tile: int) -> Path:
        return Path(self.root) / f"lr{'up' if self.upsample else ''}_{self.lr_type}_{tile}{self.multi}"


def dataset_root(out: Path, info: Path, crap_func: Optional[str], n_frames: int, lr_type: str) -> Path:
    """`OUT/{lr_type}_{n_frames}_{info stem}_{crap_func}`, as the original names data sets (`_hr`: HR only)."""
    return Path(out) / f"{lr_type}_{n_frames}_{Path(info).stem}_{crap_func or 'hr'}"


def read_info(path: Path) -> pd.DataFrame:
    """The step-1 CSV, checked for the columns tiling needs."""
    path = Path(path)
    if not path.is_file():
        fail(path, "info CSV does not exist (make it with gen_sample_info.py)")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        fail(path, f"not a readable CSV ({type(e).__name__}: {e})")
    missing = [c for c in REQUIRED_COLS if c not in df.columns]
    if missing:
        fail(path, f"info CSV is missing columns: {', '.join(missing)}")
    if df.empty:
        fail(path, "info CSV has no rows")
    for col in NUMERIC_COLS:
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | ((num % 1 != 0) if col in INT_COLS else False)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            kind = "an integer" if col in INT_COLS else "a number"
            fail(path, f"row {i + 2}, column {col}: {df[col].iloc[i]!r} is not {kind}")
        df[col] = num.astype(int) if col in INT_COLS else num
    if "pixel_size" not in df.columns:
        df["pixel_size"] = np.nan
    return df


def select_rows(df: pd.DataFrame, ftypes=None, only=None, skip=None) -> pd.DataFrame:
    """Rows of the wanted file types and categories (--ftypes, --only / --skip)."""
    if only and skip:
        fail(None, "use --only or --skip, not both")
    if ftypes:
        df = df[df.ftype.isin(ftypes)]
    if only:
        df = df[df.category.isin(only)]
    if skip:
        df = df[~df.category.isin(skip)]
    if df.empty:
        fail(None, "no info rows left after --ftypes/--only/--skip")
    return df


def legal_frame(row, lr_type: str, n_frames: int) -> bool:
    """A frame can be a multi-frame centre when it has n_frames//2 frames on each side along t (or z)."""
    if lr_type == "s":
        return True
    half, n, i = n_frames // 2, int(row[f"n{lr_type}"]), int(row[lr_type])
    return n >= n_frames and half <= i < n - half


def _usable_files(df: pd.DataFrame, tiles: Sequence[int], lr_type: str, n_frames: int):
    """{(split, category): {fn: legal rows}}, warning about and counting files that cannot give tiles."""
    usable: Dict[Tuple[str, str], Dict[str, pd.DataFrame]] = {}
    skipped: List[str] = []
    for fn, rows in df.groupby("fn", sort=True):
        first = rows.iloc[0]
        if min(int(first.x), int(first.y)) < max(tiles):
            problem = f"frame {first.y}x{first.x} is smaller than the {max(tiles)} px tile"
        else:
            legal = rows[[legal_frame(r, lr_type, n_frames) for _, r in rows.iterrows()]]
            if len(legal):
                usable.setdefault((first.dsplit, first.category), {})[fn] = legal
                continue
            problem = (f"too few frames for --n_frames {n_frames} --lr_type {lr_type} "
                       f"(n{lr_type}={first[f'n{lr_type}']}, needs {n_frames})")
        warn_skip(fn, problem)
        skipped.append(f"{fn}: {problem}")
    return usable, skipped


def plan_tiles(df: pd.DataFrame, n_train: int, n_valid: int, tiles: Sequence[int], lr_type: str = "s",
               n_frames: int = 1, seed: int = 0) -> Tuple[List[dict], int]:
    """The seeded list of tile jobs (source row + id + tile_sz) and the number of skipped files.

    Sampling per split: category, then file, then legal frame, each uniformly at random."""
    usable, skipped = _usable_files(df, tiles, lr_type, n_frames)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    jobs: List[dict] = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        cats = sorted(cat for s, cat in usable if s == split)
        if n > 0 and not cats:
            why = f"; {skipped[0]}" if skipped else ""
            fail(None, f"no usable {split} file for --tile {max(tiles)} --n_frames {n_frames} --lr_type {lr_type}{why}")
        for _ in range(n):
            files = usable[(split, cats[rng.integers(len(cats))])]
            rows = files[sorted(files)[rng.integers(len(files))]]
            row = rows.iloc[rng.integers(len(rows))].to_dict()
            for tile in tiles:
                jobs.append({**row, "id": len(jobs), "tile_sz": int(tile)})
    return jobs, len(skipped)


# --------------------------------------------------------------------------- workers

_OPEN: Dict[str, Source] = {}


def _source(job: dict) -> Source:
    """This process's open file (jobs arrive grouped by file, so one stays open at a time)."""
    fn = job["fn"]
    if fn not in _OPEN:
        for s in _OPEN.values():
            s.close()
        _OPEN.clear()
        # An unlabelled stack counted as time points in step 1 must be reopened the same way.
        src = open_source(fn, live=int(job["nt"]) > 1 and int(job["nz"]) == 1)
        if (src.nc, src.nz, src.nt, src.ny, src.nx) != tuple(int(job[k]) for k in ("nc", "nz", "nt", "y", "x")):
            fail(fn, "file differs from its info CSV rows (shape changed); rerun gen_sample_info.py")
        _OPEN[fn] = src
    return _OPEN[fn]


def check_sources(jobs: List[dict]) -> None:
    """Open every file the plan uses (headers only) before anything is written, so a deleted, truncated or
    changed source fails now, naming itself, rather than after half the tiles."""
    for job in {j["fn"]: j for j in jobs}.values():
        _source(job)
    for s in _OPEN.values():
        s.close()
    _OPEN.clear()


def _draw_box(src: Source, job: dict, rng: np.random.Generator) -> Tuple[np.ndarray, Tuple[int, int], float]:
    """A random tile box with enough foreground; the best of MAX_TRIES when none has."""
    ts, c, z, t, mi = job["tile_sz"], int(job["c"]), int(job["z"]), int(job["t"]), float(job["mi"])
    best = None
    for _ in range(MAX_TRIES):
        y0, x0 = int(rng.integers(0, src.ny - ts + 1)), int(rng.integers(0, src.nx - ts + 1))
        raw = src.read(c, z, t, (y0, x0, ts, ts))
        fg = float((raw > mi).mean())
        if best is None or fg > best[2]:
            best = (raw, (y0, x0), fg)
        if fg >= FG_FRAC:
            return best
    print(f"warning: {job['fn']}: no {ts} px box with {FG_FRAC:.0%} foreground in {MAX_TRIES} tries; "
          f"keeping the best ({best[2]:.0%})", file=sys.stderr)
    return best


def _frame_index(job: dict, lr_type: str, offset: int) -> Tuple[int, int, int]:
    c, z, t = int(job["c"]), int(job["z"]), int(job["t"])
    return (c, z + offset, t) if lr_type == "z" else (c, z, t + offset) if lr_type == "t" else (c, z, t)


def _lr(hr01: np.ndarray, cfg: TileConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 crappified version of a [0, 1] HR frame (bilinear-upsampled back with --upsample)."""
    lr = crappify(cfg.crap_func, hr01, cfg.scale, rng)
    if cfg.upsample:
        lr = resize(lr, hr01.shape, order=1, mode="reflect", anti_aliasing=False)
    return to_uint8(lr)


def tile_paths(job: dict, cfg: TileConfig) -> List[Path]:
    """The files `make_tile` writes for `job`: the HR tile (or HR stack), then the LR tile unless HR-only."""
    ts, name = job["tile_sz"], f"{int(job['id']):06d}_{Path(job['fn']).stem}"
    rel = Path(job["dsplit"]) / job["category"]
    hr_stack = cfg.crap_func is None and cfg.n_frames > 1
    paths = [cfg.hrs_dir(ts) / rel / f"{name}.npy" if hr_stack else cfg.hr_dir(ts) / rel / f"{name}.tif"]
    if cfg.crap_func is not None:
        paths.append(cfg.lr_dir(ts) / rel / f"{name}{'.tif' if cfg.lr_type == 's' else '.npy'}")
    return paths


def make_tile(job: dict, cfg: TileConfig) -> dict:
    """Read, crappify and write one HR/LR pair; return its tiles-CSV row."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1, int(job["id"]))))
    src = _source(job)
    raw, (y0, x0), fg = _draw_box(src, job, rng)
    ts, mi, ma = job["tile_sz"], float(job["mi"]), float(job["ma"])
    hr = to_uint8(normalize(raw, mi, ma))
    row = {**job, "y0": y0, "x0": x0, "fg_frac": fg, "after_mean": float(hr.mean()), "after_sd": float(hr.std()),
           "after_min": int(hr.min()), "after_max": int(hr.max())}
    if cfg.resume and tile_kept(job, cfg, hr):
        return row
    half = cfg.n_frames // 2
    frames = [hr if o == 0 else to_uint8(normalize(src.read(*_frame_index(job, cfg.lr_type, o), (y0, x0, ts, ts)), mi, ma))
              for o in range(-half, half + 1)]
    hr_path, *lr_path = tile_paths(job, cfg)
    px = job.get("pixel_size")
    px = None if px is None or (isinstance(px, float) and math.isnan(px)) else float(px)
    if cfg.crap_func is None and cfg.n_frames > 1:
        save_npy(hr_path, np.stack(frames))
    else:
        save_tif(hr_path, hr, px)
    if cfg.crap_func is not None and cfg.lr_type == "s":
        lr = _lr(hr.astype(np.float32) / 255, cfg, rng)
        save_tif(lr_path[0], lr, px if cfg.upsample or px is None else px * cfg.scale)
    elif cfg.crap_func is not None:
        save_npy(lr_path[0], np.stack([_lr(f.astype(np.float32) / 255, cfg, rng) for f in frames]))
    return row


# --------------------------------------------------------------------------- --resume

def _tile_shapes(job: dict, cfg: TileConfig) -> List[tuple]:
    """The array shapes of `tile_paths(job, cfg)`, in the same order."""
    ts, n = int(job["tile_sz"]), cfg.n_frames
    ls = ts if cfg.upsample else ts // cfg.scale
    shapes = [(n, ts, ts) if cfg.crap_func is None and n > 1 else (ts, ts)]
    if cfg.crap_func is not None:
        shapes.append((ls, ls) if cfg.lr_type == "s" else (n, ls, ls))
    return shapes


def _read_whole(path: Path, shape: tuple) -> Optional[np.ndarray]:
    """The tile's pixels when the file is complete and of the expected shape, else None (warned about);
    reading every byte, not just the header, so a tile cut short on disk is redone too."""
    if not path.exists():
        return None
    try:
        a = np.load(path, allow_pickle=False) if path.suffix == ".npy" else tifffile.imread(path)
    except Exception as e:
        warn(path, f"unreadable tile ({type(e).__name__}); writing it again")
        return None
    if a.shape != shape or a.dtype != np.uint8:
        warn(path, f"tile is {a.dtype} {a.shape}, expected uint8 {shape}; writing it again")
        return None
    return a


def tile_kept(job: dict, cfg: TileConfig, hr: np.ndarray) -> bool:
    """--resume, per tile: True when all its files are there, complete, and its HR holds the plan's pixels
    `hr` (so nothing is rewritten); False when one must be written. An HR of other pixels fails: the data
    set was started with other options, and mixing two plans would give a data set no seed describes."""
    paths = tile_paths(job, cfg)
    if not any(p.exists() for p in paths):
        return False
    arrays = [_read_whole(p, s) for p, s in zip(paths, _tile_shapes(job, cfg))]
    if any(a is None for a in arrays):
        return False
    have = arrays[0] if arrays[0].ndim == 2 else arrays[0][cfg.n_frames // 2]
    if not np.array_equal(have, hr):
        fail(paths[0], "tile holds other pixels than this command's plan: the data set was started with another "
                       "--seed or info CSV; rerun that command with --resume, or pass --clean")
    return True


def check_resumable(root: Path, jobs: List[dict], cfg: TileConfig) -> int:
    """Before resuming: remove temporaries of killed runs and refuse files that the plan (`jobs`: the whole
    plan) does not write, which an incomplete data set of other options holds. Returns how many tiles are
    there already."""
    planned = {p for j in jobs for p in tile_paths(j, cfg)} | {root / f"tiles{cfg.multi}.csv"}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):  # .NAME.PID.tmp of atomic_path
            remove_stale_tmp(p.parent / p.name[1:-4].rsplit(".", 1)[0])
        elif p not in planned:
            fail(p, "not a file of this command's plan: the data set was started with other options (--tile, "
                    "--only/--skip, --upsample, --seed, info CSV?); rerun that command with --resume, or pass --clean")
    return sum(all(p.exists() for p in tile_paths(j, cfg)) for j in jobs)


def _leave_ctrl_c_to_the_main_process() -> None:
    """A pool worker's initializer: Ctrl-C (sent to the whole process group) is ignored there, and the main
    process ends the pool; a worker interrupted inside the pool's queues could leave them locked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tiles(jobs: List[dict], cfg: TileConfig, workers: int = 1) -> List[dict]:
    """Make every tile with `workers` processes; rows come back sorted by tile id."""
    order = sorted(jobs, key=lambda j: (j["fn"], j["id"]))  # one open file per worker at a time
    work = partial(make_tile, cfg=cfg)
    if workers <= 1:
        rows = [work(j) for j in progress(order, label="tiles")]
    else:
        # A Pool, not a ProcessPoolExecutor: leaving its block terminates the workers at once, also on Ctrl-C
        # (every tile is written under a temporary name, so none is left half-written). The executor submits
        # every chunk before the first result and waits at exit for the chunks it holds: Ctrl-C during that
        # submission left its workers writing tiles on, and the run hung at exit (4 of 7 loaded test runs).
        with Pool(workers, initializer=_leave_ctrl_c_to_the_main_process) as pool:
            chunk = max(1, min(64, len(order) // (workers * 8)))  # results come per chunk: the progress moves
            rows = list(progress(pool.imap(work, order, chunksize=chunk), total=len(order), label="tiles"))
    for s in _OPEN.values():
        s.close()
    _OPEN.clear()
    return sorted(rows, key=lambda r: r["id"])


def shared_tiles(jobs: List[dict], cfg: TileConfig, workers: int = 1) -> List[dict]:
    """run_tiles on this rank's contiguous share of the plan (files kept together, as run_tiles orders them;
    all of it with one process); returns every rank's rows, sorted by tile id, on every rank."""
    mine = dist.share(sorted(jobs, key=lambda j: (j["fn"], j["id"])))
    return sorted((r for rows in dist.gather(run_tiles(mine, cfg, workers)) for r in rows), key=lambda r: r["id"])


def _check_options(spec: DatasetSpec, workers: int):
    for flag, n in (("--n_train", spec.n_train), ("--n_valid", spec.n_valid)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            fail(None, f"{flag} must be a whole number of tiles >= 1, not {n!r} (training needs both splits)")
    if spec.lr_type not in ("s", "t", "z"):
        fail(None, f"--lr_type must be s, t or z, not '{spec.lr_type}'")
    if spec.lr_type == "s" and spec.n_frames != 1:
        fail(None, "--lr_type s uses one frame; pass --n_frames 1 (or --lr_type t/z)")
    if spec.n_frames < 1 or spec.n_frames % 2 == 0:
        fail(None, f"--n_frames must be odd (a centre frame and as many on each side), not {spec.n_frames}")
    if spec.crap_func is not None and spec.crap_func not in CRAPPIFIERS:
        fail(None, f"unknown crappifier '{spec.crap_func}'; known: {', '.join(sorted(CRAPPIFIERS))}")
    if spec.scale < 1 or any(t < spec.scale or t % spec.scale for t in spec.tiles):
        fail(None, f"every --tile must be a multiple of --scale {spec.scale}: {list(spec.tiles)}")
    if workers < 1:
        fail(None, "--workers must be at least 1")


def _resume_root(root: Path, jobs: List[dict], cfg: TileConfig, clean: bool) -> None:
    """--resume: only an incomplete data set (or none yet) can be finished."""
    if clean:
        fail(None, "use --resume (finish an interrupted data set) or --clean (write it again), not both")
    if (root / "dataset.json").exists():
        fail(root, "data set is complete (it has dataset.json); nothing to resume; pass --clean to write it again")
    root.mkdir(parents=True, exist_ok=True)
    n = check_resumable(root, jobs, cfg)
    print(f"{root}: resuming, {n} of {len(jobs)} tiles written already")


def hr_pixel_size(rows: List[dict], root: Path) -> Optional[float]:
    """The HR tiles' pixel size (µm) when every tile's source records one and they agree within 1%, else None:
    models carry it in their .json so that image_gen.py resamples test images to the training pixel size."""
    sizes = [float(r.get("pixel_size", math.nan)) for r in rows]
    if not sizes or any(math.isnan(s) or s <= 0 for s in sizes):
        return None
    if max(sizes) > 1.01 * min(sizes):
        warn(root, f"tiles come from {min(sizes):g}-{max(sizes):g} µm pixels; no training pixel size recorded")
        return None
    return float(np.median(sizes))


def make_dataset(out: Path, info: Path, spec: DatasetSpec, workers: int = 1, clean: bool = False,
                 resume: bool = False) -> dict:
    """Plan and write a whole data set; returns its dataset.json content.

    resume: finish an interrupted run of the same command (see the module docstring)."""
    _check_options(spec, workers)
    crap_func, n_frames, lr_type, tiles = spec.crap_func, spec.n_frames, spec.lr_type, spec.tiles
    df = select_rows(read_info(info), spec.ftypes, spec.only, spec.skip)
    jobs, n_skipped = plan_tiles(df, spec.n_train, spec.n_valid, tiles, lr_type, n_frames, spec.seed)
    check_sources(jobs)
    root = dataset_root(out, info, crap_func, n_frames, lr_type)
    cfg = TileConfig(str(root), crap_func, spec.scale, n_frames, lr_type, spec.upsample, spec.seed, resume)
    dist.barrier()  # every rank has planned and checked its inputs before rank 0 touches the folder
    if dist.is_main():
        if resume:
            _resume_root(root, jobs, cfg, clean)
        else:
            if not clean and root.is_dir() and any(root.iterdir()) and not (root / "dataset.json").exists():
                fail(root, "incomplete data set (no dataset.json: an earlier run was interrupted); pass --resume to "
                           "finish it (same command: the seeded plan is the same) or --clean to write it again")
            prepare_out_dir(root, clean, "data set")
    dist.barrier()  # the folder is ready: each rank writes its share of the plan
    rows = shared_tiles(jobs, cfg, workers)
    cols = list(df.columns) + TILE_COLS
    if dist.is_main():  # rank 0 alone writes the index files, once every rank's tiles are written
        with atomic_path(root / f"tiles{cfg.multi}.csv") as tmp:
            pd.DataFrame(rows)[cols].to_csv(tmp, index=False)
    n_weak = sum(r["fg_frac"] < FG_FRAC for r in rows)
    meta = dict(scale=spec.scale, tile=tiles[0] if len(tiles) == 1 else tiles, tiles=tiles, n_frames=n_frames,
                lr_type=lr_type, crap_func=crap_func, upsample=spec.upsample, seed=spec.seed,
                norm=dict(lo=PCT_LO, hi=PCT_HI), info=str(info), n_train=spec.n_train, n_valid=spec.n_valid,
                n_tiles=len(rows), n_files_skipped=n_skipped, n_mostly_background=n_weak,
                fg_frac=FG_FRAC, hr_only=crap_func is None, hr_pixel_size=hr_pixel_size(rows, root),
                hr_dirs=[(cfg.hrs_dir(t) if crap_func is None and n_frames > 1 else cfg.hr_dir(t)).name for t in tiles],
                lr_dirs=[cfg.lr_dir(t).name for t in tiles] if crap_func else [])
    if dist.is_main():
        with atomic_path(root / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    return meta
