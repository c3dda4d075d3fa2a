"""Bad inputs and faults that used to pass silently or end in a traceback (issue 9): each gets one line
naming the file, a non-zero exit, and nothing already written changes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401
from utils.errors import bool_flags_take_no_value
from utils.fileio import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and all(n in err[0] for n in needles), r.stderr[-2000:]


def test_boolean_flag_never_swallows_a_path(sample_tree, tmp_path):
    """`--force src/fixed src/live` used to make 'src/fixed' the value of --force and drop it."""
    out = tmp_path / "x.csv"
    out.write_text("old")
    r = run("gen_sample_info.py", "--out", out, "--force", sample_tree / "fixed", sample_tree / "live")
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    assert set(pd.read_csv(out).category) == {"em", "fluo_live"}
    assert bool_flags_take_no_value(lambda a=1, force=False: 0, ["--force", "true", "x"]) == ["--force", "true", "x"]


def test_existing_info_csv_refused_before_scanning(tmp_path):
    out = tmp_path / "x.csv"
    out.write_text("keep me")
    r = run("gen_sample_info.py", "--out", out, tmp_path / "does_not_exist")
    one_line_error(r, str(out), "exists already")
    assert out.read_text() == "keep me"


def test_image_gen_out_dir_is_a_file(tmp_path):
    (tmp_path / "src").mkdir()
    tifffile.imwrite(tmp_path / "src" / "a.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "out").write_text("a file")
    r = run("image_gen.py", tmp_path / "src", tmp_path / "out", "--baselines")
    one_line_error(r, str(tmp_path / "out"), "is a file")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.parametrize("where", ["prediction", "ground truth"])
def test_metric_gen_refuses_nan(tmp_path, where):
    gt = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.float32)
    pred = gt.copy()
    (pred if where == "prediction" else gt)[3, 4] = np.nan
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred" / "m").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "gt" / "a.tif", gt)
    tifffile.imwrite(tmp_path / "pred" / "m" / "a_m.tif", pred)
    r = run("metric_gen.py", "--pred_dir", tmp_path / "pred", "--gt_dir", tmp_path / "gt", "--out", tmp_path / "st",
            "--name", "x")
    bad = tmp_path / ("pred/m/a_m.tif" if where == "prediction" else "gt/a.tif")
    one_line_error(r, str(bad), "NaN")
    assert not (tmp_path / "st" / "x_summary.csv").exists()


def test_stale_temporaries_of_killed_processes_are_removed(tmp_path):
    dest = tmp_path / "a.tif"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.tif.{dead.pid}.tmp"
    stale.write_text("half written")
    live = tmp_path / f".a.tif.{os.getppid()}.tmp"  # a running process's file stays
    live.write_text("in progress")
    with atomic_path(dest) as tmp:
        Path(tmp).write_text("new")
    assert dest.read_text() == "new" and not stale.exists() and live.exists()


def test_five_frame_model_on_a_single_image_warns(tmp_path):
    from utils.restore import Predictor, restore_file
    from utils.sources import open_source
    sys.path.insert(0, str(Path(__file__).parent))
    from restore_helpers import ConvSR
    tifffile.imwrite(tmp_path / "a.tif", np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8))
    import io
    from contextlib import redirect_stderr
    err = io.StringIO()
    with open_source(tmp_path / "a.tif") as src, redirect_stderr(err):
        restore_file(src, tmp_path / "o.tif", Predictor(ConvSR(4, 5), 4, multiple=1), 4, 5, "t")
    assert "warning:" in err.getvalue() and "single frame" in err.getvalue()


@pytest.mark.parametrize("col, value", [("mi", "0.1.2"), ("x", "64O"), ("x", "")])
def test_step2_malformed_csv_number(sample_info, tmp_path, col, value):
    import pandas as pd
    df = pd.read_csv(sample_info)
    df[col] = df[col].astype(object)
    df.loc[3, col] = value
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    r = run("tile_from_info.py", "--out", tmp_path / "ds", "--info", bad, "--tile", 64, "--n_train", 2, "--n_valid", 1)
    one_line_error(r, str(bad), "row 5", f"column {col}")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("n_train", ["0", "-3", "ten"])
def test_step2_tile_counts_must_be_positive(sample_info, tmp_path, n_train):
    r = run("tile_from_info.py", "--out", tmp_path / "ds", "--info", sample_info, "--tile", 64, "--n_train", n_train,
            "--n_valid", 1)
    one_line_error(r, "--n_train")
    assert not (tmp_path / "ds").exists()


def test_step2_checks_every_source_before_writing(sample_tree, tmp_path):
    """A CSV row pointing at a deleted file fails before any tile is written."""
    import shutil
    from utils.info import build_info, write_info
    src = tmp_path / "src"
    shutil.copytree(sample_tree / "fixed", src)
    info = write_info(build_info([src]), tmp_path / "i.csv")
    victim = sorted((src / "em" / "train").glob("*.tif"))[-1]
    victim.unlink()
    r = run("tile_from_info.py", "--out", tmp_path / "ds", "--info", info, "--tile", 64, "--n_train", 20,
            "--n_valid", 2, "--only", "em")
    one_line_error(r, victim.name)
    assert not any((tmp_path / "ds").rglob("*.tif"))
