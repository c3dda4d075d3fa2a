"""The seeded sample source tree: layout, types, metadata, determinism."""
import numpy as np
import pytest

from conftest import run_script
from utils.errors import PSSRError
from utils.sample_data import EM_PIXEL_UM, FLUO_PIXEL_UM, em_frame, fluo_movie, nuclei_movie, write_sample_tree
from utils.sources import find_images, open_source


def test_layout_and_what_the_files_hold(sample_tree):
    em, live = sample_tree / "fixed" / "em", sample_tree / "live" / "fluo_live"
    assert [p.name for p in find_images(em / "train")] == ["em_train_0.tif", "em_train_1.tif", "em_zstack.tif"]
    assert [p.name for p in find_images(em / "valid")] == ["em_valid_0.tif"]
    for p in find_images(em / "train") + find_images(em / "valid"):
        with open_source(p) as s:
            assert s.dtype == np.uint8 and s.nt == 1 and s.ny >= 384
            assert s.pixel_size == pytest.approx(EM_PIXEL_UM)
    with open_source(em / "train" / "em_zstack.tif") as s:
        assert (s.nz, s.nt) == (7, 1)
    for split, n in (("train", 12), ("valid", 10)):
        (p,) = find_images(live / split)
        with open_source(p, live=True) as s:  # unlabelled pages: only the `live` folder makes them t
            assert (s.nc, s.nz, s.nt) == (1, 1, n) and s.dtype == np.uint16
            assert s.pixel_size == pytest.approx(FLUO_PIXEL_UM, rel=1e-3)
        with open_source(p, live=False) as s:
            assert (s.nz, s.nt) == (n, 1)
    assert sum(p.stat().st_size for p in sample_tree.rglob("*.tif")) < 8e6


def test_generators_are_seeded():
    assert np.array_equal(em_frame(96, np.random.default_rng(1)), em_frame(96, np.random.default_rng(1)))
    assert not np.array_equal(em_frame(96, np.random.default_rng(1)), em_frame(96, np.random.default_rng(2)))
    a, b = fluo_movie(64, 10, np.random.default_rng(1)), fluo_movie(64, 10, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == (10, 64, 64) and a.dtype == np.uint16


def test_em_has_dark_membranes_on_lighter_cytoplasm():
    x = em_frame(256, np.random.default_rng(0)).astype(float)
    assert np.percentile(x, 2) < np.median(x) - 50  # thin dark structures
    assert 100 < np.median(x) < 200


def test_fluo_mitochondria_are_sparse_bright_and_move():
    m = fluo_movie(128, 10, np.random.default_rng(0)).astype(float)
    bg, peak = np.median(m), np.percentile(m, 99.9)
    assert peak > 10 * bg  # bright tubes on a dim background
    assert (m[0] > 3 * bg).mean() < 0.2  # sparse
    moved = np.abs(m[-1] - m[0]).mean() / np.abs(m[1] - m[0]).mean()
    assert moved > 1.2  # frames drift apart over time, not just noise


def test_nuclei_are_seeded_textured_blobs_that_move_slowly():
    a = nuclei_movie(96, 12, np.random.default_rng(1))
    assert np.array_equal(a, nuclei_movie(96, 12, np.random.default_rng(1))) and a.shape == (12, 96, 96)
    assert a.dtype == np.uint16 and not np.array_equal(a, nuclei_movie(96, 12, np.random.default_rng(2)))
    m = nuclei_movie(130, 30, np.random.default_rng(0)).astype(float)
    bg = np.median(m)
    bright = m[0] > 5 * bg
    assert 0.1 < bright.mean() < 0.6  # blobs, far more area than fluo_movie's thin tubes
    inside = m[0][bright]
    assert inside.std() / inside.mean() > 0.15  # chromatin texture, not flat discs
    step = np.abs(m[1] - m[0]).mean()
    assert np.abs(m[5] - m[0]).mean() > 1.2 * step  # they move,
    assert np.abs(m[-1] - m[0]).mean() > np.abs(m[5] - m[0]).mean()  # and keep moving over the movie


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(PSSRError, match="--clean"):
        write_sample_tree(tmp_path, seed=0)
    r = run_script("-m", "utils.sample_data", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error:" in r.stderr
