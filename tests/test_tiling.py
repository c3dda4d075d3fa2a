"""Step 2: tile layout, content, determinism, multi-frame, bounded memory and bad inputs."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import make_category, run_script, textured
from czi_writer import write_czi
from utils.crappifiers import downsample
from utils.errors import PSSRError
from utils.info import INFO_COLS, build_info, write_info
from utils.norm import normalize, to_uint8
from utils.sources import open_source
from utils.tiling import FG_FRAC, TILE_COLS, DatasetSpec, make_dataset

import utils.tiling as tiling


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _expected_hr(row, offset=0, axis=None):
    c, z, t = int(row.c), int(row.z), int(row.t)
    if axis == "t":
        t += offset
    if axis == "z":
        z += offset
    with open_source(row.fn, live=row.nt > 1 and row.nz == 1) as s:
        raw = s.read(c, z, t, (int(row.y0), int(row.x0), int(row.tile_sz), int(row.tile_sz)))
    return to_uint8(normalize(raw, row.mi, row.ma))


@pytest.fixture(scope="module")
def single(sample_info, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds1")
    make_dataset(out, sample_info, DatasetSpec([64], 12, 4, "new_crap_AG_SP", seed=3))
    return out / "s_1_sample_new_crap_AG_SP"


def test_single_frame_layout_and_csv(single, sample_info):
    meta = json.loads((single / "dataset.json").read_text())
    assert {"scale": 4, "tile": 64, "n_frames": 1, "lr_type": "s", "crap_func": "new_crap_AG_SP",
            "upsample": False, "seed": 3, "norm": {"lo": 2.0, "hi": 99.99}}.items() <= meta.items()
    tiles = pd.read_csv(single / "tiles.csv")
    assert list(tiles.columns) == INFO_COLS + TILE_COLS
    assert list(tiles.id) == list(range(16)) and (tiles.dsplit == "train").sum() == 12
    hr = sorted((single / "hr_s_64").rglob("*.tif"))
    lr = sorted((single / "lr_s_64").rglob("*.tif"))
    assert [p.relative_to(single / "hr_s_64") for p in hr] == [p.relative_to(single / "lr_s_64") for p in lr]
    assert len(hr) == 16 and hr[0].name.startswith("000") and hr[0].parent.parent.name in ("train", "valid")
    for _, row in tiles.iterrows():
        name = f"{row.dsplit}/{row.category}/{row.id:06d}_{row.fn.rsplit('/', 1)[1][:-4]}.tif"
        h, l = tifffile.imread(single / "hr_s_64" / name), tifffile.imread(single / "lr_s_64" / name)
        assert h.dtype == l.dtype == np.uint8 and h.shape == (64, 64) and l.shape == (16, 16)
        # HR is the CSV's frame and box, normalized with the frame's 2 / 99.99 percentiles
        assert np.array_equal(h, _expected_hr(row))
        assert row.after_mean == pytest.approx(h.mean()) and (row.after_min, row.after_max) == (h.min(), h.max())
        assert row.fg_frac >= FG_FRAC
    assert set(tiles.category) == {"em", "fluo_live"}  # categories drawn uniformly


def test_same_seed_byte_identical_whatever_the_workers(single, sample_info, tmp_path):
    make_dataset(tmp_path, sample_info, DatasetSpec([64], 12, 4, "new_crap_AG_SP", seed=3), workers=2)
    assert _files(tmp_path / single.name) == _files(single)
    make_dataset(tmp_path / "other", sample_info, DatasetSpec([64], 12, 4, "new_crap_AG_SP", seed=4))
    assert _files(tmp_path / "other" / single.name) != _files(single)


def test_multi_frame_centre_and_neighbours(sample_info, tmp_path):
    make_dataset(tmp_path, sample_info, DatasetSpec([64], 6, 2, "no_crap", n_frames=5, lr_type="t", only=["fluo_live"],
                                                 seed=1))
    root = tmp_path / "t_5_sample_no_crap"
    tiles = pd.read_csv(root / "tiles_t_5.csv")
    assert ((tiles.t >= 2) & (tiles.t <= tiles.nt - 3)).all()
    for _, row in tiles.iterrows():
        name = f"{row.dsplit}/{row.category}/{row.id:06d}_{row.fn.rsplit('/', 1)[1][:-4]}"
        hr = tifffile.imread(root / "hr_t_64_t_5" / f"{name}.tif")
        lr = np.load(root / "lr_t_64_t_5" / f"{name}.npy")
        assert lr.shape == (5, 16, 16) and lr.dtype == np.uint8
        assert np.array_equal(hr, _expected_hr(row))
        for k in range(5):  # frames t-2..t+2 of the same box, normalized with the centre's mi/ma
            frame = _expected_hr(row, k - 2, "t")
            assert np.array_equal(lr[k], to_uint8(downsample(frame / np.float32(255), 4)))


def test_upsample_and_several_tile_sizes(sample_info, tmp_path):
    spec = DatasetSpec([32, 64], 3, 1, "em_AG_D_sameas_preprint", upsample=True, only=["em"])
    make_dataset(tmp_path, sample_info, spec)
    root = tmp_path / "s_1_sample_em_AG_D_sameas_preprint"
    for ts in (32, 64):
        lr = sorted((root / f"lrup_s_{ts}").rglob("*.tif"))
        assert len(lr) == 4 and tifffile.imread(lr[0]).shape == (ts, ts)
    assert json.loads((root / "dataset.json").read_text())["tiles"] == [32, 64]


def test_background_rejection(tmp_path, capsys):
    img = np.zeros((512, 512), np.uint16)
    img[100:250, 300:450] = textured((150, 150), seed=2)  # the only foreground
    src = make_category(tmp_path / "src", "c", train={"a.tif": img}, valid={"flat.tif": np.full((128, 128), 7, np.uint16)})
    info = write_info(build_info([src]), tmp_path / "i.csv")
    make_dataset(tmp_path, info, DatasetSpec([64], 10, 2, "no_crap"))
    tiles = pd.read_csv(tmp_path / "s_1_i_no_crap" / "tiles.csv")
    train = tiles[tiles.dsplit == "train"]
    assert (train.fg_frac >= FG_FRAC).all()  # each kept box overlaps the foreground enough
    assert ((train.y0 + 64 > 100) & (train.y0 < 250) & (train.x0 + 64 > 300) & (train.x0 < 450)).all()
    # a frame with no foreground at all: best of MAX_TRIES kept, warned about, counted
    assert (tiles[tiles.dsplit == "valid"].fg_frac == 0).all()
    assert "no 64 px box with 30% foreground" in capsys.readouterr().err
    assert json.loads((tmp_path / "s_1_i_no_crap" / "dataset.json").read_text())["n_mostly_background"] == 2


def test_czi_mosaic_source(tmp_path):
    data = np.stack([textured((5, 150, 170), seed=s) for s in (5, 6)])  # C, T, Y, X
    src = tmp_path / "live"
    (src / "c" / "train").mkdir(parents=True)
    (src / "c" / "valid").mkdir(parents=True)
    write_czi(src / "c" / "train" / "a.czi", data, "CTYX", pixel_size_um=0.05, tile=64)
    write_czi(src / "c" / "valid" / "b.czi", data, "CTYX", pixel_size_um=0.05, tile=100)
    info = write_info(build_info([src], channel="all"), tmp_path / "czi.csv")
    make_dataset(tmp_path, info, DatasetSpec([64], 4, 2, "no_crap", n_frames=3, lr_type="t", seed=2))
    tiles = pd.read_csv(tmp_path / "t_3_czi_no_crap" / "tiles_t_3.csv")
    for _, row in tiles.iterrows():
        y, x = int(row.y0), int(row.x0)
        raw = data[int(row.c), int(row.t), y:y + 64, x:x + 64]
        name = f"{row.dsplit}/c/{row.id:06d}_{row.fn.rsplit('/', 1)[1][:-4]}.tif"
        assert np.array_equal(tifffile.imread(tmp_path / "t_3_czi_no_crap" / "hr_t_64_t_3" / name),
                              to_uint8(normalize(raw, row.mi, row.ma)))


def test_interrupted_run_leaves_no_half_tile_and_refuses_rerun(sample_info, tmp_path, monkeypatch):
    calls = []

    def dying_save_npy(dest, arr):
        calls.append(dest)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save_npy(dest, arr)
    save_npy = tiling.save_npy
    monkeypatch.setattr(tiling, "save_npy", dying_save_npy)
    args = (tmp_path, sample_info, DatasetSpec([64], 4, 1, "no_crap", n_frames=5, lr_type="t", only=["fluo_live"]))
    with pytest.raises(KeyboardInterrupt):
        make_dataset(*args)
    root = tmp_path / "t_5_sample_no_crap"
    assert not list(root.rglob("*.tmp")) and not (root / "dataset.json").exists()
    assert len(list(root.rglob("*.npy"))) == 2
    monkeypatch.undo()
    with pytest.raises(PSSRError, match="incomplete data set.*--clean"):
        make_dataset(*args)
    make_dataset(*args, clean=True)
    assert len(list(root.rglob("*.npy"))) == 5 and (root / "dataset.json").exists()


@pytest.mark.parametrize("case,match", [
    ("small", "smaller than the 128 px tile"),
    ("frames", "too few frames for --n_frames 5"),
    ("columns", "missing columns: mi, ma"),
    ("crap", "unknown crappifier"),
    ("scale", "multiple of --scale"),
    ("even", "--n_frames must be odd"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, case, match):
    src = make_category(tmp_path / "live", "c", train={"a.tif": textured((3, 100, 100))},
                        valid={"b.tif": textured((3, 100, 100))})
    info = write_info(build_info([src]), tmp_path / "i.csv")
    kw = dict(tiles=[64], n_train=2, n_valid=1, crap_func="no_crap")
    if case == "small":
        kw["tiles"] = [128]
    if case == "frames":
        kw.update(n_frames=5, lr_type="t")
    if case == "columns":
        pd.read_csv(info).drop(columns=["mi", "ma"]).to_csv(info, index=False)
    if case == "crap":
        kw["crap_func"] = "nope"
    if case == "scale":
        kw["tiles"] = [66]
    if case == "even":
        kw.update(n_frames=4, lr_type="t")
    with pytest.raises(PSSRError, match=match) as e:
        make_dataset(tmp_path / "o", info, DatasetSpec(**kw))
    assert "\n" not in str(e.value)
    if case in ("small", "frames"):
        assert "a.tif" in str(e.value)
    if case == "columns":
        assert str(info) in str(e.value)


def test_one_unusable_file_among_many_is_skipped_and_counted(tmp_path, capsys):
    src = make_category(tmp_path / "src", "c", train={"a.tif": textured((100, 100)), "tiny.tif": textured((40, 40))},
                        valid={"b.tif": textured((100, 100))})
    info = write_info(build_info([src]), tmp_path / "i.csv")
    meta = make_dataset(tmp_path, info, DatasetSpec([64], 5, 1, "no_crap"))
    assert meta["n_files_skipped"] == 1 and "tiny.tif" in capsys.readouterr().err
    assert "tiny" not in pd.read_csv(tmp_path / "s_1_i_no_crap" / "tiles.csv").fn.str.cat()


def test_cli_list_flags_and_exit_codes(sample_info, tmp_path):
    args = ["tile_from_info.py", "--out", tmp_path, "--info", sample_info, "--tile", "32", "64",
            "--n_train", "2", "--n_valid", "1", "--crap_func", "no_crap", "--only", "em", "fluo_live"]
    r = run_script(*args)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "s_1_sample_no_crap"
    assert (root / "hr_s_32").is_dir() and (root / "lr_s_64").is_dir()
    r = run_script(*args)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--clean" in r.stderr
    r = run_script(*args, "--clean", "--crap_func", "nope")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown crappifier 'nope'")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_20000_square_uint16_tiff_stays_under_400_mb(tmp_path):
    """Steps 1 and 2 on a 20000² uint16 TIFF (800 MB) with a fresh process each, peak RSS measured."""
    n, rows = 20000, 500
    base = textured((rows, n), seed=9)
    strips = (np.roll(base, y // rows, axis=1) for y in range(0, n, rows))  # never the whole image in memory
    src = tmp_path / "src" / "big"
    for split in ("train", "valid"):
        (src / split).mkdir(parents=True)
    big = src / "train" / "big.tif"
    tifffile.imwrite(big, strips, shape=(n, n), dtype=np.uint16, rowsperstrip=rows)
    (src / "valid" / "big.tif").symlink_to(big)
    info = tmp_path / "big.csv"
    peak = []
    for args in (["gen_sample_info.py", "--out", info, src.parent],
                 ["tile_from_info.py", "--out", tmp_path, "--info", info, "--tile", "128", "256",
                  "--n_train", "20", "--n_valid", "4", "--crap_func", "new_crap_AG_SP"]):
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        r = run_script("-c", code, sys.executable, *args)
        rc, kib = map(int, r.stdout.split()[-2:])
        assert rc == 0, r.stderr
        peak.append(kib / 1024)
    print(f"peak RSS step 1, step 2: {peak[0]:.0f}, {peak[1]:.0f} MB")
    assert max(peak) < 400, f"peak RSS {peak} MB"
    tiles = pd.read_csv(tmp_path / "s_1_big_new_crap_AG_SP" / "tiles.csv")
    in_one_strip = tiles[(tiles.tile_sz == 128) & (tiles.y0 % rows <= rows - 128)]
    assert len(in_one_strip) > 5
    for _, row in in_one_strip.iterrows():  # the tiles hold the file's pixels at their boxes
        y, x = int(row.y0), int(row.x0)
        expected = np.roll(base, y // rows, axis=1)[y % rows:y % rows + 128, x:x + 128]
        hr = tifffile.imread(tmp_path / "s_1_big_new_crap_AG_SP" / "hr_s_128" / row.dsplit / "big" / f"{row.id:06d}_big.tif")
        assert np.array_equal(hr, to_uint8(normalize(expected, row.mi, row.ma)))


@pytest.mark.parametrize("kind", ["little_endian", "big_endian", "zlib_tiled", "czi_mosaic"])
def test_box_and_subsample_reads_match_the_pixels(tmp_path, kind):
    """The reads tiling (box) and step 1 (step) rely on, for each storage layout."""
    data = textured((2, 3, 90, 110), seed=4)  # T, Z, Y, X
    p = tmp_path / ("a.czi" if kind == "czi_mosaic" else "a.tif")
    if kind == "czi_mosaic":
        write_czi(p, data, "TZYX", tile=32)
    else:
        extra = dict(compression="zlib", tile=(32, 32)) if kind == "zlib_tiled" else {}
        tifffile.imwrite(p, data, metadata={"axes": "TZYX"}, photometric="minisblack",
                         byteorder=">" if kind == "big_endian" else "<", **extra)
    with open_source(p) as s:
        assert (s.nt, s.nz, s.ny, s.nx) == (2, 3, 90, 110)
        assert np.array_equal(s.read(0, 2, 1), data[1, 2])
        assert np.array_equal(s.read(0, 1, 1, (7, 33, 40, 50)), data[1, 1, 7:47, 33:83])
        assert np.array_equal(s.read(0, 0, 1, (5, 6, 80, 100), step=3), data[1, 0, 5:85:3, 6:106:3])


def _stamps(root):
    return {p.relative_to(root): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["single", "multi_frame_hr_only"])
def test_resume_finishes_the_plan_byte_identical(sample_info, tmp_path, kind):
    """Interrupted data set (no dataset.json / tiles CSV, tiles missing, one cut short, a killed run's temporary):
    --resume rewrites only what is missing or broken and ends byte-identical to an uninterrupted run."""
    import shutil
    import subprocess
    kw = dict(crap_func="new_crap_AG_SP", seed=5) if kind == "single" else \
        dict(crap_func=None, n_frames=5, lr_type="t", only=["fluo_live"], seed=5)
    args = (sample_info, DatasetSpec([64], 6, 2, **kw))
    make_dataset(tmp_path / "full", *args)
    name = "s_1_sample_new_crap_AG_SP" if kind == "single" else "t_5_sample_hr"
    full, part = tmp_path / "full" / name, tmp_path / "part" / name
    shutil.copytree(full, part)
    (part / "dataset.json").unlink()
    next(part.glob("tiles*.csv")).unlink()
    tiles = sorted(p for p in part.rglob("*") if p.suffix in (".tif", ".npy"))
    for p in tiles[1:4]:
        p.unlink()
    tiles[5].write_bytes(tiles[5].read_bytes()[:-50])  # cut short: redone with a warning
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tiles[1].parent / f".{tiles[1].name}.{dead.pid}.tmp"
    stale.write_bytes(b"half")
    touched = {p.stem for p in tiles[1:4] + tiles[5:6]}  # a tile is its HR and LR files: both are redone
    kept = {k: v for k, v in _stamps(part).items() if k.stem not in touched and k.name[0] != "."}
    assert len(kept) >= 4
    with pytest.raises(PSSRError, match="incomplete data set.*--resume.*--clean"):
        make_dataset(tmp_path / "part", *args)
    with pytest.raises(PSSRError, match="not both"):
        make_dataset(tmp_path / "part", *args, resume=True, clean=True)
    make_dataset(tmp_path / "part", *args, resume=True, workers=1 if kind == "single" else 2)
    assert _files(part) == _files(full)
    after = _stamps(part)
    assert all(after[k] == v for k, v in kept.items())  # not rewritten
    assert not stale.exists()
    with pytest.raises(PSSRError, match="complete.*nothing to resume"):
        make_dataset(tmp_path / "part", *args, resume=True)


def test_resume_refuses_a_data_set_of_other_options(sample_info, tmp_path):
    args = (tmp_path, sample_info)
    make_dataset(*args, DatasetSpec([64], 6, 2, "no_crap", seed=1))
    root = tmp_path / "s_1_sample_no_crap"
    (root / "dataset.json").unlink()
    before = _files(root)
    with pytest.raises(PSSRError, match="(other pixels|not a file of this command's plan).*--resume.*--clean") as e:
        make_dataset(*args, DatasetSpec([64], 6, 2, "no_crap", seed=2), resume=True)
    assert "\n" not in str(e.value) and str(root) in str(e.value)
    assert _files(root) == before


def test_resume_after_sigkill_via_cli(sample_info, tmp_path):
    """A real SIGKILL mid-run, then the same command with --resume: the same bytes as an uninterrupted run."""
    import signal
    import subprocess
    import time
    from conftest import ROOT
    cmd = [sys.executable, "tile_from_info.py", "--info", sample_info, "--tile", "64", "--n_train", "150",
           "--n_valid", "10", "--crap_func", "new_crap_AG_SP", "--seed", "7"]
    root = tmp_path / "part" / "s_1_sample_new_crap_AG_SP"
    proc = subprocess.Popen(cmd + ["--out", tmp_path / "part"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(root.rglob("*.tif"))) < 20 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "dataset.json").exists(), "finished before the kill: raise --n_train"
    r = run_script(*cmd[1:], "--out", tmp_path / "part")
    assert r.returncode == 2 and "--resume" in r.stderr and r.stderr.strip().count("\n") == 0
    r = run_script(*cmd[1:], "--out", tmp_path / "part", "--resume")
    assert r.returncode == 0, r.stderr
    assert not list(root.rglob(".*.tmp"))
    r = run_script(*cmd[1:], "--out", tmp_path / "full")
    assert r.returncode == 0, r.stderr
    assert _files(root) == _files(tmp_path / "full" / root.name)
