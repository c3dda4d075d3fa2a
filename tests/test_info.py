"""Step 1: the info CSV (columns, one row per frame, statistics) and its bad inputs."""
import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import make_category, run_script, textured
from czi_writer import write_czi
from utils.errors import PSSRError
from utils.info import INFO_COLS, build_info, frame_rows
from utils.sources import open_source

ORIGINAL_COLS = ["category", "dsplit", "multi", "ftype", "uint8", "mean", "sd", "all_rmax", "all_mi", "all_ma",
                 "mi", "ma", "rmax", "nc", "nz", "nt", "c", "z", "t", "x", "y", "fn"]


@pytest.fixture(scope="module")
def info(sample_info):
    return pd.read_csv(sample_info)


def test_columns_in_the_issues_order(info):
    assert list(info.columns) == ORIGINAL_COLS + ["pixel_size"] == INFO_COLS


def test_one_row_per_frame(info):
    counts = info.groupby(["category", "dsplit"]).size().to_dict()
    assert counts == {("em", "train"): 2 + 7, ("em", "valid"): 1, ("fluo_live", "train"): 12, ("fluo_live", "valid"): 10}
    live = info[info.category == "fluo_live"]
    assert (live.nz == 1).all() and set(live[live.dsplit == "train"].t) == set(range(12))
    zs = info[info.fn.str.endswith("em_zstack.tif")]
    assert list(zs.z) == list(range(7)) and (zs.nt == 1).all() and (zs.multi == 1).all()
    assert (info[info.fn.str.endswith("em_train_0.tif")].multi == 0).all()


def test_statistics_match_the_frames(info):
    for _, r in info.sample(6, random_state=0).iterrows():
        with open_source(r.fn, live="fluo_live" in r.fn) as s:
            x = s.read(r.c, r.z, r.t)
        mi, ma = np.percentile(x, [2, 99.99])
        assert (r.mi, r.ma) == pytest.approx((mi, ma))
        assert (r["mean"], r.sd) == pytest.approx((x.mean(), x.std()))
        assert (r.x, r.y) == (x.shape[1], x.shape[0])
        assert r.uint8 == (x.dtype == np.uint8) and r.rmax == np.iinfo(x.dtype).max
        assert r.ftype == "tif" and r.pixel_size > 0
    for fn, rows in info.groupby("fn"):
        assert rows.all_mi.nunique() == 1 and rows.all_rmax.iloc[0] >= rows.mi.max()


def test_huge_frames_use_a_documented_subsample(tmp_path):
    x = textured((300, 400), seed=1)
    tifffile.imwrite(tmp_path / "a.tif", x)
    with open_source(tmp_path / "a.tif") as s:
        (row,) = frame_rows(s, "c", "train", max_pixels=13_400)  # -> every 3rd pixel in y and x
    sub = x[::3, ::3]
    assert (row["mi"], row["ma"], row["mean"]) == pytest.approx((*np.percentile(sub, [2, 99.99]), sub.mean()))
    assert row["mi"] == pytest.approx(np.percentile(x, 2), rel=0.02)


def test_only_skip_and_channels_with_czi(tmp_path):
    src = make_category(tmp_path / "src", "a", train={"a.tif": textured((64, 64))}, valid={"b.tif": textured((64, 64))})
    make_category(src, "b", train={}, valid={})
    data = np.stack([textured((2, 80, 96), seed=s) for s in (3, 4)])  # C, Z, Y, X
    write_czi(src / "b" / "train" / "c.czi", data, "CZYX", pixel_size_um=0.01, tile=40)
    write_czi(src / "b" / "valid" / "d.czi", data[:, :1], "CZYX", pixel_size_um=0.01)
    assert set(build_info([src], only=["a"]).category) == {"a"}
    assert set(build_info([src], skip=["a"]).category) == {"b"}
    with pytest.raises(PSSRError, match="--only or --skip"):
        build_info([src], only=["a"], skip=["b"])
    czi = build_info([src], only=["b"], channel="all")
    train = czi[czi.dsplit == "train"]
    assert len(train) == 4 and set(train.c) == {0, 1} and (train.ftype == "czi").all()
    assert train.pixel_size.iloc[0] == pytest.approx(0.01)
    r = train[(train.c == 1) & (train.z == 1)].iloc[0]
    assert r["mean"] == pytest.approx(data[1, 1].mean())
    assert len(build_info([src], only=["b"])) == 3  # first channel by default: 2 + 1 frames


def _bad_files(d):
    (d / "zero.tif").write_bytes(b"")
    (d / "corrupt.tif").write_bytes(b"II*\0" + b"\xff" * 60)
    (d / "notes.png").write_bytes(b"\x89PNG....")
    tifffile.imwrite(d / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(d / "float.tif", np.zeros((32, 32), np.float32))
    return ["zero.tif", "corrupt.tif", "notes.png", "rgb.tif", "float.tif"]


def test_bad_files_among_many_are_warned_skipped_and_counted(tmp_path, capsys):
    src = make_category(tmp_path, "cat", train={"good.tif": textured((64, 64))}, valid={"v.tif": textured((64, 64))})
    names = _bad_files(src / "cat" / "train")
    df = build_info([tmp_path])
    assert len(df) == 2 and df.attrs["n_bad"] == len(names)
    err = capsys.readouterr().err
    for n, problem in zip(names, ["empty", "TIFF", "unsupported", "RGB", "floating"]):
        (line,) = [l for l in err.splitlines() if n in l]
        assert line.startswith("warning: skipping") and problem in line


@pytest.mark.parametrize("layout,match", [
    ("empty", "source folder is empty"),
    ("no_valid", "has no valid folder"),
    ("all_bad", "none of the 5 files"),
    ("missing", "does not exist"),
])
def test_bad_sources_are_one_line_errors(tmp_path, layout, match):
    src = tmp_path / "src"
    src.mkdir()
    if layout == "no_valid":
        (src / "cat" / "train").mkdir(parents=True)
    if layout == "all_bad":
        make_category(src, "cat")
        _bad_files(src / "cat" / "valid")
    if layout == "missing":
        src = tmp_path / "nope"
    with pytest.raises(PSSRError, match=match):
        build_info([src])


def test_cli_writes_csv_and_fails_in_one_line(tmp_path, sample_tree):
    out = tmp_path / "x.csv"
    r = run_script("gen_sample_info.py", "--out", out, "--only", "em", sample_tree / "fixed", sample_tree / "live")
    assert r.returncode == 0, r.stderr
    assert set(pd.read_csv(out).category) == {"em"}
    r = run_script("gen_sample_info.py", "--out", out, "--only", "em", sample_tree / "fixed")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--force" in r.stderr
    (tmp_path / "src" / "cat" / "train").mkdir(parents=True)
    r = run_script("gen_sample_info.py", "--out", tmp_path / "y.csv", tmp_path / "src")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error:") and "cat" in r.stderr and "valid" in r.stderr
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize("kind", ["imagej_hyperstack", "ome", "bigtiff"])
def test_tiff_flavours_give_one_row_per_frame(tmp_path, kind):
    d = tmp_path / "src" / "cat"
    (d / "valid").mkdir(parents=True)
    (d / "train").mkdir()
    data = textured((2, 3, 2, 40, 50))  # T, Z, C, Y, X
    p = d / "train" / "a.tif"
    if kind == "imagej_hyperstack":
        tifffile.imwrite(p, data, imagej=True, metadata={"axes": "TZCYX"})
    elif kind == "ome":
        tifffile.imwrite(p, data, ome=True, metadata={"axes": "TZCYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm"})
    else:
        data = data[:1, :1, :1]
        tifffile.imwrite(p, data[0, 0, 0], bigtiff=True)
    df = build_info([tmp_path / "src"], channel="all")
    nt, nz, nc = data.shape[:3]
    assert len(df) == nt * nz * nc and (df.nt.iloc[0], df.nz.iloc[0], df.nc.iloc[0]) == (nt, nz, nc)
    for _, r in df.iterrows():
        assert r["mean"] == pytest.approx(data[r.t, r.z, r.c].mean())
    if kind == "ome":
        assert df.pixel_size.iloc[0] == pytest.approx(0.1)
