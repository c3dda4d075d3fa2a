"""Seeded synthetic sample data: a small source tree shaped like the real PSSR data.

    python -m utils.sample_data OUT --seed 0

writes (original layout: SRC/<category>/{train,valid}/files, and a SRC folder named
`live` makes an unlabelled TIFF stack's pages time points):

    OUT/fixed/em/train/em_train_0.tif, em_train_1.tif   uint8 2D, 2 nm pixels
    OUT/fixed/em/train/em_zstack.tif                    uint8 z-stack (ImageJ ZYX)
    OUT/fixed/em/valid/em_valid_0.tif                   uint8 2D
    OUT/live/fluo_live/train/fluo_live_train.tif        uint16 time-lapse, zlib, unlabelled pages
    OUT/live/fluo_live/valid/fluo_live_valid.tif        uint16 time-lapse

The images carry the structure a restoration network must learn (EM: thin dark
membranes, vesicles, mitochondria with cristae on grainy cytoplasm; fluorescence:
bright tubular mitochondria drifting and bending over time), so a U-Net trained on
crappified tiles of them beats bilinear upsampling. The `valid` files double as
high-resolution ground truth for steps 4-5.
"""
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import run_cli
from .fileio import atomic_path, prepare_out_dir, save_tif

__all__ = ["em_frame", "fluo_movie", "nuclei_movie", "write_sample_tree", "EM_PIXEL_UM", "FLUO_PIXEL_UM",
           "NUCLEI_PIXEL_UM"]

EM_PIXEL_UM = 0.002    # 2 nm: the paper's high-resolution EM sampling
FLUO_PIXEL_UM = 0.049  # Airyscan-like confocal sampling
NUCLEI_PIXEL_UM = 0.2  # a widefield-to-confocal time-lapse of whole nuclei


def _smooth_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-sd Gaussian-filtered noise: texture at the scale `sigma`."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-12)


def _em_objects(rng: np.random.Generator, size: int) -> Dict[str, np.ndarray]:
    """Random cell layout for one EM scene (shared by the slices of a z-stack)."""
    area = size * size
    n_mito, n_ves = max(3, area // 25000), max(8, area // 2500)
    return dict(
        cells=rng.uniform(0, size, (max(6, area // 8000), 2)),
        cell_drift=rng.normal(0, 3, (max(6, area // 8000), 2)),
        mito=np.column_stack([rng.uniform(0, size, (n_mito, 2)), rng.uniform(0, np.pi, n_mito),
                              rng.uniform(35, 70, n_mito), rng.uniform(12, 20, n_mito)]),
        ves=np.column_stack([rng.uniform(0, size, (n_ves, 2)), rng.uniform(3, 8, n_ves)]),
    )


def em_frame(size: int, rng: np.random.Generator, objects: Optional[dict] = None, z: float = 0.0) -> np.ndarray:
    """One uint8 EM-like frame: light cytoplasm, dark membranes, vesicles, mitochondria.

    `objects` and `z` let consecutive slices of a z-stack share structures that drift."""
    obj = objects if objects is not None else _em_objects(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 0.62 + 0.05 * _smooth_noise((size, size), 40, rng) + 0.015 * _smooth_noise((size, size), 1.2, rng)
    # Cell membranes: Voronoi boundaries, where the two nearest cell centres are equidistant.
    d, _ = cKDTree(obj["cells"] + z * obj["cell_drift"]).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
    gap = (d[:, 1] - d[:, 0]).reshape(size, size)
    img -= 0.35 * np.exp(-(gap / 2.2) ** 2)
    for y, x, ang, length, width in obj["mito"]:  # mitochondria: dark rim, cristae across the long axis
        y, x = y + 2 * z * np.sin(ang), x + 2 * z * np.cos(ang)
        u = (yy - y) * np.sin(ang) + (xx - x) * np.cos(ang)
        v = -(yy - y) * np.cos(ang) + (xx - x) * np.sin(ang)
        r = np.sqrt((u / (length / 2)) ** 2 + (v / (width / 2)) ** 2)
        inside = r < 1
        img[inside] = 0.45 + 0.12 * np.sin(u[inside] * 2 * np.pi / 7.0)
        img -= 0.3 * np.exp(-((r - 1) * width / 3) ** 2)
    for y, x, rad in obj["ves"]:  # vesicles: light lumen, dark membrane ring
        r = np.hypot(yy - y, xx - x + z)
        img += 0.1 * (r < rad - 1) - 0.3 * np.exp(-((r - rad) / 1.1) ** 2)
    img = ndimage.gaussian_filter(img, 0.7) + 0.01 * rng.standard_normal((size, size))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _tube_paths(rng: np.random.Generator, size: int, n: int):
    """Smooth random curves (mitochondria centre lines) as arrays of points."""
    paths = []
    for _ in range(n):
        n_pts = int(rng.integers(30, 90))
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.08, n_pts))
        steps = np.column_stack([np.sin(ang), np.cos(ang)])
        paths.append(rng.uniform(0.1 * size, 0.9 * size, 2) + np.cumsum(steps, axis=0))
    return paths


def fluo_movie(size: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """uint16 (t, y, x) time-lapse of tubular mitochondria that drift and bend, with shot noise."""
    n_tubes = max(6, size * size // 5000)
    paths = _tube_paths(rng, size, n_tubes)
    vel = rng.normal(0, 1.2, (n_tubes, 2))
    wobble = rng.uniform(0, 2 * np.pi, n_tubes)
    bright = rng.uniform(0.5, 1.0, n_tubes)
    movie = np.empty((n_frames, size, size), np.uint16)
    for t in range(n_frames):
        acc = np.zeros((size, size), np.float64)
        for p, v, w, b in zip(paths, vel, wobble, bright):
            bend = 2.0 * np.sin(t / 3 + w + np.linspace(0, np.pi, len(p)))[:, None]
            pts = np.round(p + t * v + bend * [1, -1]).astype(int)
            ok = (pts >= 0).all(1) & (pts < size).all(1)
            np.add.at(acc, (pts[ok, 0], pts[ok, 1]), b)
        movie[t] = _photons(ndimage.gaussian_filter(acc, 1.6), rng)
    return movie


def _photons(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint16 detector counts: `signal` scaled to a 2500-photon peak over an uneven 100-photon background."""
    signal = signal * (2500 / max(signal.max(), 1e-12))
    bg = 100 + 20 * _smooth_noise(signal.shape, 30, rng).clip(-3, 3)
    return np.clip(rng.poisson(signal + bg), 0, 65535).astype(np.uint16)


def nuclei_movie(size: int, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """uint16 (t, y, x) time-lapse of labelled nuclei (H2B-like): soft-edged ellipses 14-26 px across with
    chromatin texture and dim nucleoli that drift slowly (a biased random walk, ~0.6 px per frame), turn,
    breathe and remodel their chromatin over the movie: large, slow, textured objects where `fluo_movie` has
    thin, fast tubes, as in the small nuclei time-lapses labs often start from."""
    n = max(4, size * size // 1500)
    centre = rng.uniform(0.08 * size, 0.92 * size, (n, 2))
    steps = rng.normal(0, 0.35, (n_frames, n, 2)) + rng.normal(0, 0.3, (n, 2))
    axes = rng.uniform(7, 13, (n, 2))
    turn, phase = rng.normal(0, 0.02, n), rng.uniform(0, 2 * np.pi, n)
    angle, bright = rng.uniform(0, np.pi, n), rng.uniform(0.5, 1.0, n)
    pad = 16  # texture maps: nucleus-fixed coordinates, so chromatin moves with its nucleus
    tex = [[1 + 0.35 * _smooth_noise((2 * pad, 2 * pad), 1.2, rng) - 0.5 * _nucleoli(pad, rng) for _ in range(2)]
           for _ in range(n)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    movie = np.empty((n_frames, size, size), np.uint16)
    for t in range(n_frames):
        acc = np.zeros((size, size))
        c_t = centre + steps[: t + 1].sum(0)
        w = np.cos(0.5 * np.pi * t / max(n_frames - 1, 1))  # chromatin remodels over the movie
        for i in range(n):
            a = angle[i] + turn[i] * t
            u = (yy - c_t[i, 0]) * np.cos(a) + (xx - c_t[i, 1]) * np.sin(a)
            v = -(yy - c_t[i, 0]) * np.sin(a) + (xx - c_t[i, 1]) * np.cos(a)
            breathe = 1 + 0.04 * np.sin(t / 4 + phase[i])
            r = np.hypot(u / (axes[i, 0] * breathe), v / (axes[i, 1] * breathe))
            near = r < 1.5
            texture = w * tex[i][0] + (1 - w) * tex[i][1]
            local = ndimage.map_coordinates(texture, [u[near] + pad, v[near] + pad], order=1, mode="nearest")
            acc[near] += bright[i] * local.clip(0.1) / (1 + np.exp((r[near] - 1) * 12))
        movie[t] = _photons(ndimage.gaussian_filter(acc, 1.0), rng)
    return movie


def _nucleoli(pad: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 round dim spots (nucleoli) near a nucleus's centre, on a (2 pad, 2 pad) map."""
    yy, xx = np.mgrid[-pad:pad, -pad:pad]
    out = np.zeros((2 * pad, 2 * pad))
    for y, x, r in zip(rng.normal(0, 3, 3), rng.normal(0, 3, 3), rng.uniform(1.5, 3, int(rng.integers(1, 4)))):
        out = np.maximum(out, 1 / (1 + np.exp((np.hypot(yy - y, xx - x) - r) * 3)))
    return out


def save_unlabelled_stack(dest: Path, stack: np.ndarray, pixel_um: Optional[float] = None) -> None:
    """A plain multi-page TIFF with no axis labels, as many acquisition programs write:
    only the folder convention (`live`) says whether its pages are t or z."""
    res = {} if not pixel_um else dict(resolution=(1e4 / pixel_um, 1e4 / pixel_um), resolutionunit="CENTIMETER")
    with atomic_path(dest) as tmp:
        tifffile.imwrite(tmp, stack, compression="zlib", **res)


def write_sample_tree(out: Path, seed: int = 0, clean: bool = False) -> Path:
    """Write the sample source tree (see the module docstring) under `out`."""
    out = prepare_out_dir(Path(out), clean, "sample data folder")
    rng = np.random.default_rng(seed)
    em = out / "fixed" / "em"
    for i in range(2):
        save_tif(em / "train" / f"em_train_{i}.tif", em_frame(640, rng), EM_PIXEL_UM)
    objects = _em_objects(rng, 384)
    stack = np.stack([em_frame(384, rng, objects, z) for z in range(7)])
    save_tif(em / "train" / "em_zstack.tif", stack, EM_PIXEL_UM, axes="ZYX")
    save_tif(em / "valid" / "em_valid_0.tif", em_frame(640, rng), EM_PIXEL_UM)
    live = out / "live" / "fluo_live"
    save_unlabelled_stack(live / "train" / "fluo_live_train.tif", fluo_movie(320, 12, rng), FLUO_PIXEL_UM)
    save_unlabelled_stack(live / "valid" / "fluo_live_valid.tif", fluo_movie(256, 10, rng), FLUO_PIXEL_UM)
    return out


def main(out: str, seed: int = 0, clean: bool = False) -> None:
    """Write the sample source tree to OUT (refuses a non-empty OUT unless --clean)."""
    path = write_sample_tree(Path(out), seed, clean)
    n = sum(1 for p in path.rglob("*.tif"))
    print(f"wrote {n} sample images under {path} (seed {seed})")


if __name__ == "__main__":
    run_cli(main)
