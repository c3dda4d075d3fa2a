"""utils.lrstats: what an LR image shows of its acquisition, and how it is compared with a model's training LR."""
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from utils.lrstats import (CLEAN_GAIN, CROP, NOISIER, NOISIER_TOLD, SMOOTHER_ALONG_X, centre_crop, fast_axis_ratio,
                           lr_reference, lr_sample, noise_level, unlike_training)
from utils.sources import open_source


def _lr(seed: int, noise: float, shape=(96, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=shape), 3)
    x = (x - x.min()) / (x.max() - x.min()) + rng.normal(0, noise, shape)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def test_lr_reference_is_the_smooth_end_of_the_ratio_and_the_noisiest_level():
    """A range of drawn noise levels is remembered by its noisiest frame, and the level grows with the noise
    whatever the image's range; the ratio by its 10th percentile, so a share of smoothed frames lowers it."""
    quiet, loud = [_lr(i, 0.03) for i in range(5)], [_lr(10 + i, 0.2) for i in range(5)]
    ref = lr_reference(quiet + loud)
    assert ref["lr_noise_level"] == max(map(noise_level, loud)) > 2 * max(map(noise_level, quiet))
    assert ref["lr_noise_level_min"] == min(map(noise_level, quiet))
    assert 0.8 < ref["lr_fast_axis_ratio"] < 1.1
    lined = [gaussian_filter1d(f.astype(np.float32), 1.0, axis=1) for f in loud[:3]]
    assert lr_reference(quiet + loud + lined)["lr_fast_axis_ratio"] < 0.6 * ref["lr_fast_axis_ratio"]
    assert noise_level(quiet[0]) == noise_level(quiet[0].astype(np.float32) * 7 + 3)


def test_centre_crop_reads_only_the_middle(tmp_path: Path):
    big = np.arange(1000 * 700, dtype=np.uint16).reshape(1000, 700)
    tifffile.imwrite(tmp_path / "big.tif", big)
    with open_source(tmp_path / "big.tif") as src:
        crop = centre_crop(src)
        assert crop.shape == (CROP, CROP) and np.array_equal(crop, big[244:244 + CROP, 94:94 + CROP])
        assert lr_sample(src).shape == (CROP, CROP) and lr_sample(src).max() <= 1


def test_unlike_training_names_what_the_model_never_saw(tmp_path: Path):
    white = _lr(0, 0.08)
    lined = (gaussian_filter1d(white.astype(np.float32), 1.0, axis=1)).astype(np.uint8)
    noisy = _lr(1, 0.35)
    meta = {"lr_fast_axis_ratio": fast_axis_ratio(white), "lr_noise_level": noise_level(white)}
    found = {}
    for name, img in (("white", white), ("lined", lined), ("noisy", noisy)):
        tifffile.imwrite(tmp_path / f"{name}.tif", img)
        with open_source(tmp_path / f"{name}.tif") as src:
            found[name] = unlike_training(src, meta)
            assert unlike_training(src, {}) == []  # a model that recorded neither
    assert found["white"] == []
    tifffile.imwrite(tmp_path / "blank.tif", np.full((64, 64), 7, np.uint8))
    with open_source(tmp_path / "blank.tif") as src:  # an empty frame shows nothing of its acquisition
        assert unlike_training(src, meta) == [] and fast_axis_ratio(np.zeros((8, 8))) == 1
    (kind, ratio), = found["lined"]
    assert kind == "smoother" and ratio < SMOOTHER_ALONG_X * meta["lr_fast_axis_ratio"]
    (kind, noise), = found["noisy"]
    assert kind == "noisier" and noise > NOISIER * meta["lr_noise_level"]
    # A model told the noise level restores noisier LR: it is warned from NOISIER_TOLD x its training LR's on.
    told = {**meta, "noise_channel": True}
    for level, warned in ((noise / NOISIER_TOLD * 1.05, False), (noise / NOISIER_TOLD * 0.95, True)):
        with open_source(tmp_path / "noisy.tif") as src:
            assert bool(unlike_training(src, {**told, "lr_noise_level": level})) == warned


def test_cleaner_lr_is_named_only_for_a_model_weak_on_noise_free_lr(tmp_path: Path):
    """LR cleaner than the training LR's cleanest frame: a warning for a model that gained under CLEAN_GAIN dB
    on noise-free validation LR, none for one that gained more or recorded no such gain (older models)."""
    clean, noisy = _lr(0, 0.0), _lr(1, 0.1)
    meta = {"lr_noise_level": noise_level(noisy), "lr_noise_level_min": noise_level(noisy)}
    for name, img in (("clean", clean), ("noisy", noisy)):
        tifffile.imwrite(tmp_path / f"{name}.tif", img)
    for gain, file, expect in ((CLEAN_GAIN - 0.01, "clean", ["cleaner"]), (CLEAN_GAIN + 0.01, "clean", []),
                               (None, "clean", []), (CLEAN_GAIN - 0.01, "noisy", [])):
        with open_source(tmp_path / f"{file}.tif") as src:
            found = unlike_training(src, {**meta, **({} if gain is None else {"clean_gain_db": gain})})
        assert [kind for kind, _ in found] == expect, (gain, file, found)
    assert found == [] and noise_level(clean) < meta["lr_noise_level_min"]
