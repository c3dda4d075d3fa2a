"""LR/HR tile pairs from a `tile_from_info.py` data set, as fastai DataLoaders with paired augmentation.

Layout (the step-2 contract): `{data_path}/{datasetname}/hr_{lr_type}_{tile}{multi}/{train,valid}/{cat}/NAME.tif`
and `lr_{lr_type}_{tile}{multi}/.../NAME.tif` (single frame) or `NAME.npy` (n_frames x h x w).
"""
import json
import math
import random
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from fastai.data.core import Datasets, DataLoaders
from fasttransform import ItemTransform

from .errors import PSSRError, fail
from .restore import dihedral, frame_windows  # one definition each, shared with inference
from .norm import PCT_HI, PCT_LO

__all__ = ["DataSpec", "find_dataset", "find_hr_tiles", "hr_dir_name", "read_tile", "read_lr", "read_hr", "PairedAugment",
           "CentreCrop", "make_dls", "edge_window", "EDGE_P", "MAX_ROTATE", "MAX_ZOOM"]

# The original's get_xy_transforms default rotation. Its train.py passes max_zoom=4, which magnifies the
# crop up to 4x and so changes the pixel size the network learns; the paper only says "random zoom"
# (Methods, Data Augmentation), so we keep the mild 1.1 of the original get_data default. They apply
# where the HR is augmented before crappifying (train.py --crap_func); pre-made pairs default to flips and
# whole-pixel crops, because rotating/zooming a crappified LR tile resamples its noise into something
# smoother than any real scan (measured on real EM: validation PSNR fell from 18.58 to 18.44 dB with it).
MAX_ROTATE, MAX_ZOOM = 10.0, 1.1


def multi_str(lr_type: str, n_frames: int) -> str:
    return f"_{lr_type}_{n_frames}" if lr_type != "s" else ""


class DataSpec:
    """Where a data set lives and what `dataset.json` says about it (scale, crappifier, normalization)."""

    def __init__(self, root: Path, lr_dir: Path, hr_dir: Path, info: dict, pairs: dict, scale: int, tile: int):
        self.root, self.lr_dir, self.hr_dir, self.info = root, lr_dir, hr_dir, info
        self.pairs, self.scale, self.tile = pairs, scale, tile

    @property
    def norm(self) -> dict:
        return self.info.get("norm", {"lo": PCT_LO, "hi": PCT_HI})

    @property
    def crap_func(self) -> Optional[str]:
        return self.info.get("crap_func")


def read_info(root: Path) -> dict:
    f = root / "dataset.json"
    if not f.exists():
        fail(f, "missing: tile_from_info.py writes it last, so this data set is incomplete; re-run it")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        fail(f, f"unreadable data set description ({e})")


def check_crap_func(root: Path, name: Optional[str]) -> None:
    """The data set must name a crappifier this code knows, so the model's metadata means something."""
    from .crappifiers import CRAPPIFIERS
    if name is not None and name not in CRAPPIFIERS:
        fail(root / "dataset.json", f"unknown crappifier '{name}'; known: {', '.join(sorted(CRAPPIFIERS))}")


def list_pairs(lr_dir: Path, hr_dir: Path, split: str, lr_ext: str) -> List[Tuple[Path, Path]]:
    """(lr, hr) paths of one split; every LR needs its HR and vice versa, or the data set is broken."""
    lrs = sorted((lr_dir / split).rglob(f"*{lr_ext}"))
    hrs = sorted((hr_dir / split).rglob("*.tif"))
    lr_rel = {p.relative_to(lr_dir).with_suffix(".tif") for p in lrs}
    hr_rel = {p.relative_to(hr_dir) for p in hrs}
    if lr_rel != hr_rel:
        only_lr, only_hr = sorted(lr_rel - hr_rel), sorted(hr_rel - lr_rel)
        first = (lr_dir / only_lr[0]).with_suffix(lr_ext) if only_lr else hr_dir / only_hr[0]
        fail(first, f"LR/HR tiles do not pair: {len(only_lr)} LR without HR, {len(only_hr)} HR without LR "
                    f"in {split}/ (same relative names expected)")
    return [(p, hr_dir / p.relative_to(lr_dir).with_suffix(".tif")) for p in lrs]


def read_tile(path: Path, n_frames: int, what: str = "LR") -> np.ndarray:
    """A step-2 tile as uint8 (n_frames, h, w): a `.tif` frame or a `.npy` stack of frames."""
    path = Path(path)
    try:
        a = np.load(path) if path.suffix == ".npy" else tifffile.imread(path)
    except Exception as e:
        raise PSSRError(f"{path}: unreadable {what} tile ({type(e).__name__})") from None
    a = a[None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[0] != n_frames or a.dtype != np.uint8:
        fail(path, f"{what} tile is {a.dtype} {a.shape}, expected uint8 with {n_frames} frame(s)")
    return a


def read_lr(path: Path, n_frames: int) -> np.ndarray:
    """LR tile as uint8 (n_frames, h, w)."""
    return read_tile(path, n_frames, "LR")


def read_hr(path: Path) -> np.ndarray:
    """HR tile as uint8 (1, H, W)."""
    try:
        a = tifffile.imread(path)
    except Exception as e:
        raise PSSRError(f"{path}: unreadable HR tile ({type(e).__name__})") from None
    if a.ndim != 2:
        fail(path, f"HR tile must be 2D, has shape {a.shape}")
    return a[None]


def lr_shape(path: Path) -> tuple:
    """Shape without reading pixels (npy header / tiff page), so checking thousands of tiles stays cheap."""
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r").shape
        with tifffile.TiffFile(path) as t:
            return t.series[0].shape
    except Exception as e:
        raise PSSRError(f"{path}: unreadable tile ({type(e).__name__}: {str(e)[:80]})") from None


def check_pairs(pairs: List[Tuple[Path, Path]], n_frames: int, size: int, scale: Optional[int]) -> Tuple[int, int]:
    """(scale, HR tile) from the tiles; every tile's header is checked (cheap), so one odd tile fails here,
    naming itself, instead of mid-epoch in a collate traceback."""
    lr0, hr0 = pairs[0]
    hs, ls = lr_shape(hr0), lr_shape(lr0)
    sc = scale or round(hs[-1] / ls[-1])
    want_lr = (n_frames, hs[-2] // sc, hs[-1] // sc) if n_frames > 1 else (hs[-2] // sc, hs[-1] // sc)
    if hs[-1] != ls[-1] * sc or hs[-2] != ls[-2] * sc:
        fail(lr0, f"LR tile {ls[-2:]} is not HR tile {hs[-2:]} / scale {sc}")
    for lr, hr in pairs:
        s = lr_shape(lr)
        depth = s[0] if len(s) == 3 else 1
        if depth != n_frames:
            fail(lr, f"LR tile has {depth} frame(s) but --n_frames is {n_frames}")
        if tuple(s) != want_lr:
            fail(lr, f"LR tile has shape {tuple(s)}, the data set's others {want_lr}")
        if tuple(lr_shape(hr)) != tuple(hs):
            fail(hr, f"HR tile has shape {tuple(lr_shape(hr))}, the data set's others {tuple(hs)}")
    if min(hs[-2:]) < size:
        fail(hr0, f"tiles are {hs[-2]}x{hs[-1]} (LR {ls[-2]}x{ls[-1]}), smaller than --size {size} "
                  f"(LR {size // sc}); use a larger --tile_sz data set or a smaller --size")
    return sc, hs[-1]


def dataset_dir(data_path: Path, datasetname: str) -> Path:
    """`{data_path}/{datasetname}`, which must exist; the error lists the data sets that do."""
    root = Path(data_path) / datasetname
    if not root.is_dir():
        have = sorted(p.name for p in Path(data_path).iterdir() if p.is_dir()) if Path(data_path).is_dir() else []
        fail(root, f"data set not found; data sets in {data_path}: {', '.join(have) or 'none'}")
    return root


def hr_dir_name(lr_type: str, tile_sz: int, n_frames: int) -> str:
    """HR tiles usable for on-the-fly crappifying: `hr_` frames (one frame), `hrs_` stacks (n_frames)."""
    return f"hr_{lr_type}_{tile_sz}" if n_frames == 1 else f"hrs_{lr_type}_{tile_sz}{multi_str(lr_type, n_frames)}"


def find_hr_tiles(data_path: Path, datasetname: str, lr_type: str, tile_sz: int, n_frames: int,
                  size: int) -> DataSpec:
    """HR tiles of a data set for `train.py --crap_func` (an `--hr_only` data set, or the `hr_` tiles of a
    paired one); `pairs` then hold (None, hr) and `scale` comes from dataset.json."""
    root = dataset_dir(data_path, datasetname)
    info = read_info(root)
    hr_dir = root / hr_dir_name(lr_type, tile_sz, n_frames)
    ext = ".tif" if n_frames == 1 else ".npy"
    pairs = {}
    for split in ("train", "valid"):
        files = sorted((hr_dir / split).rglob(f"*{ext}"))
        if not files:
            how = "" if n_frames == 1 else " (multi-frame HR stacks come from tile_from_info.py --hr_only)"
            fail(hr_dir / split, f"no {ext} HR tiles for --tile_sz {tile_sz} --n_frames {n_frames}{how}")
        pairs[split] = [(None, f) for f in files]
    for _, f in pairs["train"] + pairs["valid"]:
        shape = lr_shape(f)
        if len(shape) != (2 if n_frames == 1 else 3) or (n_frames > 1 and shape[0] != n_frames):
            fail(f, f"HR tile has shape {shape}; expected {n_frames} frame(s)")
        if min(shape[-2:]) < size:
            fail(f, f"HR tile is {shape[-2]}x{shape[-1]}, smaller than --size {size}")
    scale = int(info.get("scale", 4))
    if size % scale:
        fail(None, f"--size {size} must be a multiple of the data set's scale {scale}")
    return DataSpec(root, None, hr_dir, info, pairs, scale, tile_sz)


def find_dataset(data_path: Path, datasetname: str, lr_type: str, tile_sz: int, n_frames: int,
                 size: int) -> DataSpec:
    """Locate and check a data set; every problem is a one-line PSSRError naming the path."""
    root = dataset_dir(data_path, datasetname)
    multi = multi_str(lr_type, n_frames)
    hr_dir, lr_dir = root / f"hr_{lr_type}_{tile_sz}{multi}", root / f"lr_{lr_type}_{tile_sz}{multi}"
    for d in (hr_dir, lr_dir):
        for split in ("train", "valid"):
            if not (d / split).is_dir():
                fail(d / split, f"missing data set folder (--lr_type {lr_type}, --tile_sz {tile_sz}, "
                                f"--n_frames {n_frames} expect this layout)")
    info = read_info(root)
    check_crap_func(root, info.get("crap_func"))
    lr_ext = ".tif" if n_frames == 1 else ".npy"
    pairs = {s: list_pairs(lr_dir, hr_dir, s, lr_ext) for s in ("train", "valid")}
    for s, p in pairs.items():
        if not p:
            fail(lr_dir / s, f"no {lr_ext} LR tiles")
    scale, tile = check_pairs(pairs["train"] + pairs["valid"], n_frames, size, info.get("scale"))
    if size % scale:
        fail(None, f"--size {size} must be a multiple of the data set's scale {scale}")
    return DataSpec(root, lr_dir, hr_dir, info, pairs, scale, tile)


def dihedral_matrix(k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square as a 2x2 matrix (k: bit0 flip x, bit1 flip y, bit2 transpose)."""
    m = torch.diag(torch.tensor([-1.0 if k & 1 else 1.0, -1.0 if k & 2 else 1.0]))
    return m.flip(1) if k & 4 else m


def affine_crop(x: torch.Tensor, theta: torch.Tensor, out: int) -> torch.Tensor:
    grid = F.affine_grid(theta[None], [1, x.shape[0], out, out], align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


# One training stack in five: the share of first/last frames' windows in a movie of a few frames.
EDGE_P = 0.2


def edge_window(lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`lr` (n_frames, h, w) as the window of a movie's first or last frame: the frames beyond the movie's
    edge repeat the edge frame, as `restore.frame_windows` gives them at inference (the same acquisition
    repeated). Only the edge frame itself: the next one in (0,0,1,2,3) lost nothing to the 1-frame model
    untrained, while the edge frame, trained on interior windows only, scored 2 dB below it on a held-out
    movie; half of EDGE_P for each of the two cases left it 0.7-1.5 dB below on nearly clean LR, all of it
    0.7 (synthetic time-lapse, 20 min CPU)."""
    n = lr.shape[0]
    t = 0 if rng.random() < 0.5 else n - 1  # the first or last frame of an n-frame movie
    idx = np.array(frame_windows(n, n)[t][1]) - t + n // 2  # its window, recentred on the stack's centre
    return lr[torch.from_numpy(idx)] if isinstance(lr, torch.Tensor) else lr[idx]


class PairedAugment(ItemTransform):
    """Training augmentation of an (lr, hr) pair with ONE random draw applied to both at their own scales.

    Dihedral flip, rotation up to `max_rotate` degrees, zoom in [1, max_zoom] and a random crop to `size` (HR) /
    `size // scale` (LR). The affine matrix is written in normalized coordinates (align_corners=False), where an
    LR pixel covers exactly `scale` HR pixels, so one matrix maps both images onto the same field of view.
    Without rotation/zoom the crop offset is a whole LR pixel, so pairs stay pixel-exact. A share `EDGE_P` of
    multi-frame stacks become the window of a movie's first or last frames (`edge_window`)."""
    split_idx = 0

    def __init__(self, size: int, scale: int, max_rotate: float = MAX_ROTATE, max_zoom: float = MAX_ZOOM,
                 p_affine: float = 0.75):
        super().__init__()
        self.size, self.scale, self.p_affine = size, scale, p_affine
        self.max_rotate, self.max_zoom = max_rotate, max_zoom

    def encodes(self, pair):
        lr, hr = pair
        k = random.randrange(8)
        angle = random.uniform(-self.max_rotate, self.max_rotate) if random.random() < self.p_affine else 0.0
        zoom = random.uniform(1.0, self.max_zoom) if random.random() < self.p_affine else 1.0
        if lr.shape[0] > 1 and random.random() < EDGE_P:
            lr = edge_window(lr, np.random.default_rng(random.getrandbits(32)))
        lsz = self.size // self.scale
        if angle == 0.0 and zoom == 1.0:
            y, x = (random.randint(0, lr.shape[-2] - lsz), random.randint(0, lr.shape[-1] - lsz))
            s = self.scale
            return (dihedral(lr[:, y:y + lsz, x:x + lsz], k),
                    dihedral(hr[:, y * s:(y + lsz) * s, x * s:(x + lsz) * s], k))
        a = math.radians(angle)
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        half = self.size / hr.shape[-1] / zoom  # half-width of the crop in normalized input units
        m = rot @ dihedral_matrix(k) * half
        room = max(0.0, 1.0 - half * (abs(math.cos(a)) + abs(math.sin(a))))
        centre = torch.tensor([random.uniform(-room, room), random.uniform(-room, room)])
        theta = torch.cat([m, centre[:, None]], dim=1)
        return affine_crop(lr, theta, lsz), affine_crop(hr, theta, self.size)


class CentreCrop(ItemTransform):
    """Validation: the same centre crop of every pair, no augmentation, so epochs are comparable."""
    split_idx = 1

    def __init__(self, size: int, scale: int):
        super().__init__()
        self.size, self.scale = size, scale

    def encodes(self, pair):
        lr, hr = pair
        lsz = self.size // self.scale
        y, x = (lr.shape[-2] - lsz) // 2, (lr.shape[-1] - lsz) // 2
        s = self.scale
        return lr[:, y:y + lsz, x:x + lsz], hr[:, y * s:(y + lsz) * s, x * s:(x + lsz) * s]


class LoadLR:
    """LR path -> float tensor in [0,1]; a class (not a closure) so the fastai export pickles it."""

    def __init__(self, n_frames: int):
        self.n_frames = n_frames

    def __call__(self, lr: Path) -> torch.Tensor:
        return torch.from_numpy(read_lr(lr, self.n_frames).astype(np.float32) / 255)


class LoadHR:
    """LR path -> its HR partner (same relative name, .tif) as a float tensor in [0,1]."""

    def __init__(self, lr_dir: Path, hr_dir: Path):
        self.lr_dir, self.hr_dir = Path(lr_dir), Path(hr_dir)

    def __call__(self, lr: Path) -> torch.Tensor:
        hr = self.hr_dir / Path(lr).relative_to(self.lr_dir).with_suffix(".tif")
        return torch.from_numpy(read_hr(hr).astype(np.float32) / 255)


def make_dls(spec: DataSpec, n_frames: int, size: int, bs: int, workers: int = 0, device: str = "cpu",
             max_rotate: float = 0.0, max_zoom: float = 1.0) -> DataLoaders:
    """fastai DataLoaders over the pairs (train shuffled + augmented, valid centre-cropped).

    Built from `Datasets` rather than plain lists so that `learn.export()` can empty and pickle them."""
    items = [lr for lr, _ in spec.pairs["train"] + spec.pairs["valid"]]
    n_train = len(spec.pairs["train"])
    splits = [list(range(n_train)), list(range(n_train, len(items)))]
    dsets = Datasets(items, tfms=[[LoadLR(n_frames)], [LoadHR(spec.lr_dir, spec.hr_dir)]], splits=splits)
    # Tiles hold >= --size pixels, so one valid batch of full tiles could be large: crop valid too.
    after_item = [PairedAugment(size, spec.scale, max_rotate, max_zoom), CentreCrop(size, spec.scale)]
    # Keep the last partial batch when the whole train split is smaller than one batch (tiny data sets).
    return dsets.dataloaders(bs=bs, after_item=after_item, num_workers=workers, device=device,
                             drop_last=n_train >= bs)
