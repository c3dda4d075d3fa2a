"""A tiny data set in the step-2 contract layout, written directly (no dependency on tile_from_info.py)."""
import json
from pathlib import Path

import numpy as np

from utils.fileio import save_npy, save_tif
from utils.norm import to_uint8


def structure(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth blobs and thin ridges in [0,1]: enough structure for a few epochs to beat bilinear."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    img = np.zeros((n, n), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, n, 2).tolist() + [rng.uniform(1.5, n / 8)]
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    for _ in range(3):
        a, c = rng.uniform(0, np.pi), rng.uniform(0, n)
        img += 0.8 * np.exp(-((np.cos(a) * xx + np.sin(a) * yy - c) ** 2) / 2.0)
    return np.clip(img / img.max(), 0, 1)


def downsample(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[-2] // scale, img.shape[-1] // scale
    return img[..., :h * scale, :w * scale].reshape(*img.shape[:-2], h, scale, w, scale).mean(axis=(-3, -1))


def make_dataset(root: Path, name: str = "s_1_tiny_new_crap_AG_SP", tile: int = 64, scale: int = 4,
                 n_train: int = 16, n_valid: int = 4, n_frames: int = 1, lr_type: str = "s", seed: int = 0,
                 crap_func: str = "new_crap_AG_SP") -> Path:
    """Write `{root}/{name}/hr_{lr_type}_{tile}{multi}/...` and `lr_...`; returns the data set folder."""
    rng = np.random.default_rng(seed)
    multi = f"_{lr_type}_{n_frames}" if lr_type != "s" else ""
    ds = Path(root) / name
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            frames = np.stack([structure(rng, tile) for _ in range(n_frames)])
            hr = frames[n_frames // 2]
            rel = Path(split) / "cat" / f"{i:06d}_img.tif"
            save_tif(ds / f"hr_{lr_type}_{tile}{multi}" / rel, to_uint8(hr))
            lr = to_uint8(downsample(frames, scale) + rng.normal(0, 0.02, (n_frames, tile // scale, tile // scale)))
            if n_frames == 1:
                save_tif(ds / f"lr_{lr_type}_{tile}{multi}" / rel, lr[0])
            else:
                save_npy(ds / f"lr_{lr_type}_{tile}{multi}" / rel.with_suffix(".npy"), lr)
    (ds / "dataset.json").write_text(json.dumps({
        "scale": scale, "tile": tile, "n_frames": n_frames, "lr_type": lr_type, "crap_func": crap_func,
        "upsample": False, "seed": seed, "norm": {"lo": 2.0, "hi": 99.99}}))
    return ds
