"""Metric correctness on known values, and metric_gen's pairing, outputs and errors."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import utils  # noqa: F401
from utils.errors import PSSRError
from utils.evaluate import estimate_shift
from utils.metrics import (checkerboard_split, frc_resolution, norm_minmse, psnr, slice_metrics, snr, ssim,
                           find_background, squirrel)

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
    assert (m.frc_from == "two acquisitions").all() and (b.frc_from == "split").all()  # the fallback is labelled
    assert np.isfinite(df.snr).all()


# --- NanoJ-SQUIRREL RSE/RSP, registration, unmatched restorations (issues 8 and 9) ---

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "em_isbi2012" / "isbi2012_train.tif"


def test_squirrel_identical_rescaled_and_blurred(img):
    from scipy.ndimage import gaussian_filter
    for sigma in ("fit", 0):
        q = squirrel(img, img, sigma)
        assert q.rse == pytest.approx(0, abs=1e-6) and q.rsp == pytest.approx(1, abs=1e-9) and q.sigma == 0
    noisy = img + np.random.default_rng(3).normal(0, 0.02, img.shape).astype(np.float32)
    for sigma in ("fit", 1.5):
        a, b = squirrel(img, noisy, sigma), squirrel(img, -40 + 7.5 * noisy, sigma)  # a linear intensity change
        assert b.rse == pytest.approx(a.rse, rel=1e-5) and b.rsp == pytest.approx(a.rsp, rel=1e-6)
        assert b.sigma == pytest.approx(a.sigma, abs=1e-3) and 0 < a.rse < 0.1 and 0.5 < a.rsp < 1
    assert a.error_map.dtype == np.float32 and a.error_map.shape == img.shape
    assert np.sqrt(np.mean(a.error_map.astype(np.float64) ** 2)) == pytest.approx(a.rse, rel=1e-4)
    fitted = squirrel(img, noisy)  # the fitted RSF smooths a restoration's noise ...
    assert fitted.sigma > 0.3 and fitted.rse < 0.9 * squirrel(img, noisy, 0).rse
    blurred = squirrel(img, gaussian_filter(img, 2.0))  # ... but cannot give a blurry one back its detail
    assert blurred.sigma < 0.1 and blurred.rse > 0.01


def _shifted_tree(tmp_path, shift=(3.4, -2.2)):
    """GT/s.tif (2 frames) and PRED/{m,LR-bilinear}/s_<method>.tif, and the same restorations of a field
    moved by `shift` (sub-pixel, cut from a larger moved image: no wrap-around) in MOVED/."""
    from scipy.ndimage import fourier_shift, gaussian_filter
    rng = np.random.default_rng(7)
    big = np.stack([smooth_image((192, 192), i) for i in range(2)]).astype(np.float32)
    good = big + rng.normal(0, 40, big.shape).astype(np.float32)
    worse = np.stack([gaussian_filter(g, 2) for g in big]) + rng.normal(0, 80, big.shape).astype(np.float32)
    def cut(a):
        return a[:, 32:160, 32:160]
    def move(a):
        return cut(np.stack([np.fft.ifft2(fourier_shift(np.fft.fft2(f), shift)).real for f in a]).astype(np.float32))
    write_stack(tmp_path / "gt/s.tif", cut(big).astype(np.uint16), "TYX", 0.02)
    for sub, f in (("pred", cut), ("moved", move)):
        write_stack(tmp_path / f"{sub}/m/s_m.tif", f(good), "TYX", 0.02)
        write_stack(tmp_path / f"{sub}/LR-bilinear/s_LR-bilinear.tif", f(worse), "TYX", 0.02)
    return tmp_path


def test_register_finds_and_undoes_a_known_shift(tmp_path):
    t = _shifted_tree(tmp_path)
    run = dict(gt_dir=t / "gt", figures=False, error_maps=False, rsf_sigma=1.0)
    metric_gen.main(pred_dir=t / "pred", out=t / "ref", **run)
    metric_gen.main(pred_dir=t / "moved", out=t / "raw", **run)
    metric_gen.main(pred_dir=t / "moved", out=t / "reg", register=True, **run)
    ref, raw, reg = (pd.read_csv(t / f"{d}/metrics_per_slice.csv").query("method != 'HR'").set_index(["method", "t"])
                     for d in ("ref", "raw", "reg"))
    np.testing.assert_allclose(reg.shift_y, -3.4, atol=0.11)  # the shift that moves it back (1/20 px steps)
    np.testing.assert_allclose(reg.shift_x, 2.2, atol=0.11)
    assert reg.roi.nunique() == 1 and reg.roi.iloc[0] == "0,4,123,124"  # one region for every method
    np.testing.assert_allclose(reg.psnr, ref.psnr, atol=0.15)  # as good as the pair that was never moved
    np.testing.assert_allclose(reg.ssim, ref.ssim, atol=0.01)
    np.testing.assert_allclose(reg.rse, ref.rse, rtol=0.05)
    np.testing.assert_allclose(reg.rsp, ref.rsp, atol=0.005)
    assert (raw.psnr < ref.psnr - 3).all()  # and unregistered the shift ruins every score


@pytest.mark.skipif(not ISBI.is_file(), reason="../shared/data/em_isbi2012 not available")
def test_register_on_real_em_restored_by_bilinear():
    """A real ssTEM slice moved, crappified with the paper's EM crappifier and upsampled bilinearly."""
    import tifffile
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import fourier_shift
    from utils.crappifiers import crappify
    hr = tifffile.imread(ISBI, key=24).astype(np.float32) / 255
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(hr), (2.3, -1.6))).real.astype(np.float32)
    lr = crappify("em_AG_D_sameas_preprint", moved, 4, np.random.default_rng(0))
    up = F.interpolate(torch.from_numpy(lr)[None, None], scale_factor=4, mode="bilinear", align_corners=False)
    assert estimate_shift(hr, up[0, 0].numpy()) == pytest.approx((-2.3, 1.6), abs=0.1)


def test_error_maps_written_float32_and_guarded(tmp_path):
    t = _tree(tmp_path)
    metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", lr_dir=t / "lr", out=t / "stats")
    df = pd.read_csv(t / "stats/metrics_per_slice.csv")
    assert {"rse", "rsp", "rsf_sigma"} <= set(df.columns) and df[df.method == "HR"].rse.isna().all()
    s = pd.read_csv(t / "stats/metrics_summary.csv").set_index("method")
    assert s.loc["m", "rse_mean"] < s.loc["LR-bilinear", "rse_mean"] and s.loc["m", "rsp_mean"] > 0.9
    assert {"rse_p", "rsp_p", "rsf_sigma_mean"} <= set(s.columns)
    import tifffile
    for m in ("m", "LR-bilinear"):
        with tifffile.TiffFile(t / f"stats/metrics_error_maps/a/{m}/s_{m}_error.tif") as f:
            emap = f.asarray()
            assert f.series[0].dtype == np.float32 and emap.shape == (4, 128, 128)
        rse = df[df.method == m].sort_values("t").rse.to_numpy()
        np.testing.assert_allclose(np.sqrt((emap.astype(np.float64) ** 2).mean(axis=(1, 2))), rse, rtol=1e-4)
    assert (t / "stats/metrics_errors_s.png").stat().st_size > 0
    (t / "stats/metrics_per_slice.csv").unlink()
    (t / "stats/metrics_summary.csv").unlink()
    with pytest.raises(PSSRError, match="metrics_error_maps.*--force"):  # the maps alone are not overwritten
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", out=t / "stats", figures=False)
    with pytest.raises(PSSRError, match="rsf_sigma"):
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", out=t / "o2", rsf_sigma="wide")


def test_restoration_without_ground_truth_warns_on_one_line(tmp_path, capsys):
    t = _tree(tmp_path)
    write_stack(t / "pred/a/m/orphan_m.tif", smooth_image((128, 128), 9), "YX", 0.02)
    for again in (False, True):  # results inside PRED: its own error maps are not restorations
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", out=t / "pred/stats", figures=False, force=again)
        warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
        assert len(warnings) == 1 and "orphan_m.tif" in warnings[0] and "not scored" in warnings[0]
    assert set(pd.read_csv(t / "pred/stats/metrics_per_slice.csv").method) == {"HR", "m", "LR-bilinear"}


def test_nan_in_second_acquisition_names_it(tmp_path):
    t = _tree(tmp_path)
    bad = np.stack([smooth_image((128, 128), i) for i in range(4)]).astype(np.float32)
    bad[1, 5, 5] = np.nan
    write_stack(t / "pair/a/m/s_m.tif", bad, "TYX", 0.02)
    with pytest.raises(PSSRError, match=r"pair/a/m/s_m\.tif.*NaN"):
        metric_gen.main(pred_dir=t / "pred", gt_dir=t / "gt", pair_dir=t / "pair", out=t / "o", figures=False)
