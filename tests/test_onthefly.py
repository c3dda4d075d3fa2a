"""Crappifying on the fly (issue 7): HR-only data sets, fresh seeded pairs, noise strength ranges, the
lr_space bottleneck rule, safe loading of optimizer state, and the quick.sh planner."""
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import tifffile
import torch

import utils  # noqa: F401
import train
from utils.crappifiers import (crappify, downsample, draw_bandwidth, draw_clean, draw_counts, draw_strength,
                               parse_bandwidth, parse_blur, parse_counts, parse_share, parse_strength, probe_blur,
                               scan_bandwidth, shot_noise)
from utils.data import EDGE_P, edge_window, find_hr_tiles
from utils.errors import PSSRError
from utils.model import load_model
from utils.norm import to_uint8
from utils.onthefly import Draws, FreshPairs, make_fly_dls, read_hr_stack
from utils.lrstats import fast_axis_ratio, noise_sigma
from utils.quick import (COUNTS_RANGE, NOISE_RANGE, SSIM_WEIGHT, SSIM_WEIGHT_TOLD, bandwidth_range, counts_range,
                         estimate_bandwidth, estimate_strength, make_plan, match_noise, pick_stride, pick_tile,
                         pick_workers, pipeline_rate, sample_rate, strength_range)
from utils.restore import frame_windows
from utils.tiling import DatasetSpec, make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hr_sets(sample_info, module_dir):
    """HR-only data sets of the sample data: EM single frames and 5-frame fluorescence stacks."""
    out = module_dir("hr_sets")
    make_dataset(out, sample_info, DatasetSpec([64], 8, 4, crap_func=None, only=["em"], seed=1))
    make_dataset(out / "mf", sample_info, DatasetSpec([64], 8, 4, crap_func=None, n_frames=5, lr_type="t",
                                                    only=["fluo_live"], seed=1))
    return out


def test_hr_only_data_set_layout(hr_sets):
    root = hr_sets / "s_1_sample_hr"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["hr_only"] and meta["lr_dirs"] == [] and meta["crap_func"] is None
    assert len(list((root / "hr_s_64" / "train").rglob("*.tif"))) == 8
    assert not any(p.name.startswith("lr") for p in root.iterdir())
    stacks = sorted((hr_sets / "mf" / "t_5_sample_hr" / "hrs_t_64_t_5" / "train").rglob("*.npy"))
    assert len(stacks) == 8 and np.load(stacks[0]).shape == (5, 64, 64)


def test_hr_stack_centre_is_the_paired_data_sets_hr_tile(sample_info, hr_sets, tmp_path):
    """Same seed, same plan: the HR-only stack's centre frame is the HR tile a paired data set would write."""
    make_dataset(tmp_path, sample_info, DatasetSpec([64], 8, 4, crap_func="new_crap_AG_SP", n_frames=5, lr_type="t",
                                                    only=["fluo_live"], seed=1))
    hr = sorted((tmp_path / "t_5_sample_new_crap_AG_SP" / "hr_t_64_t_5" / "train").rglob("*.tif"))
    stacks = sorted((hr_sets / "mf" / "t_5_sample_hr" / "hrs_t_64_t_5" / "train").rglob("*.npy"))
    assert [p.stem for p in hr] == [p.stem for p in stacks]
    assert np.array_equal(np.load(stacks[3])[2], tifffile.imread(hr[3]))


def test_fresh_pairs_are_seeded_and_new_every_epoch(hr_sets):
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    draws = Draws("em_AG_D_sameas_preprint", 4, (0.5, 2.0), seed=3, max_rotate=10, max_zoom=1.1)
    ds = FreshPairs(items, 1, 48, draws)
    a = [ds[i] for i in range(4)]
    again = FreshPairs(items, 1, 48, draws)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, [again[i] for i in range(4)]))
    ds.epoch = 1
    b = [ds[i] for i in range(4)]
    assert all(not torch.equal(x[0], y[0]) for x, y in zip(a, b))
    lr, hr = a[0]
    assert lr.shape == (1, 12, 12) and hr.shape == (1, 48, 48) and lr.dtype == hr.dtype == torch.float32
    # validation pairs do not change with the epoch
    va = FreshPairs(items, 1, 48, draws, train=False)
    v0 = va[0][0].clone()
    va.epoch = 5
    assert torch.equal(v0, va[0][0])


def test_lr_is_the_crappified_augmented_hr(hr_sets):
    """With a noiseless crappifier the LR is exactly the downsampled HR crop: augmentation happened before
    crappifying, and LR and HR stay aligned."""
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    ds = FreshPairs(items, 1, 48, Draws("no_crap"))
    for i in range(4):
        lr, hr = ds[i]
        assert np.array_equal(lr[0].numpy(), to_uint8(downsample(hr[0].numpy(), 4)) / np.float32(255))


def test_probe_blur_blurs_the_lr_only(hr_sets):
    """--crap_blur: the LR is sampled from the HR crop blurred with a sigma drawn per stack; the target stays sharp."""
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    sharp = FreshPairs(items, 1, 48, Draws("no_crap"))
    blurred = FreshPairs(items, 1, 48, Draws("no_crap", blur=(1.5, 1.5)))
    for i in range(3):
        (lr0, hr0), (lr1, hr1) = sharp[i], blurred[i]
        assert torch.equal(hr0, hr1)  # same crop, and no blur on the target
        want = to_uint8(downsample(probe_blur(hr1.numpy(), 1.5)[0], 4)) / np.float32(255)
        assert np.array_equal(lr1[0].numpy(), want) and not torch.equal(lr0, lr1)
    # a range draws its sigma per tile: the same crops, each smoothed by its own amount
    ranged = FreshPairs(items, 1, 48, Draws("no_crap", blur=(0.0, 1.5)))
    ratios = [float(ranged[i][0].std() / sharp[i][0].std()) for i in range(4)]
    assert all(r <= 1.001 for r in ratios) and len({round(r, 4) for r in ratios}) == 4, ratios
    assert parse_blur("0,1.5") == (0.0, 1.5) and parse_blur(1) == (1.0, 1.0)
    with pytest.raises(PSSRError, match="--crap_blur"):
        parse_blur("1.5,0")


def _lag1(a: np.ndarray, axis: int) -> float:
    """Correlation of neighbouring pixels along `axis`."""
    a = a - a.mean()
    n = a.shape[axis] - 1
    x, y = np.take(a, range(n), axis=axis), np.take(a, range(1, n + 1), axis=axis)
    return float((x * y).mean() / np.sqrt((x * x).mean() * (y * y).mean()))


def test_scan_bandwidth_correlates_noise_along_x_only():
    """--crap_bandwidth: white noise smoothed along x comes out correlated between neighbours along x, not y;
    the mean stays; sigma 0 returns the LR untouched."""
    noise = np.random.default_rng(0).normal(0.5, 0.1, (64, 64)).astype(np.float32)
    assert scan_bandwidth(noise, 0) is noise
    lined = scan_bandwidth(noise, 0.8)
    assert _lag1(lined, 1) > 0.5 and abs(_lag1(lined, 0)) < 0.1 and abs(_lag1(noise, 1)) < 0.1
    assert abs(lined.mean() - noise.mean()) < 1e-3 and lined.std() < 0.8 * noise.std()
    assert parse_bandwidth("0,1") == (0.0, 1.0) and parse_bandwidth(0) == (0.0, 0.0)
    with pytest.raises(PSSRError, match="--crap_bandwidth"):
        parse_bandwidth("1,0")


def test_bandwidth_smooths_the_lr_along_x_only(hr_sets):
    """--crap_bandwidth: each crappified LR frame is smoothed along x with a sigma drawn per stack, the target
    stays as it was; off (the default), the draws are those of before the option."""
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    plain = FreshPairs(items, 1, 48, Draws("no_crap"))
    lined = FreshPairs(items, 1, 48, Draws("no_crap", bandwidth=(1.0, 1.0)))
    for i in range(3):
        (lr0, hr0), (lr1, hr1) = plain[i], lined[i]
        assert torch.equal(hr0, hr1)
        want = to_uint8(scan_bandwidth(downsample(hr1[0].numpy(), 4), 1.0)) / np.float32(255)
        assert np.array_equal(lr1[0].numpy(), want) and not torch.equal(lr0, lr1)
    noisy = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint", bandwidth=(0.5, 1.0)))
    resid = [(lr[0] - torch.nn.functional.avg_pool2d(hr, 4)[0]).numpy() for lr, hr in (noisy[i] for i in range(4))]
    assert np.mean([_lag1(r, 1) - _lag1(r, 0) for r in resid]) > 0.2  # the noise runs along the lines
    zero = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint", bandwidth=(0.0, 0.0)))
    white = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint"))
    assert all(torch.equal(zero[i][0], white[i][0]) for i in range(3))


def _changed_stacks(hr_sets, **draws) -> Tuple[FreshPairs, List[bool]]:
    """Pairs of the sample tiles drawn with `draws` on `no_crap`, and which of their LR differ from no_crap's."""
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    plain = FreshPairs(items, 1, 48, Draws("no_crap"))
    some = FreshPairs(items, 1, 48, Draws("no_crap", **draws))
    return some, [not torch.equal(plain[i][0], some[i][0]) for i in range(len(items))]


def test_bandwidth_share_smooths_some_stacks_only(hr_sets):
    """--crap_bandwidth_share: that share of the stacks is smoothed along x, the rest keeps the white noise of
    runs without it; a share of 1 draws exactly what the option drew before, and off draws nothing."""
    rngs = [np.random.default_rng(3) for _ in range(3)]
    assert draw_bandwidth(rngs[0], (0.5, 1.0)) == draw_bandwidth(rngs[1], (0.5, 1.0), 1.0) > 0
    assert draw_bandwidth(rngs[2], (0.0, 0.0), 0.5) == draw_bandwidth(rngs[2], (0.5, 1.0), 0.0) == 0
    assert rngs[2].random() == np.random.default_rng(3).random()  # nothing drawn
    rng = np.random.default_rng(0)
    assert 0.25 < np.mean([draw_bandwidth(rng, (0.5, 1.0), 0.33) > 0 for _ in range(2000)]) < 0.41
    some, smoothed = _changed_stacks(hr_sets, bandwidth=(1.0, 1.0), bandwidth_share=0.5)
    assert any(smoothed) and not all(smoothed)
    for i in np.flatnonzero(smoothed):
        want = to_uint8(scan_bandwidth(downsample(some[i][1][0].numpy(), 4), 1.0)) / np.float32(255)
        assert np.array_equal(some[i][0][0].numpy(), want)
    assert parse_share(0.33) == 0.33 and parse_share(1) == 1.0
    for bad in (1.5, -0.1, "x", True):
        with pytest.raises(PSSRError, match="--crap_bandwidth_share"):
            parse_share(bad)


def test_shot_noise_on_each_lr_pixel(hr_sets):
    """--crap_counts: Poisson noise at the drawn counts for white on each LR pixel after crappifying (variance
    mean / counts, mean kept), the target untouched; off (the default) draws nothing, so old seeds hold."""
    flat = np.full((128, 128), 0.5, np.float32)
    assert shot_noise(flat, 0, np.random.default_rng(0)) is flat
    noisy = shot_noise(flat, 20, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and abs(noisy.mean() - 0.5) < 0.01 and noisy.var() == pytest.approx(0.5 / 20, 0.1)
    assert parse_counts("5,80") == (5.0, 80.0) and parse_counts(0) == (0.0, 0.0)
    for bad in ("0,5", "5,1", "x"):
        with pytest.raises(PSSRError, match="--crap_counts"):
            parse_counts(bad)
    rng = np.random.default_rng(3)
    assert draw_counts(rng, (0.0, 0.0)) == 0 and rng.random() == np.random.default_rng(3).random()
    assert 5 <= draw_counts(rng, (5.0, 80.0)) <= 80
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    plain = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint"))
    off = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint", counts=(0.0, 0.0)))
    shot = FreshPairs(items, 1, 48, Draws("em_AG_D_sameas_preprint", counts=(5.0, 5.0)))
    for i in range(3):
        (lr0, hr0), (lr1, hr1), (lr2, _) = plain[i], shot[i], off[i]
        assert torch.equal(hr0, hr1) and torch.equal(lr0, lr2)
        assert noise_sigma(lr1[0].numpy()) > 1.5 * noise_sigma(lr0[0].numpy())
        assert abs(float(lr1.mean() - lr0.mean())) < 0.05  # what clipping at white leaves of the mean


def test_counts_share_adds_shot_noise_to_some_stacks_only(hr_sets):
    """--crap_counts_share: that share of the stacks gets shot noise, the rest is drawn as without it; a share of
    1 draws exactly what --crap_counts drew before."""
    rngs = [np.random.default_rng(3) for _ in range(2)]
    assert draw_counts(rngs[0], (5.0, 80.0)) == draw_counts(rngs[1], (5.0, 80.0), 1.0) > 0
    rng = np.random.default_rng(0)
    assert draw_counts(rng, (5.0, 80.0), 0.0) == 0 and rng.random() == np.random.default_rng(0).random()
    assert 0.42 < np.mean([draw_counts(rng, (5.0, 80.0), 0.5) > 0 for _ in range(2000)]) < 0.58
    _, noisy = _changed_stacks(hr_sets, counts=(5.0, 5.0), counts_share=0.5)
    assert any(noisy) and not all(noisy)
    with pytest.raises(PSSRError, match="--crap_counts_share"):
        parse_share(2, "--crap_counts_share")


def test_clean_share_crappifies_some_stacks_without_noise(hr_sets):
    """--crap_clean_share: that share of the stacks is crappified without noise (exactly the downsampled HR),
    the rest as without it; a share of 0 draws no coin, so earlier seeds keep their pairs."""
    rng = np.random.default_rng(0)
    assert not draw_clean(rng, 0.0) and rng.random() == np.random.default_rng(0).random()
    assert 0.12 < np.mean([draw_clean(rng, 0.15) for _ in range(2000)]) < 0.18
    items = [f for _, f in find_hr_tiles(hr_sets, "s_1_sample_hr", "s", 64, 1, 48).pairs["train"]]
    noisy = FreshPairs(items, 1, 48, Draws("poisson"))
    zero, some = (FreshPairs(items, 1, 48, Draws("poisson", clean_share=c)) for c in (0.0, 0.5))
    clean = []
    for i in range(len(items)):
        (lr, hr), (lr0, _) = some[i], zero[i]
        assert torch.equal(lr0, noisy[i][0]) and torch.equal(hr, noisy[i][1])
        clean.append(np.array_equal(lr[0].numpy(), to_uint8(downsample(hr[0].numpy(), 4)) / np.float32(255)))
    assert any(clean) and not all(clean)
    assert not any(torch.equal(some[i][0], noisy[i][0]) for i in np.flatnonzero(clean))


def test_planner_adds_shot_noise_beyond_the_crappifiers_reach(sample_info, tmp_path):
    """LR_DIR scans noisier than MAX_STRENGTH x the paper's level (where the crappifier's own noise stops
    following its strength) give the plan shot noise at about their counts and the paper's strength range;
    scans at the paper's level give none."""
    import pandas as pd
    df = pd.read_csv(sample_info)
    em = df[df.category == "em"]
    rng = np.random.default_rng(2)
    for kind, counts in (("paper", 0), ("low_dose", 3)):
        _write_lr(tmp_path / kind, em,
                  lambda hr: shot_noise(crappify("em_AG_D_sameas_preprint", hr, 4, rng), counts, rng))
    paper, low = (match_noise(em, "em_AG_D_sameas_preprint", tmp_path / kind) for kind in ("paper", "low_dose"))
    assert paper["COUNTS"] == "0" and paper["STRENGTH"] != "0.2,2" and paper["LR_SIGMA"] < low["LR_SIGMA"]
    lo, hi = (float(v) for v in low["COUNTS"].split(","))
    counts = lo / COUNTS_RANGE[0]  # the estimate: the range's span is noise sigma 0.2-2x, the strength range's
    assert low["STRENGTH"] == "0.2,2" and hi == pytest.approx(counts * COUNTS_RANGE[1], 0.01) and 1.5 < counts < 6, low
    assert COUNTS_RANGE[1] / COUNTS_RANGE[0] == pytest.approx((NOISE_RANGE[1] / NOISE_RANGE[0]) ** 2)
    assert match_noise(em, "em_AG_D_sameas_preprint") == dict(STRENGTH="0.2,2", BANDWIDTH="0", COUNTS="0",
                                                              BANDWIDTH_SHARE=1, COUNTS_SHARE=1, CLEAN_SHARE=0.0)
    assert counts_range(4.0) == "1,100" and counts_range(0.0) == "0"


def test_multi_frame_fresh_pairs(hr_sets):
    spec = find_hr_tiles(hr_sets / "mf", "t_5_sample_hr", "t", 64, 5, 64)
    dls = make_fly_dls([f for _, f in spec.pairs["train"]], [f for _, f in spec.pairs["valid"]], 5, 64,
                       Draws("new_crap_AG_SP"), bs=4)
    xb, yb = dls.train.one_batch()
    assert xb.shape == (4, 5, 16, 16) and yb.shape == (4, 1, 64, 64)
    stack = read_hr_stack(spec.pairs["valid"][0][1], 5)
    lr, hr = dls.valid.dataset[0]
    assert torch.equal(hr[0], torch.from_numpy(stack[2]))  # the target is the centre frame


def test_edge_windows_are_image_gens_first_and_last_windows(hr_sets):
    """A share EDGE_P of training stacks is shown as image_gen shows a movie's first and last frame (the
    frames beyond the edge repeat it); validation stacks never are."""
    lr = np.arange(5)[:, None, None] * np.ones((5, 2, 2))
    rng = np.random.default_rng(0)
    drawn = {tuple(int(v) for v in edge_window(lr, rng)[:, 0, 0]) for _ in range(100)}
    # the windows of a 5-frame movie's first and last frame, shifted so that each is centred on frame 2
    movie = {tuple(i - t + 2 for i in w) for t, w in frame_windows(5, 5) if t in (0, 4)}
    assert drawn == movie == {(2, 2, 2, 3, 4), (0, 1, 2, 2, 2)}
    spec = find_hr_tiles(hr_sets / "mf", "t_5_sample_hr", "t", 64, 5, 64)
    items = [f for _, f in spec.pairs["train"]]

    def n_edge(ds, epochs):
        n = 0
        for ds.epoch in range(epochs):
            for i in range(len(ds)):
                x = ds[i][0].numpy()
                n += any(np.array_equal(x[j], x[j + 1]) for j in range(4))
        return n, epochs * len(ds)
    n, of = n_edge(FreshPairs(items, 5, 64, Draws("no_crap")), 10)
    assert 0.5 * EDGE_P * of < n < 2 * EDGE_P * of, (n, of)
    assert n_edge(FreshPairs(items, 5, 64, Draws("no_crap"), train=False), 3)[0] == 0


def test_strength_scales_the_noise():
    img = np.full((256, 256), 0.5, np.float32)
    sd = [crappify("em_AG_D_sameas_preprint", img, 1, np.random.default_rng(0), s).std() for s in (0, 0.5, 1, 2)]
    assert sd[0] == 0 and sd[1] < sd[2] < sd[3]
    assert sd[3] / sd[2] == pytest.approx(2, rel=0.1)
    assert parse_strength("0.25,1.5") == (0.25, 1.5) and parse_strength(1) == (1.0, 1.0)
    assert parse_strength([0.5, 2]) == (0.5, 2.0)
    for bad in ("2,1", "x", "-1"):
        with pytest.raises(PSSRError, match="--crap_strength"):
            parse_strength(bad)
    draws = [draw_strength(np.random.default_rng(i), 0.25, 4) for i in range(400)]
    assert min(draws) >= 0.25 and max(draws) <= 4 and abs(np.median(np.log(draws))) < 0.2  # log-uniform


def test_train_on_the_fly_end_to_end(hr_sets, tmp_path):
    train.main(datasetname="s_1_sample_hr", data_path=str(hr_sets), model_dir=str(tmp_path), save_name="fly",
               arch="resnet18", bs=4, size=64, tile_sz=64, cycles=1, lr=1e-3, attn=False, fp32=True,
               crap_func="em_AG_D_sameas_preprint", crap_strength="0.5,2", crap_blur="0,1", crap_bandwidth="0,0.8",
               crap_bandwidth_share=0.5, crap_counts="5,80", crap_counts_share=0.5, crap_clean_share=0.2,
               noise_channel=True)
    model, meta = load_model("s_1_fly_e1", tmp_path)
    assert meta["on_the_fly"] and meta["crap_func"] == "em_AG_D_sameas_preprint"
    assert meta["noise_channel"] and model.noise_channel and model.unet.layers[0][0].in_channels == 2
    assert meta["crap_strength"] == [0.5, 2.0] and meta["crap_blur"] == [0.0, 1.0] and meta["max_rotate"] == 10
    assert meta["crap_bandwidth"] == [0.0, 0.8] and meta["crap_bandwidth_share"] == 0.5
    assert meta["crap_counts"] == [5.0, 80.0] and meta["crap_counts_share"] == 0.5 and meta["crap_clean_share"] == 0.2
    assert isinstance(meta["beats_bilinear"], bool) and meta["bilinear_valid_loss"] > 0
    assert isinstance(meta["clean_gain_db"], float) and meta["lr_noise_level_min"] < meta["lr_noise_level"]
    assert torch.load(tmp_path / "s_1_fly_e1.opt", weights_only=True)["hypers"]  # plain, safe to load


def test_lr_space_refuses_a_collapsed_bottleneck(hr_sets, tmp_path):
    with pytest.raises(PSSRError, match="1x1 bottleneck"):
        train.main(datasetname="s_1_sample_hr", data_path=str(hr_sets), model_dir=str(tmp_path), lr_space=True,
                   encoder_stride=16, size=64, tile_sz=64, crap_func="no_crap", cycles=1)


def test_crafted_pickles_never_run(tmp_path):
    """A .opt or .ckpt that would run code when unpickled is refused with one line, and the code never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    from utils.model import load_safe
    for name in ("m.opt", "m.ckpt", "m.pth"):
        torch.save({"state": Evil()}, tmp_path / name)
        with pytest.raises(PSSRError, match="refusing to unpickle"):
            load_safe(tmp_path / name, "optimizer state")
    assert not marker.exists()


def _write_lr(folder: Path, rows, degrade) -> None:
    """Stand-ins for a lab's real LR scans (LR_DIR): each frame of the step-1 `rows`, normalized as step 1
    recorded it, degraded and stored as uint8."""
    from utils.norm import normalize
    from utils.sources import open_source
    folder.mkdir()
    for i, r in enumerate(rows.itertuples()):
        with open_source(r.fn) as src:
            hr = normalize(src.read(int(r.c), int(r.z), int(r.t)), r.mi, r.ma)
        tifffile.imwrite(folder / f"{i}.tif", to_uint8(degrade(hr)))


def test_planner_tiles_strides_and_noise_match(sample_info, tmp_path):
    import pandas as pd
    df = pd.read_csv(sample_info)
    assert pick_tile(df) in (256, 128) and pick_stride(256, 4) == 16 and pick_stride(128, 4) == 8
    # Real LR made by the same crappifier at 2x the paper's noise: the planner finds ~2.
    rng = np.random.default_rng(0)
    em = df[df.category == "em"]
    from utils.sources import open_source
    from utils.norm import normalize
    r = em.iloc[0]
    with open_source(r.fn) as src:
        hr = normalize(src.read(int(r.c), int(r.z), int(r.t)), r.mi, r.ma)
    (tmp_path / "lr").mkdir()
    tifffile.imwrite(tmp_path / "lr" / "a.tif", to_uint8(crappify("em_AG_D_sameas_preprint", hr, 4, rng, 2.0)))
    strength, sigma = estimate_strength(em, "em_AG_D_sameas_preprint", tmp_path / "lr")
    assert 1.4 < strength < 2.8 and sigma == pytest.approx(noise_sigma(tifffile.imread(tmp_path / "lr" / "a.tif")
                                                                       / 255.0), rel=0.3)
    # The range drawn from reaches down to nearly clean LR: a tenth of the top, around any centre.
    assert strength_range(1.0) == "0.2,2" and strength_range(strength) == f"{0.2 * strength:.3g},{2 * strength:.3g}"
    assert strength_range(strength, 0.1) == f"{0.1 * strength:.3g},{2 * strength:.3g}"


def test_planner_plans_for_a_tile_the_user_fixes(sample_info):
    """TILE from the environment (quick.sh gives it to the plan): the encoder stride and batch follow it, so a
    smaller tile keeps a >= 4x4 bottleneck (the plan made for 256 px kept stride 16: 2x2 at 128 px)."""
    import pandas as pd
    plan = make_plan(sample_info, "em_AG_D_sameas_preprint", minutes=0.05, arch="resnet18", tile=128)
    assert plan["TILE"] == 128 and plan["BS"] == 16 and plan["NET"] == "--lr_space --encoder_stride 8 --noise_channel"
    df = pd.read_csv(sample_info)
    side = int(df[["x", "y"]].min().min())
    assert pick_tile(df, side) == side
    with pytest.raises(PSSRError, match=f"TILE {side + 1} px is larger than the smallest frame"):
        pick_tile(df, side + 1)
    with pytest.raises(PSSRError, match="TILE 126 px is not a multiple of the scale 4"):
        pick_tile(df, 126)


def test_planner_reads_a_detectors_bandwidth_from_real_lr(sample_info, tmp_path):
    """LR_DIR scans smoothed along x (a detector's bandwidth) give the plan a --crap_bandwidth range around the
    sigma that was applied, and the noise level read through it; scans with white noise give none."""
    import pandas as pd
    df = pd.read_csv(sample_info)
    em = df[df.category == "em"]
    rng = np.random.default_rng(1)
    for kind, sigma in (("white", 0.0), ("lined", 0.8)):
        _write_lr(tmp_path / kind, em, lambda hr: scan_bandwidth(crappify("em_AG_D_sameas_preprint", hr, 4, rng),
                                                                 sigma))
    assert fast_axis_ratio(tifffile.imread(tmp_path / "lined/0.tif")) < 0.7
    assert estimate_bandwidth(em, "em_AG_D_sameas_preprint", tmp_path / "white") == 0
    found = estimate_bandwidth(em, "em_AG_D_sameas_preprint", tmp_path / "lined")
    assert 0.6 < found < 1.0, found
    strength, _ = estimate_strength(em, "em_AG_D_sameas_preprint", tmp_path / "lined", bandwidth=found)
    assert 0.7 < strength < 1.4, strength  # without the bandwidth the wavelet estimate reads it at ~half
    assert bandwidth_range(0.8) == "0.4,1.2" and bandwidth_range(0.0) == "0"


def test_planner_paces_training_by_the_slower_of_network_and_data(sample_info):
    """Beside a GPU, data-loader workers crappify; the plan's rate is the slower of the two sides."""
    import pandas as pd
    assert pick_workers("cpu") == 0 and pick_workers("cuda") >= 1
    assert pipeline_rate(12.0, 48.0, 0) == pytest.approx(9.6)  # one process: network and crappifying take turns
    assert pipeline_rate(1000.0, 20.0, 8) == pytest.approx(0.9 * 8 * 20)  # data-bound GPU
    assert pipeline_rate(100.0, 20.0, 8) == 100.0  # network-bound
    df = pd.read_csv(sample_info)
    one, five = (sample_rate(df[df.category == "em"], "em_AG_D_sameas_preprint", 64, n, threads=1) for n in (1, 5))
    assert one > five > 0  # five frames to crappify per sample cost more


def run_quick(sample_tree: Path, tmp_path: Path, category: str, crap_func: str, *n_frames: str, **settings):
    """quick.sh on one category of the sample tree, plan values fixed small through the environment
    (`settings` change them; None leaves one to the plan)."""
    import os
    env = {**os.environ, "PY": sys.executable, "MINUTES": "3", "ARCH": "resnet18", "TILE": "128", "N_TRAIN": "8",
           "N_VALID": "4", "EPOCHS": "1", "BS": "4", "NET": "--lr_space --encoder_stride 8",
           "TRAIN_EXTRA": "--noattn --fp32"}
    env.update(settings)
    env = {k: v for k, v in env.items() if v is not None}
    kind = next(p.name for p in sample_tree.iterdir() if (p / category).is_dir())
    src = tmp_path / kind  # a folder named live holds time-lapses (step 1)
    (src / category).mkdir(parents=True)
    for split in ("train", "valid"):
        os.symlink(sample_tree / kind / category / split, src / category / split)
    r = subprocess.run(["bash", str(ROOT / "recipes" / "quick.sh"), str(src), str(tmp_path / "work"), crap_func,
                        *n_frames], capture_output=True, text=True, env=env, timeout=600,
                       cwd=tmp_path)  # from any folder, as a user would
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1], r.stderr


def test_quick_sh_end_to_end(sample_tree, tmp_path):
    """quick.sh on the sample EM: the last line printed is the model's name, and the model was trained on the
    fly with the planned network (told the noise level)."""
    name, log = run_quick(sample_tree, tmp_path, "em", "em_AG_D_sameas_preprint", NET=None, TILE="256")
    assert name == "s_1_quick_em_AG_D_sameas_preprint_e1"
    _, meta = load_model(name, tmp_path / "work" / "models")
    assert meta["on_the_fly"] and meta["lr_space"] and meta["encoder_stride"] == 16 and meta["size"] == 256
    assert meta["noise_channel"] and "NET=--lr_space --encoder_stride 16 --noise_channel\n" in log
    assert meta["lr_head"] == "subpixel" and meta["average_epochs"] == 4 and meta["crap_blur"] == [0, 0]
    assert meta["loss"] == "l1" and meta["ssim_weight"] == SSIM_WEIGHT_TOLD > SSIM_WEIGHT > 0
    assert meta["load_name"] is None and "LR=0.01" in log
    assert "STRENGTH=0.2,2" in log  # no LR_DIR: 0.2-2x the paper's noise level
    assert "BANDWIDTH=0\n" in log and meta["crap_bandwidth"] == [0, 0]  # and white noise, as the paper
    assert "COUNTS=0\n" in log and meta["crap_counts"] == [0, 0]  # and no shot noise of its own
    assert 0.5 < meta["lr_fast_axis_ratio"] < 1.15 and 0 < meta["lr_noise_level"] < 0.5  # image_gen's reference


def test_quick_sh_fits_epochs_to_the_time_left(sample_tree, tmp_path):
    """EPOCHS left to the plan: train.py gets the time left (--minutes; of a 1-minute budget, at least the floor
    of 0.1) and re-plans the epochs from the first one's time (tiny epochs: up to 4x the plan), and the model is
    named without `_e{epochs}`. Plan values fixed from the environment (BANDWIDTH, COUNTS and their shares)
    reach train.py."""
    name, log = run_quick(sample_tree, tmp_path, "em", "em_AG_D_sameas_preprint", MINUTES="1", EPOCHS=None,
                          BANDWIDTH="0.5,1", BANDWIDTH_SHARE="0.4", COUNTS="5,80", COUNTS_SHARE="0.5")
    assert name == "s_1_quick_em_AG_D_sameas_preprint"
    _, meta = load_model(name, tmp_path / "work" / "models")
    assert meta["crap_bandwidth"] == [0.5, 1.0] and meta["crap_bandwidth_share"] == 0.4
    assert meta["crap_counts"] == [5.0, 80.0] and meta["crap_counts_share"] == 0.5
    assert "bandwidth 0.5,1 for 0.4 of the tiles, counts 5,80 for 0.5 of the tiles" in log
    planned = int(next(ln.split("=")[1] for ln in log.splitlines() if ln.strip().startswith("EPOCHS=")))
    assert 0.1 <= meta["schedule"][0]["stages"][0]["minutes"] < 1 and 1 <= meta["epochs"] <= 4 * planned


def test_quick_sh_multi_frame_starts_from_one_frame_model(sample_tree, tmp_path):
    """N_FRAMES 5: quick.sh trains a 1-frame model first and the 5-frame one from its weights, at the
    fine-tuning rate, both on L1 alone (no SSIM term in a multi-frame run); the last line names the 5-frame
    model; fluorescence models are not told the noise level (quick.TOLD_NOISE); CLEAN_SHARE reaches both."""
    name, log = run_quick(sample_tree, tmp_path, "fluo_live", "new_crap_AG_SP", "5", NET=None, CLEAN_SHARE="0.25")
    assert name == "t_5_quick_new_crap_AG_SP_e1"
    models = tmp_path / "work" / "models"
    _, one = load_model("s_1_quick_new_crap_AG_SP_e1", models)
    _, five = load_model(name, models)
    assert one["n_frames"] == 1 and five["n_frames"] == 5 and five["load_name"] == "s_1_quick_new_crap_AG_SP_e1"
    assert [line.strip() for line in log.splitlines() if line.strip().startswith("LR=")] == ["LR=0.01", "LR=0.002"]
    assert one["loss"] == five["loss"] == "l1" and one["ssim_weight"] == five["ssim_weight"] == 0
    assert not one["noise_channel"] and not five["noise_channel"]
    assert one["crap_clean_share"] == five["crap_clean_share"] == 0.25 and "noise-free 0.25" in log
    assert one["crap_strength"] == five["crap_strength"] == [0.1, 2.0]  # blind: down to 0.1x (quick.BLIND_FLOOR)
    assert re.search(r"NET=--lr_space --encoder_stride \d+\n", log)


# The lr_space case trains the `icnr` head: a head of 1x1 convs and pixel shuffles cannot make the output depend on
# the input's size, so what this tests is the U-Net body (its bottleneck). The paper's network trains with
# --residual: without it, 16 steps leave an output that correlates ~0.2 with its input, and the whole-vs-tiled
# difference of such noise swings 0.1-2.8x the contrast between seeds (0.003-0.006 with it).
AGREEMENT = [dict(lr_space=True, encoder_stride=8, lr=3e-2, lr_start=3e-2, lr_head="icnr"),
             dict(lr=1e-3, residual=True)]


@pytest.mark.parametrize("net", AGREEMENT, ids=["lr_space", "paper"])
def test_model_agrees_whole_and_tiled(sample_info, tmp_path, net):
    """A model trained on 128-px HR crops (32-px LR; lr_space with a stride-8 encoder, or the paper's network,
    both a 4x4 bottleneck) gives the same image whole or in tiles of its training size, on an input 5x larger
    than the crop, to a quarter of the image's contrast (its mean absolute deviation): lr_space 0.004-0.11 over
    6 seeds; with a 1x1 bottleneck (stride-32 encoder, train.py's check bypassed) 1.1-6.6 in 3 seeds of 4. The
    difference over the model's correction of bilinear does not tell the two apart (0.04-1.8 and 0.4-0.7):
    16 training steps leave small, seed-dependent corrections. Real models: README, Steps 4-5."""
    from utils.restore import Predictor, restore_frame
    from tests.restore_helpers import smooth_image
    make_dataset(tmp_path / "ds", sample_info, DatasetSpec([128], 16, 4, crap_func=None, only=["em"], seed=2))
    train.main(datasetname="s_1_sample_hr", data_path=str(tmp_path / "ds"), model_dir=str(tmp_path), save_name="ws",
               arch="resnet18", bs=4, size=128, tile_sz=128, cycles=4, crap_func="em_AG_D_sameas_preprint",
               max_rotate=0, max_zoom=1, **net)
    model, meta = load_model("s_1_ws_e4", tmp_path)
    img = smooth_image((160, 160), seed=4).astype(np.float32) / 4000
    pred = Predictor(model, 4)
    band = lambda y0, h: img[None, y0:y0 + h]  # noqa: E731
    whole = np.concatenate(list(restore_frame(band, 160, 160, pred, 4)))
    tiled = np.concatenate(list(restore_frame(band, 160, 160, pred, 4, tile=meta["size"] // 4, overlap=8)))
    bilinear = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], scale_factor=4,
                                               mode="bilinear")[0, 0].numpy()
    assert not np.array_equal(whole, bilinear)
    assert np.abs(whole - tiled).mean() < 0.25 * np.abs(bilinear - bilinear.mean()).mean()


def test_a_model_no_better_than_bilinear_says_so(hr_sets, tmp_path, capsys):
    """lr 0 leaves the residual model at bilinear upsampling: the .json and a warning must say so."""
    train.main(datasetname="s_1_sample_hr", data_path=str(hr_sets), model_dir=str(tmp_path), save_name="flat",
               arch="resnet18", bs=4, size=64, tile_sz=64, cycles=1, lr=0.0, attn=False, fp32=True,
               crap_func="no_crap", residual=True)
    _, meta = load_model("s_1_flat_e1", tmp_path)
    assert meta["beats_bilinear"] is False and abs(meta["clean_gain_db"]) < 1e-3
    err = capsys.readouterr().err
    assert "does not beat bilinear" in err and "+0.00 dB over bilinear on noise-free LR" in err
