"""Crappify on the fly: training pairs drawn fresh from HR tiles every time a tile is visited.

A fixed data set gives each LR tile one noise draw for the whole training, and augmenting an
already-crappified LR tile (rotation, zoom) resamples its noise into something smoother than any
real scan. Here the HR tile is augmented first (dihedral flip, optional rotation/zoom, random crop)
and only then crappified, with a generator seeded by (seed, epoch, tile): the LR always has exactly
the crappifier's statistics, the noise never repeats, and the same seed gives the same run.

Items are HR tiles of a step-2 data set: `hr_*` `.tif` tiles (one frame), or `hrs_*` `.npy` stacks
(n_frames x h x w, from `tile_from_info.py --hr_only` with `--n_frames 5`) whose centre frame is the
target and whose frames are each crappified, as the paper's multi-frame pairs (Methods); a share
`data.EDGE_P` of them as the windows of a movie's first or last frames (`data.edge_window`).
"""
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader

from .crappifiers import draw_bandwidth, draw_clean, draw_counts, draw_strength, probe_blur, scan_lr
from .data import EDGE_P, affine_crop, dihedral, dihedral_matrix, edge_window, read_tile
from .norm import to_uint8

__all__ = ["read_hr_stack", "augment_hr", "Draws", "noise_free", "FreshPairs", "SetDrawEpoch", "make_fly_dls"]


def read_hr_stack(path: Path, n_frames: int) -> np.ndarray:
    """HR tile as float32 (n_frames, H, W) in [0, 1]: a `.tif` frame, or a `.npy` stack of frames."""
    return read_tile(path, n_frames, "HR").astype(np.float32) / 255


def augment_hr(hr: np.ndarray, size: int, rng: np.random.Generator, max_rotate: float = 0.0,
               max_zoom: float = 1.0, p_affine: float = 0.75) -> np.ndarray:
    """One random dihedral flip and `size` crop of all frames, with rotation/zoom (bilinear) on the HR only."""
    k = int(rng.integers(8))
    angle = float(rng.uniform(-max_rotate, max_rotate)) if max_rotate and rng.random() < p_affine else 0.0
    zoom = float(rng.uniform(1.0, max_zoom)) if max_zoom > 1 and rng.random() < p_affine else 1.0
    h, w = hr.shape[-2:]
    if angle == 0.0 and zoom == 1.0:
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        return np.ascontiguousarray(dihedral(torch.from_numpy(hr[:, y:y + size, x:x + size]), k).numpy())
    a = math.radians(angle)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    half = size / w / zoom
    room = max(0.0, 1.0 - half * (abs(math.cos(a)) + abs(math.sin(a))))
    centre = torch.tensor([rng.uniform(-room, room), rng.uniform(-room, room)], dtype=torch.float32)
    theta = torch.cat([rot @ dihedral_matrix(k) * half, centre[:, None]], dim=1)
    return affine_crop(torch.from_numpy(hr), theta, size).clamp(0, 1).numpy()


def centre_crop(hr: np.ndarray, size: int) -> np.ndarray:
    y, x = (hr.shape[-2] - size) // 2, (hr.shape[-1] - size) // 2
    return hr[:, y:y + size, x:x + size]


@dataclass(frozen=True)
class Draws:
    """How every pair is drawn from an HR tile (train.py's --crap_func, --crap_strength, --crap_blur,
    --crap_bandwidth(_share), --crap_counts(_share), --crap_clean_share, --max_rotate, --max_zoom and --seed):
    one object, so the training pairs, their loaders and a pickled learner agree."""
    crap_func: str
    scale: int = 4
    strength: Tuple[float, float] = (1.0, 1.0)  # noise level range (crappifiers.draw_strength)
    seed: int = 0
    max_rotate: float = 0.0  # HR rotation/zoom before crappifying (training pairs only; validation pairs
    max_zoom: float = 1.0    # are centre crops)
    blur: Tuple[float, float] = (0.0, 0.0)  # probe blur sigma range in HR px, drawn uniformly per stack
    bandwidth: Tuple[float, float] = (0.0, 0.0)  # detector smoothing along x, sigma range in LR px, per stack
    bandwidth_share: float = 1.0  # the share of stacks that get it (the rest white, as the paper)
    counts: Tuple[float, float] = (0.0, 0.0)  # shot noise per LR pixel: counts for white, range, per stack
    counts_share: float = 1.0  # the share of stacks that get it (the rest none, as the paper)
    clean_share: float = 0.0  # the share of stacks crappified without noise (strength 0, no shot noise)


def noise_free(draws: Draws) -> Draws:
    """The same draws without noise (strength 0, no shot noise): the cleanest LR a scan gives."""
    return replace(draws, strength=(0.0, 0.0), counts=(0.0, 0.0))


class FreshPairs:
    """Indexable (lr, hr) pairs crappified at every draw; `epoch` (set by `SetDrawEpoch`) picks the draw.

    Validation pairs (`train=False`) are centre crops with one fixed draw per tile, so epochs compare.
    All frames of a stack share one noise strength (one acquisition) but get their own noise."""

    def __init__(self, items: Sequence[Path], n_frames: int, size: int, draws: Draws, train: bool = True):
        self.items, self.n_frames, self.size, self.draws, self.train = list(items), n_frames, size, draws, train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def rng(self, i: int) -> np.random.Generator:
        epoch = self.epoch if self.train else 0
        return np.random.default_rng(np.random.SeedSequence(self.draws.seed, spawn_key=(2, int(self.train), epoch, i)))

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng, d = self.rng(i), self.draws
        hr = read_hr_stack(self.items[i], self.n_frames)
        if self.train:
            hr = augment_hr(hr, self.size, rng, d.max_rotate, d.max_zoom)
        else:
            hr = centre_crop(hr, self.size)
        s = draw_strength(rng, *d.strength)
        src = probe_blur(hr, float(rng.uniform(*d.blur))) if d.blur[1] > 0 else hr  # no draw: old seeds hold
        bw = draw_bandwidth(rng, d.bandwidth, d.bandwidth_share)
        n = draw_counts(rng, d.counts, d.counts_share)
        if draw_clean(rng, d.clean_share):  # no coin at share 0: old seeds keep their pairs
            s, n = 0.0, 0.0
        # LR is stored as uint8 like real 8-bit scans and step-2 tiles, so both paths see the same quantization.
        lr = np.stack([to_uint8(scan_lr(d.crap_func, f, d.scale, rng, s, n, bw)) for f in src]).astype(np.float32) / 255
        if self.train and self.n_frames > 1 and rng.random() < EDGE_P:
            lr = edge_window(lr, rng)
        c = self.n_frames // 2
        return torch.from_numpy(lr), torch.from_numpy(np.ascontiguousarray(hr[c:c + 1]))

    def new_empty(self) -> "FreshPairs":
        """For `learn.export()`, which pickles the loaders without their items."""
        return FreshPairs([], self.n_frames, self.size, self.draws, self.train)


class SetDrawEpoch(Callback):
    """Tell the training pairs which epoch it is, so each epoch draws new noise and augmentation
    (and a resumed run redraws exactly what the interrupted one would have)."""
    order = -10

    def before_epoch(self):
        ds = getattr(self.dls.train, "dataset", None)
        if isinstance(ds, FreshPairs):
            ds.epoch = self.epoch


def make_fly_dls(train: List[Path], valid: List[Path], n_frames: int, size: int, draws: Draws, bs: int,
                 workers: int = 0, device: str = "cpu") -> DataLoaders:
    """fastai DataLoaders of fresh pairs (train shuffled and augmented, valid fixed centre crops)."""
    tr = FreshPairs(train, n_frames, size, draws, train=True)
    va = FreshPairs(valid, n_frames, size, draws, train=False)
    dl_tr = DataLoader(tr, bs=bs, shuffle=True, drop_last=len(tr) >= bs, num_workers=workers, device=device)
    dl_va = DataLoader(va, bs=bs, shuffle=False, num_workers=workers, device=device)
    return DataLoaders(dl_tr, dl_va, device=device)
