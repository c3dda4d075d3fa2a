"""Sources (issue 11.3, issue 9) and plain progress in logs (issue 11.4).

CZI as ZEN writes it today (zstd subblocks, mosaics) read through libCZI, with mosaics of several scenes and
Airyscan raw data refused by name; a truncated TIFF refused at steps 1, 2 and 4 instead of read as one
frame; and script output with stdout redirected holding plain lines, never redrawn bar fragments."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import utils  # noqa: F401
import utils.sources as sources
from czi_writer import write_czi, write_czi_zstd
from utils.errors import PSSRError
from utils.norm import normalize, subsample_step, to_uint8
from utils.progress import PlainProgress, plain_training_progress, progress

ROOT = Path(__file__).resolve().parents[1]
CZI_DIR = ROOT.parent / "shared" / "data" / "czi_zeiss"
REAL_CZI = {  # file: (nc, nz, nt, ny, nx)
    "CellDivision_T3_Z5_CH2_X240_Y170_comp1.czi": (2, 5, 3, 170, 240),
    "CellDivision_T3_Z6_CH1_X300_Y200_DCV_ZSTD.czi": (1, 6, 3, 200, 300),
    "newCZI_compressed.czi": (1, 1, 1, 512, 512),
    "1_tileregion.czi": (1, 1, 1, 570, 1480),
}
needs_real_czi = pytest.mark.skipif(not CZI_DIR.is_dir(), reason="../shared/data/czi_zeiss is absent")


def run(*args) -> subprocess.CompletedProcess:
    """A pipeline script with stdout and stderr captured: a pipe, as when redirected to a log."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_plain_log(r: subprocess.CompletedProcess) -> None:
    """No redrawn bar: no carriage return, no block characters (fastprogress' '█' fill)."""
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and "█" not in stream, stream[-2000:]


def textured(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 4000, shape).astype(np.uint16)


# --------------------------------------------------------------------------- CZI

def test_zstd_czi_mosaic_reads_exactly(tmp_path, monkeypatch):
    """zstd subblocks (what czifile 2019 failed on), a 64-px tile mosaic, regions and subsampled reads."""
    data = textured((2, 3, 100, 150))
    p = write_czi_zstd(tmp_path / "a.czi", data, "CTYX", pixel_size_um=0.05, tile=64)
    monkeypatch.setattr(sources, "_CZI_BAND_BYTES", 1000)  # many bands: their seams must not show
    with sources.open_source(p) as s:
        assert (s.nc, s.nz, s.nt, s.ny, s.nx, s.dtype, s.ftype) == (2, 1, 3, 100, 150, np.uint16, "czi")
        assert s.pixel_size == pytest.approx(0.05)
        assert all(np.array_equal(s.read(c, 0, t), data[c, t]) for c in range(2) for t in range(3))
        assert np.array_equal(s.read(1, 0, 2, box=(7, 11, 60, 90), step=3), data[1, 2, 7:67:3, 11:101:3])
        step = subsample_step(100, 150, 500)
        assert step > 1 and np.array_equal(s.sample(0, 0, 1, max_pixels=500), data[0, 1, ::step, ::step])


def test_czi_refuses_what_would_be_a_wrong_frame(tmp_path):
    """Airyscan raw (H axis), several scenes, a missing plane: one line each, never a silent frame."""
    import pylibCZIrw.czi as pyczi
    cases = {"airyscan.czi": ("HYX", "Airyscan raw data (H axis of 4 detector elements)"),
             "scenes.czi": ("SYX", "2 scenes")}
    for name, (axes, message) in cases.items():
        write_czi(tmp_path / name, textured((4 if axes[0] == "H" else 2, 40, 50)), axes)
        with pytest.raises(PSSRError, match=r"^" + str(tmp_path / name).replace("\\", "\\\\") + ": " +
                           message.replace("(", r"\(").replace(")", r"\)")):
            sources.open_source(tmp_path / name)
    with pyczi.create_czi(str(tmp_path / "gap.czi")) as czi:  # an interrupted time-lapse: T1 never written
        for t in (0, 2):
            czi.write(textured((40, 50), t), plane={"T": t})
    with pytest.raises(PSSRError, match=r"only 2 of 3 \(c, z, t\) planes hold data"):
        sources.open_source(tmp_path / "gap.czi")


def test_czi_garbage_is_one_line(tmp_path):
    (tmp_path / "x.czi").write_bytes(b"ZISRAWFILE" + b"\0" * 600)
    with pytest.raises(PSSRError, match="x.czi: not a readable CZI"):
        sources.open_source(tmp_path / "x.czi")


@needs_real_czi
def test_real_zeiss_czi_shapes_and_refusals():
    import pylibCZIrw.czi as pyczi
    for name, shape in REAL_CZI.items():
        with sources.open_source(CZI_DIR / name) as s:
            assert (s.nc, s.nz, s.nt, s.ny, s.nx) == shape and s.dtype == np.uint16
            with pyczi.open_czi(str(CZI_DIR / name)) as doc:  # same pixels as libCZI's own plane read
                want = doc.read(plane={"C": s.nc - 1, "Z": s.nz - 1, "T": s.nt - 1})[..., 0]
            assert np.array_equal(s.read(s.nc - 1, s.nz - 1, s.nt - 1), want)
    with pytest.raises(PSSRError, match="3 scenes"):
        sources.open_source(CZI_DIR / "S3_1Pos_2Mosaic_T1_Z1_CH1.czi")


@needs_real_czi
def test_real_compressed_czi_through_steps_1_2_4(tmp_path):
    import pylibCZIrw.czi as pyczi
    src = tmp_path / "src" / "fixed" / "zeiss"
    for split, names in (("train", list(REAL_CZI)[:3]), ("valid", list(REAL_CZI)[3:])):
        (src / split).mkdir(parents=True)
        for n in names:
            (src / split / n).symlink_to(CZI_DIR / n)
    info = tmp_path / "info.csv"
    r = run("gen_sample_info.py", "--out", info, "--channel", "all", src.parent)  # step 1
    assert r.returncode == 0, r.stderr[-2000:]
    assert_plain_log(r)
    rows = pd.read_csv(info)
    assert len(rows) == sum(int(np.prod(v[:3])) for v in REAL_CZI.values()) and (rows.ftype == "czi").all()

    r = run("tile_from_info.py", "--out", tmp_path / "ds", "--info", info, "--tile", 64, "--n_train", 6,  # step 2
            "--n_valid", 2, "--crap_func", "no_crap", "--seed", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_plain_log(r)
    ds = tmp_path / "ds" / "s_1_info_no_crap"
    tiles = pd.read_csv(ds / "tiles.csv")
    assert len(tiles) == 8
    for _, row in tiles.iterrows():  # every HR tile is that region of the file, read by libCZI directly
        with pyczi.open_czi(row.fn) as doc:
            box = doc.total_bounding_rectangle_no_pyramid
            raw = doc.read(roi=(box.x + int(row.x0), box.y + int(row.y0), 64, 64),
                           plane={"C": int(row.c), "Z": int(row.z), "T": int(row.t)})[..., 0]
        name = f"{row.dsplit}/zeiss/{row.id:06d}_{Path(row.fn).stem}.tif"
        assert np.array_equal(tifffile.imread(ds / "hr_s_64" / name), to_uint8(normalize(raw, row.mi, row.ma)))

    r = run("image_gen.py", src / "train", tmp_path / "out", "--baselines")  # step 4
    assert r.returncode == 0, r.stderr[-2000:]
    assert_plain_log(r)
    out = tifffile.imread(tmp_path / "out" / "LR-bilinear" / "CellDivision_T3_Z5_CH2_X240_Y170_comp1_LR-bilinear.tif")
    assert out.size == 3 * 5 * 2 * 680 * 960 and out.shape[-2:] == (680, 960)
    frames = out.reshape(-1, 680, 960)
    assert len({f.tobytes() for f in frames}) == 30  # every frame its own, none repeated or blank


# --------------------------------------------------------------------------- truncated TIFF

WRITERS = {
    "shaped": dict(compression="zlib", photometric="minisblack"),
    "imagej": dict(compression="zlib", imagej=True, metadata={"axes": "TYX"}),
    "ome": dict(compression="zlib", ome=True, metadata={"axes": "TYX"}),
    "bigtiff_tiled": dict(compression="zlib", bigtiff=True, tile=(32, 32), photometric="minisblack"),
    "uncompressed": dict(photometric="minisblack"),
}


def cut(path: Path, frac: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * frac)])
    return path


@pytest.mark.parametrize("frac", [0.5, 0.999])
@pytest.mark.parametrize("kind", WRITERS)
def test_truncated_tiff_is_refused_the_whole_one_reads(tmp_path, kind, frac):
    stack = textured((12, 64, 80))
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, stack, **WRITERS[kind])
    with sources.open_source(p) as s:  # one axis of 12, whichever the writer's metadata names
        frames = [s.read(c, z, t) for c in range(s.nc) for z in range(s.nz) for t in range(s.nt)]
    assert np.array_equal(np.stack(frames), stack)
    cut(p, frac)
    pages = r"\d+ of (at least )?\d+ pages readable|the first page's metadata lies past the end"  # OME-XML is last
    with pytest.raises(PSSRError, match=rf"a.tif: truncated or corrupt TIFF \(({pages})"):
        sources.open_source(p)


def test_truncated_zlib_timelapse_fails_at_steps_1_2_4(tmp_path):
    """The issue's case: a 12-frame zlib stack cut in half used to be read as a 1-frame image, exit 0."""
    live = tmp_path / "src" / "live" / "mito"
    for split, n in (("train", 12), ("valid", 4)):
        (live / split).mkdir(parents=True)
        tifffile.imwrite(live / split / f"{split}.tif", textured((n, 64, 64)), compression="zlib",
                         photometric="minisblack")
    info = tmp_path / "info.csv"
    assert run("gen_sample_info.py", "--out", info, live.parent).returncode == 0  # while it was whole
    victim = cut(live / "train" / "train.tif", 0.5)
    message = "truncated or corrupt TIFF (5 of 12 pages readable)"
    solo = tmp_path / "solo" / "live" / "mito" / "train"  # step 1 skips a bad file among good ones (exit 0)
    solo.mkdir(parents=True)
    (solo.parent / "valid").mkdir()
    (solo / victim.name).symlink_to(victim)
    runs = {"step 1": run("gen_sample_info.py", "--out", tmp_path / "again.csv", solo.parents[1]),
            "step 2": run("tile_from_info.py", "--out", tmp_path / "ds", "--info", info, "--tile", 32,
                          "--n_train", 2, "--n_valid", 1),
            "step 4": run("image_gen.py", live / "train", tmp_path / "out", "--baselines")}
    for step, r in runs.items():
        assert r.returncode == 2, (step, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, step
        lines = [line for line in r.stderr.splitlines() if "corrupt TIFF" in line]
        assert lines and all(message in line and f"/{victim.name}: " in line for line in lines), step
        assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1, step
        assert_plain_log(r)
    assert not any((tmp_path / "ds").rglob("*.tif"))


# --------------------------------------------------------------------------- progress in logs

def test_plain_progress_lines(capsys, monkeypatch):
    import utils.progress as pr
    assert isinstance(progress(range(3), label="x"), PlainProgress)  # pytest's capture is not a terminal
    assert list(progress(range(3), label="files")) == [0, 1, 2]
    assert capsys.readouterr().out.splitlines() == ["files: 3/3 (100%) in 0:00"]
    monkeypatch.setattr(pr, "PLAIN_EVERY_FRAC", 0.05)
    list(PlainProgress(range(1000), label="tiles", every_s=0))  # every 5%: 19 lines, then the last
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 20 and out[0].startswith("tiles: 50/1000 (5%), 0:00 elapsed, eta ")
    list(PlainProgress(iter(range(5)), label="n"))
    assert capsys.readouterr().out == "n: 5 in 0:00\n"


def test_plain_training_progress_one_line_per_epoch(capsys):
    import torch
    import torch.nn.functional as F
    import fastai.callback.schedule  # noqa: F401
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    learn = plain_training_progress(Learner(DataLoaders(dl, dl), torch.nn.Linear(4, 1), loss_func=F.mse_loss))
    learn.fit_one_cycle(2, 1e-2)
    learn.validate()  # prints nothing (fastai's own bar would)
    out = capsys.readouterr().out
    assert "\r" not in out and "█" not in out
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["epoch", "train_loss", "valid_loss", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    cb = next(cb for cb in learn.cbs if type(cb).__name__ == "PlainProgressCallback")
    assert type(pickle.loads(pickle.dumps(cb))) is type(cb)  # fastai's export pickles the Learner with it


@pytest.mark.skipif("plain_training_progress" not in (ROOT / "train.py").read_text(),
                    reason="train.py does not call utils.progress.plain_training_progress yet")
def test_train_log_has_no_bar_fragments(tmp_path):
    from fixtures_train import make_dataset
    make_dataset(tmp_path / "data", tile=64, n_train=4, n_valid=2)
    r = run("train.py", "--datasetname", "s_1_tiny_new_crap_AG_SP", "--data_path", tmp_path / "data",
            "--model_dir", tmp_path / "models", "--arch", "resnet18", "--size", 64, "--tile_sz", 64, "--bs", 2,
            "--cycles", 1, "--lr_space", "--encoder_stride", 8, "--save_name", "t", "--seed", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_plain_log(r)
    assert [line.split()[0] for line in r.stdout.splitlines() if line[:1].isdigit()] == ["0"], r.stdout
