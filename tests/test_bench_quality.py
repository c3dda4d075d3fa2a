"""bench/bench_quality.py's data preparation: how a lab's time-lapses are split and how test LR is made
(the benchmark itself trains for minutes and is not run here)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_quality as bq  # noqa: E402
from utils.errors import PSSRError  # noqa: E402


def _movie(t, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, (t, size, size)).astype(np.uint16)


def test_few_movies_split_in_time_without_overlap():
    m = _movie(30)
    train, valid, test = bq.split_movies({"a": (m, 0.05)})
    tr, va, te = train["a"][0], valid["a"][0], test["a"][0]
    assert (len(tr), len(va), len(te)) == (19, 5, 6)
    assert np.array_equal(np.concatenate([tr, va, te]), m)  # consecutive, disjoint, nothing dropped
    assert test["a"][1] == 0.05


def test_many_movies_split_whole():
    movies = {k: (_movie(6, seed=i), None) for i, k in enumerate("abcd")}
    train, valid, test = bq.split_movies(movies)
    assert (list(train), list(valid), list(test)) == (["a", "b"], ["c"], ["d"])


def test_too_short_movie_is_refused():
    with pytest.raises(PSSRError, match="too few to split"):
        bq.split_movies({"short": (_movie(14), None)})


def test_test_set_degrades_every_frame(tmp_path):
    gt = _movie(6, size=64)
    bq.write_test_set(tmp_path, {"m": gt}, bq.FLUO, 0, lambda m: m / np.float32(4000))
    assert np.array_equal(tifffile.imread(tmp_path / "test/gt/m.tif"), gt)
    for deg in bq.FLUO.degradations:
        lr = tifffile.imread(tmp_path / f"test/lr_{deg}/m.tif")
        assert lr.shape == (6, 16, 16)
        assert len({f.tobytes() for f in lr}) == 6  # fresh noise in every frame
    assert tifffile.imread(tmp_path / "test/lr_shot/m.tif").dtype == np.uint16  # detector counts
    # fewer photons, more relative noise: `shot` is noisier than `mild` on the same frames
    cv = {d: np.std(np.diff(tifffile.imread(tmp_path / f"test/lr_{d}/m.tif").astype(float), axis=0))
          / tifffile.imread(tmp_path / f"test/lr_{d}/m.tif").mean() for d in ("shot", "mild")}
    assert cv["shot"] > 1.5 * cv["mild"]


def test_test_set_of_odd_size_is_cropped_to_whole_lr_pixels(tmp_path):
    """A 130 px movie gives 32 px LR, restored to 128 px: the ground truth must be 128 px too."""
    bq.write_test_set(tmp_path, {"m": _movie(5, size=130)}, bq.FLUO, 0, lambda m: m / np.float32(4000))
    assert tifffile.imread(tmp_path / "test/gt/m.tif").shape == (5, 128, 128)
    assert tifffile.imread(tmp_path / "test/lr_mild/m.tif").shape == (5, 32, 32)


def test_synthetic_movies_make_a_source_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(bq, "fluo_movie", lambda size, t, rng: _movie(t, 64, int(rng.integers(99))))
    data = bq.make_fluo_data(tmp_path, "synthetic")
    assert sorted(p.relative_to(data).as_posix() for p in (data / "src").rglob("*.tif")) == [
        "src/live/fluo/train/movie0.tif", "src/live/fluo/train/movie1.tif", "src/live/fluo/valid/movie2.tif"]
    assert tifffile.imread(data / "test/lr_mild/movie3.tif").shape == (16, 16, 16)


def test_fluorescence_gets_milder_test_sets_than_its_crappifier(tmp_path):
    """FOREIGN_FLUO: `clean` is `shot`'s scan without noise, `gauss_lo` quieter than `mild`; both uint16 movies,
    added to an existing data folder without changing the sets already there."""
    from scipy.ndimage import gaussian_filter
    from utils.lrstats import noise_level
    data = tmp_path / "data"
    smooth = gaussian_filter(_movie(6, 128).astype(np.float32), (0, 4, 4))
    hr = {"m": (200 + 3000 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint16)}
    bq.write_test_set(data, hr, bq.FLUO, 1, bq.fluo_to_unit)
    mild = tifffile.imread(data / "test/lr_mild/m.tif")
    bq.write_foreign_sets(data, bq.FLUO, 2, bq.fluo_to_unit)
    lr = {d: tifffile.imread(data / f"test/lr_{d}/m.tif") for d in ("clean", "gauss_lo")}
    assert all(x.shape == (6, 32, 32) and x.dtype == np.uint16 for x in lr.values())
    truth = bq.sampled(bq.fluo_to_unit(hr["m"])[0])
    assert np.abs(lr["clean"][0] / 3000 - truth).max() <= 0.5 / 3000
    level = {k: noise_level(x[0] / x[0].max()) for k, x in (("mild", mild), *lr.items())}
    assert level["clean"] < level["gauss_lo"] < level["mild"], level
    assert np.array_equal(tifffile.imread(data / "test/lr_mild/m.tif"), mild)


def test_synthetic_nuclei_are_a_small_source_with_a_held_out_movie(monkeypatch):
    monkeypatch.setattr(bq, "nuclei_movie", lambda size, t, rng: _movie(t, size, int(rng.integers(99))))
    train, valid, test = bq.split_movies(bq.read_movies("nuclei"))
    shapes = [m.shape for part in (train, valid, test) for m, _ in part.values()]
    assert shapes == [(30, 130, 130), (10, 130, 130), (20, 256, 256)]
    assert test["movie2"][1] == bq.NUCLEI_PIXEL_UM


def test_lab_movies_are_read_and_short_ones_refused(tmp_path):
    folder = tmp_path / "movies"
    folder.mkdir()
    tifffile.imwrite(folder / "cell.tif", _movie(30, 64))
    movies = bq.read_movies(str(folder))
    assert list(movies) == ["cell"] and movies["cell"][0].shape == (30, 64, 64) and movies["cell"][1] is None
    data = bq.make_fluo_data(tmp_path / "work", str(folder))
    assert tifffile.imread(data / "src/live/fluo/train/cell.tif").shape == (19, 64, 64)
    assert tifffile.imread(data / "test/lr_shot/cell.tif").shape == (6, 16, 16)
    tifffile.imwrite(folder / "blip.tif", _movie(4, 64), photometric="minisblack")
    with pytest.raises(PSSRError, match="blip.tif.*4 time points"):
        bq.read_movies(str(folder))


def test_foreign_em_sets_are_added_without_changing_the_others(tmp_path):
    gt = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    bq.write_test_set(tmp_path, {"s0": gt}, bq.EM, 1, bq.em_to_unit)
    scan = tifffile.imread(tmp_path / "test/lr_scan/s0.tif")
    bq.write_foreign_sets(tmp_path, bq.EM, 2, bq.em_to_unit)
    lrs = {d: tifffile.imread(tmp_path / f"test/lr_{d}/s0.tif") for d in bq.EM.foreign}
    assert all(lr.shape == (16, 16) and lr.dtype == np.uint8 for lr in lrs.values())
    assert len({lr.tobytes() for lr in lrs.values()} | {scan.tobytes()}) == len(lrs) + 1
    assert np.array_equal(tifffile.imread(tmp_path / "test/lr_scan/s0.tif"), scan)
    # a set already there is kept; one removed comes back the same (its own seeded draws)
    for p in (tmp_path / "test/lr_stride").glob("*"):
        p.unlink()
    (tmp_path / "test/lr_stride").rmdir()
    bq.write_foreign_sets(tmp_path, bq.EM, 2, bq.em_to_unit)
    assert all(np.array_equal(tifffile.imread(tmp_path / f"test/lr_{d}/s0.tif"), lr) for d, lr in lrs.items())
    assert not list((tmp_path / "test").glob("*.partial"))


def test_detector_bandwidth_sets_are_smoother_along_the_lines():
    """`lines` and `rc` smooth the scan along x only: the plan's fast-axis ratio reads it, `scan` reads ~1."""
    from utils.lrstats import fast_axis_ratio
    hr = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    ratio = {k: fast_axis_ratio(f(hr, np.random.default_rng(1))) for k, f in
             (("scan", bq.degrade_scan), ("lines", bq.scan_lines), ("rc", bq.scan_rc))}
    assert ratio["lines"] < 0.6 and ratio["rc"] < 0.8 and 0.9 < ratio["scan"] < 1.1, ratio


def test_low_dose_sets_are_noisier_than_scan():
    """`dose5` and `dose2` are `scan` at fewer photons: noisier in that order, as image_gen's check reads it;
    `gauss_hi`, additive noise, about as noisy as `dose5`."""
    from scipy.ndimage import gaussian_filter
    from utils.lrstats import noise_level
    hr = gaussian_filter(np.random.default_rng(0).random((512, 512)), 4).astype(np.float32)
    hr = 0.2 + 0.6 * (hr - hr.min()) / (hr.max() - hr.min())
    level = {k: noise_level(f(hr, np.random.default_rng(1))) for k, f in
             (("scan", bq.degrade_scan), *((k, bq.FOREIGN_EM[k]) for k in ("dose5", "dose2", "gauss_hi")))}
    assert level["scan"] < 0.8 * level["dose5"] < 0.8 * 0.8 * level["dose2"], level
    assert 0.8 < level["gauss_hi"] / level["dose5"] < 1.25, level


def test_em_training_source_can_be_cut_to_fewer_slices(tmp_path):
    isbi = tmp_path / "vol.tif"
    tifffile.imwrite(isbi, np.random.default_rng(0).integers(0, 256, (30, 64, 64)).astype(np.uint8))
    data = bq.make_em_data(tmp_path / "w", isbi, train_slices=5)
    train = tifffile.imread(data / "src/em/train/isbi_train.tif")
    assert train.shape == (5, 64, 64) and np.array_equal(train, tifffile.imread(isbi)[:5])
    assert tifffile.imread(data / "src/em/valid/isbi_valid.tif").shape == (4, 64, 64)
    assert sorted(p.name for p in (data / "test/gt").iterdir()) == [f"s{i}.tif" for i in range(24, 30)]
    assert bq.make_em_data(tmp_path / "w", isbi, train_slices=5) == data  # kept
    with pytest.raises(PSSRError, match="trains on 5 slices, not 20"):
        bq.make_em_data(tmp_path / "w", isbi)
    with pytest.raises(PSSRError, match="choose 1-20"):
        bq.make_em_data(tmp_path / "w2", isbi, train_slices=21)


def test_reuse_finds_the_one_finished_model(tmp_path):
    (tmp_path / "models").mkdir()
    assert bq.trained_model(tmp_path) is None
    for stem in ("s_1_quick_em_e12", "s_1_quick_em_e12_best_256"):
        (tmp_path / "models" / f"{stem}.json").write_text("{}")
    assert bq.trained_model(tmp_path) == "s_1_quick_em_e12"
    assert bq.trained_model(tmp_path, 5) is None
    (tmp_path / "models" / "t_5_quick_em_e12.json").write_text("{}")  # started from the 1-frame model
    assert bq.trained_model(tmp_path, 5) == "t_5_quick_em_e12" and bq.trained_model(tmp_path) == "s_1_quick_em_e12"


def test_variant_paths_point_into_the_bench_data(tmp_path, monkeypatch):
    """`{data}` in a variant's settings (LR_DIR=a test set's LR) is the bench's own data folder."""
    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 0, stdout="s_1_quick_x_e2\n")

    monkeypatch.setattr(bq.subprocess, "run", fake_run)
    name, _ = bq.run_quick(tmp_path / "data", tmp_path, bq.EM, 1, bq.VARIANTS["lr_dir_dose20"], 1)
    assert name == "s_1_quick_x_e2" and seen["LR_DIR"] == str(tmp_path / "data/test/lr_dose20")
    seen.clear()
    bq.run_quick(tmp_path / "data", tmp_path, bq.FLUO_Z, 5, {"LR_TYPE": "t", "ARCH": "resnet18"}, 1)
    assert seen["ARCH"] == "resnet18" and seen["LR_TYPE"] == "t"  # a variant's settings win over the bench's
    bq.run_quick(tmp_path / "data", tmp_path, bq.FLUO_Z, 5, {}, 1)
    assert seen["LR_TYPE"] == "z"


@pytest.mark.skipif(not bq.ZEISS.is_dir(), reason="../shared/data/czi_zeiss is absent")
def test_zeiss_z_stacks_train_on_mitosis_and_test_on_an_unseen_nucleus(tmp_path):
    """`--movies zeiss`: one z-stack per channel and time point of the real CZIs, in a folder whose stack
    pages are slices (not `live`); the test stacks come from the other file."""
    data = bq.make_fluo_data(tmp_path, "zeiss")
    assert sorted(p.relative_to(data / "src/zstack/fluo").as_posix() for p in (data / "src").rglob("*.tif")) == [
        "train/chromosomes_t0.tif", "train/chromosomes_t1.tif", "train/spindle_t0.tif", "train/spindle_t1.tif",
        "train/spindle_t2.tif", "valid/chromosomes_t2.tif"]
    assert tifffile.imread(data / "src/zstack/fluo/train/spindle_t2.tif").shape == (5, 170, 240)
    assert sorted(p.name for p in (data / "test/gt").iterdir()) == ["nucleus_t0.tif", "nucleus_t1.tif",
                                                                      "nucleus_t2.tif"]
    assert tifffile.imread(data / "test/lr_shot/nucleus_t1.tif").shape == (6, 50, 75)


def test_references_score_what_the_lr_gives_without_training(tmp_path):
    """`--references`: the truth's own LR band restores a band-limited truth exactly; on clean LR of smooth
    structure bicubic beats bilinear, and smoothing the LR first beats it on noisy LR; every frame of a movie
    is scored."""
    rng = np.random.default_rng(0)
    gt = np.stack([bq.in_band(rng.random((64, 64)), 8) for _ in range(3)])  # within half the LR band
    gt = np.round(200 * (gt - gt.min()) / (gt.max() - gt.min()) + 20).astype(np.uint8)
    bench = bq.Bench("x", (1,), {"clean": lambda hr, r: bq.to_uint8(bq.downsample(hr, 4)),
                                 "noisy": lambda hr, r: bq.gaussian_lr(hr, r, 0.15)})
    bq.write_test_set(tmp_path, {"m": gt}, bench, 0, bq.em_to_unit)
    df = bq.reference_scores(tmp_path, bench).set_index(["degradation", "reference"])
    assert (df["frames"] == 3).all() and len(df) == 2 + 2 * (len(bq.CLASSICAL) - 2)  # no windows: 1-frame bench
    assert df.loc[("truth", "in_band"), "psnr"] > df.loc[("truth", "blur1.5"), "psnr"] + 10
    assert df.loc[("clean", "bilinear"), "d_psnr_bilinear"] == 0
    assert df.loc[("clean", "bicubic"), "d_psnr_bilinear"] > 0
    assert df.loc[("noisy", "gauss0.5+bilinear"), "d_psnr_bilinear"] > 0.1
    bench.n_frames = (5, 1)  # a 5-frame bench scores the neighbour means too
    assert len(bq.reference_scores(tmp_path, bench)) == 2 + 2 * len(bq.CLASSICAL)
    # a static movie's neighbours average its noise away
    still = tmp_path / "still"
    bq.write_test_set(still, {"m": np.stack([gt[0]] * 5)}, bench, 0, bq.em_to_unit)
    still_df = bq.reference_scores(still, bench).set_index(["degradation", "reference"])
    assert still_df.loc[("noisy", "mean5+bilinear"), "d_psnr_bilinear"] > 2
    assert still_df.loc[("clean", "mean3+bilinear"), "d_psnr_bilinear"] == pytest.approx(0, abs=1e-6)
