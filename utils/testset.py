"""Test pairs for steps 4-5: LR inputs made from high-resolution test images with a crappifier.

    python -m utils.testset SRC OUT [--split valid] [--crap_func new_crap_AG_SP] [--scale 4] [--seed 0]

For every image under SRC (only those inside a `--split` folder, e.g. the sample
data's `valid`), writes OUT/gt/<relative path> (the HR image cropped to a multiple
of the scale, so restorations and ground truth have the same size) and
OUT/lr/<relative path> (normalized to the 2/99.99 percentiles of the whole
stack, so brightness changes between frames survive as they do in training
stacks, crappified exactly like the training tiles, stored as uint8 like the LR
tiles, pixel size x scale). Images are processed whole: test images are small; large
real acquisitions come in LR already and need no crappifying.
"""
from pathlib import Path
from typing import Optional

import numpy as np

from .crappifiers import crappify
from .errors import PSSRError, fail, run_cli, warn_skip
from .fileio import prepare_out_dir, save_tif
from .norm import normalize, percentiles, to_uint8
from .sources import Source, find_images, open_source

__all__ = ["read_stack", "make_lr_stack", "make_test_set"]


def read_stack(src: Source) -> np.ndarray:
    """All frames as (T, Z, C, Y, X), ImageJ order."""
    return np.stack([np.stack([np.stack([src.read(c, z, t) for c in range(src.nc)]) for z in range(src.nz)])
                     for t in range(src.nt)])


def make_lr_stack(hr: np.ndarray, crap_func: str, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Crappify every (Y, X) frame of a (T, Z, C, Y, X) `hr` after one percentile normalization per channel
    over all its time points and slices; uint8 out."""
    norms = [percentiles(hr[:, :, c]) for c in range(hr.shape[2])]
    lr = np.stack([np.stack([np.stack([to_uint8(crappify(crap_func, normalize(hr[t, z, c], *norms[c]), scale, rng))
                                       for c in range(hr.shape[2])]) for z in range(hr.shape[1])])
                   for t in range(hr.shape[0])])
    return lr


def _axes(shape) -> str:
    return "".join(a for a, n in zip("TZC", shape[:3]) if n > 1) + "YX"


def make_test_set(src: Path, out: Path, split: Optional[str] = "valid", crap_func: str = "new_crap_AG_SP",
                  scale: int = 4, seed: int = 0, clean: bool = False, live: Optional[bool] = None) -> int:
    """Write OUT/gt and OUT/lr pairs (see module docstring); returns the number of images.

    live: unlabelled stack pages are time points (default: when the path has a `live` folder, as step 1)."""
    src, out = Path(src), Path(out)
    files = [p for p in find_images(src, recursive=True) if split is None or split in p.relative_to(src).parts[:-1]]
    if not files:
        fail(src, f"no images{f' inside a {split!r} folder' if split else ''}")
    prepare_out_dir(out, clean, "test set folder")
    rng = np.random.default_rng(seed)
    n = 0
    for p in files:
        rel = p.relative_to(src)
        try:
            with open_source(p, live="live" in p.parts if live is None else live) as s:
                hr, px = read_stack(s), s.pixel_size
        except PSSRError as e:
            warn_skip(p, str(e).removeprefix(f"{p}: "))
            continue
        ny, nx = (hr.shape[-2] // scale) * scale, (hr.shape[-1] // scale) * scale
        hr = hr[..., :ny, :nx]
        lr = make_lr_stack(hr, crap_func, scale, rng)
        axes = _axes(hr.shape)
        keep = tuple(i for i, n_ in enumerate(hr.shape[:3]) if n_ > 1)
        squeeze = lambda a: a.reshape(*[a.shape[i] for i in keep], *a.shape[-2:])
        save_tif(out / "gt" / rel.with_suffix(".tif"), squeeze(hr), px, axes=axes)
        save_tif(out / "lr" / rel.with_suffix(".tif"), squeeze(lr), px * scale if px else None, axes=axes)
        n += 1
    return n


def main(src: str, out: str, split: Optional[str] = "valid", crap_func: str = "new_crap_AG_SP", scale: int = 4,
         seed: int = 0, clean: bool = False, live: Optional[bool] = None) -> None:
    """Make LR test inputs (OUT/lr) and matching ground truth (OUT/gt) from the HR images under SRC."""
    n = make_test_set(Path(src), Path(out), split or None, crap_func, scale, seed, clean, live)
    print(f"wrote {n} ground-truth/LR test pair(s) under {out} ({crap_func}, x{scale}, seed {seed})")


if __name__ == "__main__":
    run_cli(main)
