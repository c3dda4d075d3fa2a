"""Writing results safely: temporary name then rename, never silent overwrites."""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tifffile

from .errors import fail

__all__ = ["atomic_path", "save_tif", "save_npy", "prepare_out_dir", "tmp_name"]


def tmp_name(dest: Path) -> Path:
    """Hidden sibling of `dest`, so the rename stays on one file system."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(dest: Path) -> None:
    """Delete `dest`'s temporaries left by killed processes (SIGKILL skips the cleanup below)."""
    dest = Path(dest)
    for p in dest.parent.glob(f".{dest.name}.*.tmp"):
        pid = p.name[len(dest.name) + 2:-4]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            p.unlink(missing_ok=True)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to `dest` only if the block finishes.

    An interrupted run then leaves no half-written file under the real name."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(dest)
    tmp = tmp_name(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_tif(dest: Path, arr: np.ndarray, pixel_size: Optional[float] = None,
             axes: Optional[str] = None, **kwargs) -> Path:
    """Write an ImageJ-compatible TIFF atomically; `pixel_size` in micrometres per pixel."""
    extra = {}
    if pixel_size:
        extra["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
    imagej = arr.dtype in (np.uint8, np.uint16, np.float32)
    meta = {}
    if imagej:
        meta = {"unit": "um"} if pixel_size else {}
        if axes:
            meta["axes"] = axes
    with atomic_path(dest) as tmp:
        tifffile.imwrite(tmp, arr, imagej=imagej, metadata=meta if imagej else None, **extra, **kwargs)
    return Path(dest)


def save_npy(dest: Path, arr: np.ndarray) -> Path:
    """Write a `.npy` atomically (np.save would append `.npy` to the temporary name)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    return Path(dest)


def prepare_out_dir(path: Path, clean: bool = False, what: str = "output", flag: str = "--clean") -> Path:
    """Create `path`; refuse if it already holds results, unless `clean` removes them first."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not clean:
            fail(path, f"{what} exists already; pass {flag} to replace it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
