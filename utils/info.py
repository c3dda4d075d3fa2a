"""Step 1: one CSV row of statistics per frame (c, z, t) of every source image.

Source layout (the original's): each SRC holds `<category>/{train,valid}/<files>`; a SRC
folder named `live` means unlabelled TIFF stack pages are time points, otherwise z.

Memory is bounded by `MAX_PCT_PIXELS`, not the file: a frame is read whole only when it
is at most that many pixels; a bigger frame is read as a regular grid subsample (every
k-th pixel in y and x, `Source.sample`), and all its statistics (mean, sd,
percentiles, max) come from that subsample. File-wide `all_mi`/`all_ma` are percentiles
of the frames' subsamples pooled after a further thinning that keeps the pool under
`MAX_PCT_PIXELS`; `all_rmax` is the largest (subsampled) frame maximum.
"""
import math
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .errors import PSSRError, fail, warn, warn_skip
from .fileio import atomic_path
from .norm import MAX_PCT_PIXELS, PCT_HI, PCT_LO
from .omezarr import is_zarr
from .progress import progress
from .sources import Source, open_source

__all__ = ["INFO_COLS", "SPLITS", "source_dirs", "frame_rows", "file_rows", "build_info", "check_out", "write_info"]

# The original's columns in its order (with its duplicated all_ma fixed to all_mi, all_ma),
# then the pixel size in micrometres (blank when the file has none).
INFO_COLS = ["category", "dsplit", "multi", "ftype", "uint8", "mean", "sd", "all_rmax", "all_mi", "all_ma",
             "mi", "ma", "rmax", "nc", "nz", "nt", "c", "z", "t", "x", "y", "fn", "pixel_size"]
SPLITS = ("train", "valid")
LIVE_DIR = "live"


def source_dirs(sources: Sequence[Path], only: Optional[Sequence[str]] = None,
                skip: Optional[Sequence[str]] = None) -> List[Path]:
    """Category folders of every SRC, filtered by --only/--skip; each must hold train and valid."""
    if only and skip:
        fail(None, "use --only or --skip, not both")
    if not sources:
        fail(None, "give at least one source folder (SRC holding <category>/{train,valid}/)")
    cats = []
    for src in map(Path, sources):
        found = _categories(src)
        cats += [p for p in found if (not only or p.name in only) and not (skip and p.name in skip)]
    if not cats:
        fail(None, f"no category left after --only/--skip in {', '.join(map(str, sources))}")
    for cat in cats:
        missing = [s for s in SPLITS if not (cat / s).is_dir()]
        if missing:
            fail(cat, f"category has no {' or '.join(missing)} folder (expected {cat.name}/train and {cat.name}/valid)")
    return cats


def _categories(src: Path) -> List[Path]:
    """The category folders of one SRC, with an error that says what SRC is when it has none."""
    if src.is_file():
        fail(src, "is a file; SRC must be a folder holding <category>/{train,valid}/ sub-folders")
    if not src.is_dir():
        fail(src, "source folder does not exist")
    if all((src / s).is_dir() for s in SPLITS) and not (src / "train" / "train").is_dir():
        fail(src, f"holds train/ and valid/ itself: it is a category; give its parent folder ({src.parent})")
    entries = [p for p in src.iterdir() if not p.name.startswith(".")]
    found = sorted(p for p in entries if p.is_dir())
    if not found and entries:
        fail(src, f"holds {len(entries)} file(s) but no category folders; expected "
                  "<category>/{train,valid}/<images> (move the images into e.g. SRC/mycat/train)")
    if not found:
        fail(src, "source folder is empty; expected <category>/{train,valid}/ sub-folders")
    return found


def _channels(src: Source, channel: Union[int, str, Sequence[int]]) -> List[int]:
    if isinstance(channel, str) and channel.lower() == "all":
        return list(range(src.nc))
    chans = [channel] if isinstance(channel, (int, np.integer)) else list(channel)
    bad = [c for c in chans if not 0 <= int(c) < src.nc]
    if bad:
        fail(src.path, f"channel {bad[0]} does not exist (file has {src.nc} channel(s))")
    return [int(c) for c in chans]


def frame_rows(src: Source, category: str, dsplit: str,
               channel: Union[int, str, Sequence[int]] = 0, max_pixels: int = MAX_PCT_PIXELS) -> Iterator[dict]:
    """Rows for every (c, z, t) frame of an open source, with file-wide statistics filled in."""
    rows, pooled = [], []
    n = len(_channels(src, channel)) * src.nz * src.nt
    thin = max(1, math.ceil(math.sqrt(n)))  # keeps the pooled subsample under MAX_PCT_PIXELS
    rmax = float(np.iinfo(src.dtype).max)
    for c in _channels(src, channel):
        for z in range(src.nz):
            for t in range(src.nt):
                x = src.sample(c, z, t, max_pixels)
                mi, ma = np.percentile(x, (PCT_LO, PCT_HI))
                pooled.append(x[::thin, ::thin].ravel())
                rows.append(dict(category=category, dsplit=dsplit, multi=int(src.nz * src.nt > 1), ftype=src.ftype,
                                 uint8=bool(src.dtype == np.uint8), mean=float(x.mean()), sd=float(x.std()),
                                 frame_max=float(x.max()), mi=float(mi), ma=float(ma), rmax=rmax,
                                 nc=src.nc, nz=src.nz, nt=src.nt, c=c, z=z, t=t, x=src.nx, y=src.ny,
                                 fn=str(src.path), pixel_size=src.pixel_size))
    all_mi, all_ma = np.percentile(np.concatenate(pooled), (PCT_LO, PCT_HI))
    all_rmax = max(r.pop("frame_max") for r in rows)
    for r in rows:
        r.update(all_rmax=all_rmax, all_mi=float(all_mi), all_ma=float(all_ma))
        yield r


def file_rows(path: Path, category: str, dsplit: str, live: bool,
              channel: Union[int, str, Sequence[int]] = 0) -> List[dict]:
    """All frame rows of one file (PSSRError for a bad file)."""
    with open_source(path, live=live) as src:
        return list(frame_rows(src, category, dsplit, channel))


def _split_files(cat: Path) -> Iterable[tuple]:
    for dsplit in SPLITS:
        for p in sorted((cat / dsplit).iterdir()):
            if (p.is_file() or is_zarr(p)) and not p.name.startswith("."):
                yield dsplit, p


def build_info(sources: Sequence[Path], only: Optional[Sequence[str]] = None, skip: Optional[Sequence[str]] = None,
               channel: Union[int, str, Sequence[int]] = 0) -> pd.DataFrame:
    """The info table for all source folders; a bad file is warned about, skipped and counted."""
    cats = source_dirs(sources, only, skip)
    jobs = [(cat, dsplit, p) for cat in cats for dsplit, p in _split_files(cat)]
    for cat in cats:
        empty = [s for s in SPLITS if not any(c == cat and d == s for c, d, _ in jobs)]
        if len(empty) == len(SPLITS) and jobs:  # none anywhere fails below
            warn(cat, "empty category (no files in train/ or valid/); it is left out")
        elif empty:
            warn(cat, f"category has no files in {empty[0]}/; step 2 can draw no {empty[0]} tiles from it")
    if not jobs:
        fail(None, f"no files under {', '.join(str(c) for c in cats)}/{{train,valid}}")
    rows, bad = [], 0
    for cat, dsplit, p in progress(jobs, label="files"):
        try:
            rows += file_rows(p, cat.name, dsplit, live=cat.parent.name == LIVE_DIR, channel=channel)
        except PSSRError as e:
            warn_skip(p, str(e).removeprefix(f"{p}: "))
            bad += 1
    if not rows:
        fail(None, f"none of the {len(jobs)} files could be read")
    df = pd.DataFrame(rows, columns=INFO_COLS)
    df.attrs.update(n_files=len(jobs) - bad, n_bad=bad)
    return df


def check_out(out: Path, force: bool = False) -> None:
    """--out must name a file, and an existing one is replaced only with `force` (checked before scanning too:
    scanning a facility's data can take long)."""
    out = Path(out)
    if out.is_dir():
        fail(out, "is a folder; --out takes the path of the CSV file to write")
    if out.exists() and not force:
        fail(out, "info CSV exists already; pass --force to replace it")


def write_info(df: pd.DataFrame, out: Path, force: bool = False) -> Path:
    """Write the info CSV atomically; refuse to replace an existing one unless `force`."""
    out = Path(out)
    check_out(out, force)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    return out
