"""Metric correctness on known values, and metric_gen's pairing, outputs and errors."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import utils  # noqa: F401
from utils.errors import PSSRError
from utils.metrics import (checkerboard_split, frc_resolution, norm_minmse, psnr, slice_metrics, snr, ssim,
                           find_background)

sys.path.insert(0, str(Path(__file__).parent))
from restore_helpers import smooth_image, write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metric_gen  # noqa: E402


@pytest.fixture(scope="module")
def img():
    return smooth_image((256, 256), 3).astype(np.float32) / 4000


def test_identical_images_score_perfectly(img):
    p, s = slice_metrics(img, img)
    assert s == pytest.approx(1.0, abs=1e-6)
    assert p > 100  # float32 rounding only (exactly equal arrays give inf)
    assert psnr(img, img) == np.inf


def test_known_gaussian_noise_gives_expected_psnr(img):
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.05, 0.1):
        noisy = img + rng.normal(0, sigma, img.shape).astype(np.float32)
        assert psnr(img, noisy) == pytest.approx(20 * np.log10(1 / sigma), abs=0.1)
    assert ssim(img, img + 0.1 * rng.normal(size=img.shape).astype(np.float32)) < 0.9


def test_norm_minmse_recovers_affine_transform_exactly(img):
    gt_n, x = norm_minmse(img, 3.7 * img - 12.0)
    np.testing.assert_allclose(x, gt_n, atol=1e-5)
    lo, hi = np.percentile(img, (0.1, 99.9))  # ground truth scaled by its 0.1/99.9 percentiles
    assert (gt_n.max() - gt_n.min()) == pytest.approx((img.max() - img.min()) / (hi - lo), rel=1e-4)
    assert slice_metrics(img, 0.5 * img + 100)[1] == pytest.approx(1.0, abs=1e-5)


def test_snr_matches_construction():
    rng = np.random.default_rng(1)
    x = 10 + rng.normal(0, 2, (128, 128))
    x[60:64, 60:64] = 210
    bg = find_background(x, 16)
    assert not (bg[0] <= 60 < bg[0] + 16 and bg[1] <= 60 < bg[1] + 16)  # the peak is not background
    assert snr(x, (0, 0, 40, 40)) == pytest.approx(100, rel=0.06)
    assert snr(x) == pytest.approx(100, rel=0.15)


def test_frc_behaves(img):
    rng = np.random.default_rng(2)
    assert frc_resolution(img, img)[0] == pytest.approx(2.0)  # perfect correlation: Nyquist
    noise = frc_resolution(rng.normal(size=img.shape), rng.normal(size=img.shape))[0]
    assert noise > 20  # independent noise correlates at no frequency
    from skimage.filters import gaussian
    res = [frc_resolution(gaussian(img, s) + 0.003 * rng.normal(size=img.shape),
                          gaussian(img, s) + 0.003 * rng.normal(size=img.shape), pixel_size=0.01)
           for s in (1, 3)]
    assert res[0][0] < res[1][0]  # blurrier -> coarser resolution
    assert res[0][1] == pytest.approx(res[0][0] * 0.01)
    # one image split in two estimates about the same resolution as two acquisitions,
    # down to its own limit of 4 pixels (the half-size images' Nyquist)
    one = frc_resolution(gaussian(img, 3) + 0.003 * rng.normal(size=img.shape))[0]
    assert one == pytest.approx(res[1][0], rel=0.25)
    assert frc_resolution(img)[0] == pytest.approx(4.0)
    a, b = checkerboard_split(np.arange(16.0).reshape(4, 4))
    assert a.tolist() == [[0, 2], [8, 10]] and b.tolist() == [[5, 7], [13, 15]]


def _tree(tmp_path, gt_frames=4, pred_frames=4, pred_size=128, bad_size=False):
    """GT/<rel>/s.tif, PRED/<rel>/{LR-bilinear,m}/s_<method>.tif, LR/<rel>/s.tif."""
    rng = np.random.default_rng(0)
    gt = np.stack([smooth_image((128, 128), i) for i in range(gt_frames)])
    write_stack(tmp_path / "gt/a/s.tif", gt, "TYX", 0.02)
    write_stack(tmp_path / "lr/a/s.tif", gt[:, ::4, ::4], "TYX", 0.08)
    k = (gt_frames - pred_frames) // 2
    good = gt[k:gt_frames - k].astype(np.float32) + rng.normal(0, 20, (pred_frames, 128, 128)).astype(np.float32)
    worse = gt[k:gt_frames - k].astype(np.float32) + rng.normal(0, 200, (pred_frames, 128, 128)).astype(np.float32)
    if bad_size:
        good = good[:, :pred_size, :pred_size]
    write_stack(tmp_path / "pred/a/m/s_m.tif", good, "TYX", 0.02)
    write_stack(tmp_path / "pred/a/LR-bilinear/s_LR-bilinear.tif", worse, "TYX", 0.02)
    return tmp_path


def test_metric_gen_tree_layout_csv_summary_figures(tmp_path, capsys):
    t = _tree(tmp_path)
    metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", lr_dir=t / "lr", out=t / "stats")
    df = pd.read_csv(t / "stats/metrics_per_slice.csv")
    assert set(df.method) == {"HR", "m", "LR-bilinear"} and len(df) == 12
    assert {"psnr", "ssim", "snr", "frc_px", "frc_um"} <= set(df.columns)
    s = pd.read_csv(t / "stats/metrics_summary.csv").set_index("method")
    assert s.loc["m", "psnr_mean"] > s.loc["LR-bilinear", "psnr_mean"] + 10
    assert s.loc["m", "psnr_p"] < 0.01 and s.loc["m", "psnr_sem"] > 0
    assert (t / "stats/metrics_bars.png").stat().st_size > 0 and (t / "stats/metrics_panel_s.png").exists()
    assert "LR-bilinear" in capsys.readouterr().out
    with pytest.raises(PSSRError, match="--force"):
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", out=t / "stats")


def test_metric_gen_original_layout_and_dropped_frames(tmp_path):
    """-e/-p layout (stats/output/E/P, stats/bilinear/E, stats/ground_truth/E) with the original's
    multi-frame outputs missing 2 frames at each end."""
    sd = tmp_path / "stats"
    gt = np.stack([smooth_image((64, 64), i) for i in range(7)])
    write_stack(sd / "ground_truth/exp/movie.tif", gt, "TYX")
    write_stack(sd / "output/exp/multi_m/movie_multi_m.tif", gt[2:5].astype(np.float32), "TYX")
    write_stack(sd / "bilinear/exp/movie_bilinear.tif", gt[2:5] // 2 + 7, "TYX")
    metric_gen.main(experiment="exp", predset="multi_m", stats_dir=sd, figures=False)
    df = pd.read_csv(sd / "csv/stats_exp_multi_m_per_slice.csv")
    m = df[df.method == "multi_m"]
    assert sorted(m.t) == [2, 3, 4] and (m.ssim > 0.999).all()  # frame i of the output is GT frame i+2
    assert (df[df.method == "bilinear"].ssim > 0.99).all()


def test_metric_gen_size_mismatch_names_both_files(tmp_path):
    t = _tree(tmp_path, pred_size=120, bad_size=True)
    with pytest.raises(PSSRError) as e:
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", out=t / "stats", figures=False)
    msg = str(e.value)
    assert "s_m.tif" in msg and "gt/a/s.tif" in msg and "120x120" in msg and "128x128" in msg
    assert not (t / "stats/metrics_per_slice.csv").exists()


def test_metric_gen_empty_and_unmatched(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(PSSRError, match="holds no"):
        metric_gen.main(pred_dir=tmp_path / "pred", gt_dir=tmp_path / "gt", out=tmp_path / "o")
    write_stack(tmp_path / "gt/x.tif", smooth_image((32, 32)), "YX")
    with pytest.raises(PSSRError, match="no restoration matches"):
        metric_gen.main(pred_dir=tmp_path / "pred", gt_dir=tmp_path / "gt", out=tmp_path / "o")


def test_two_acquisition_frc_and_given_background(tmp_path):
    """--pair_dir: FRC from two independent acquisitions; --bg_box fixes the SNR background."""
    t = _tree(tmp_path)
    rng = np.random.default_rng(5)
    gt = np.stack([smooth_image((128, 128), i) for i in range(4)]).astype(np.float32)
    write_stack(t / "pair/a/m/s_m.tif", gt + rng.normal(0, 20, gt.shape).astype(np.float32), "TYX", 0.02)
    metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", pair_dir=t / "pair", out=t / "o", bg_box="0,0,16,16",
                    figures=False)
    df = pd.read_csv(t / "o/metrics_per_slice.csv")
    m, b = df[df.method == "m"], df[df.method == "LR-bilinear"]
    assert (m.frc_px < 4).all()  # two acquisitions resolve below the split method's 4-px floor
    assert (b.frc_px >= 4).all() and np.allclose(m.frc_um, m.frc_px * 0.02)
    assert np.isfinite(df.snr).all()
