"""Steps 2-4 as two real processes (`accelerate launch`, gloo on CPU): training runs, tiling is byte-identical
to one process, inference matches one process, and `--resume` finishes a killed run without redoing files.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate forks CPU ranks only through an MPI
hostfile), so these tests launch `--multi_gpu --num_processes 2` with the GPUs hidden: torchrun then starts
two CPU processes and utils/dist.py (and fastai, for training) join them with gloo."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401
from utils.dist import owners, share_frames
from utils.model import build_model, load_model, make_meta, save_model
from utils.restore import part_dir, write_tif_stream
from utils.tiling import DatasetSpec, make_dataset

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_train import make_dataset as make_train_set  # noqa: E402
from restore_helpers import smooth_image, write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_gen  # noqa: E402

ACCELERATE = Path(sys.executable).parent / "accelerate"
needs_launcher = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, *args, n: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` of `script` as `n` CPU processes (see the module docstring)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", n, "--num_machines", 1, "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", free_port(), script, *args]
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def wrapper(path: Path, body: str, script: str) -> Path:
    """A launchable script: `body` (patches, spies), then `script`'s main with the launcher's arguments."""
    path.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{body}\n"
                    f"import {script}\nfrom utils.errors import run_cli\n"
                    f"sys.argv = [{script + '.py'!r}] + sys.argv[1:]\nrun_cli({script}.main)\n")
    return path


def test_shares_are_contiguous_balanced_and_cover_every_frame():
    assert owners([1] * 7, 2) == [0, 0, 0, 1, 1, 1, 1] and owners([6, 1, 1, 1, 1, 1, 1], 2) == [0] + [1] * 6
    counts = [(1, 1280.0), (7, 1024.0), (0, 0.0), (1, 64.0), (7, 51.2)]  # a file, a time-lapse, an unreadable one
    shares = [share_frames(counts, r, 2) for r in (0, 1)]
    assert shares[0][1] == shares[1][1] == [1]  # only the time-lapse is split
    frames = {}
    for work, _ in shares:
        for i, fr in work:
            frames.setdefault(i, []).extend(range(counts[i][0]) if fr is None else fr)
    assert {i: sorted(f) for i, f in frames.items()} == {0: [0], 1: list(range(7)), 2: [], 3: [0], 4: list(range(7))}
    assert (2, None) in shares[0][0]  # the unreadable file is rank 0's, which reports it once


# --------------------------------------------------------------------------- step 3

@needs_launcher
def test_two_process_training(tmp_path):
    make_train_set(tmp_path / "data", "s_1_tiny_new_crap_AG_SP", tile=64, n_train=8, n_valid=4)
    spy = ("import fastai.distributed as d\nfrom fastai.torch_core import num_distrib, rank_distrib\n"
           "fit = d.DistributedTrainer.before_fit\n"
           "def spy(self):\n    fit(self)\n"
           "    print(f'rank {rank_distrib()}/{num_distrib()}: {type(self.learn.model).__name__}, '\n"
           "          f'{len(self.learn.dls.train)} batches', flush=True)\n"
           "d.DistributedTrainer.before_fit = spy\n")
    r = launch(wrapper(tmp_path / "train_spy.py", spy, "train"), "--datasetname", "s_1_tiny_new_crap_AG_SP",
               "--data_path", tmp_path / "data", "--model_dir", tmp_path / "models", "--arch", "resnet18",
               "--bs", 2, "--size", 32, "--tile_sz", 64, "--lr", 1e-3, "--noattn", "--fp32", "--encoder_stride", 16,
               "--cycles", 2, "--save_name", "mp", "--average_epochs", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    # both ranks train a DDP model, each on half of the 8 tiles in batches of --bs 2 (per process)
    assert "rank 0/2: DistributedDataParallel, 2 batches" in r.stdout, r.stdout[-2000:]
    assert "rank 1/2: DistributedDataParallel, 2 batches" in r.stdout
    assert r.stdout.count("valid PSNR") == 1  # rank 0 alone reports and writes the model
    assert r.stdout.count("weight average:") == 1  # after 4 steps: one decision on every rank, reported once
    model, meta = load_model("s_1_mp_e2", tmp_path / "models")
    assert meta["epochs"] == 2 and not list((tmp_path / "models").glob(".*.tmp"))
    assert meta["final_weights"] in ("average", "best_epoch")


# --------------------------------------------------------------------------- step 2

def _files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_launcher
def test_two_process_tiling_is_byte_identical(sample_info, tmp_path):
    make_dataset(tmp_path / "one", sample_info, DatasetSpec([64], 10, 4, "new_crap_AG_SP", seed=3))
    r = launch("tile_from_info.py", "--out", tmp_path / "two", "--info", sample_info, "--tile", 64, "--n_train", 10,
               "--n_valid", 4, "--crap_func", "new_crap_AG_SP", "--seed", 3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("14 tiles in") == 1  # one summary, from rank 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 2 * 14 + 2 and one == two


# --------------------------------------------------------------------------- step 4

@pytest.fixture(scope="module")
def restore_case(module_dir):
    """A 7-frame time-lapse and an image, a 5-frame model, and their one-process restoration (the reference)."""
    d = module_dir("mp_restore")
    # LR-space U-Net without attention: ~3x faster to run here than the paper's HR-space one
    meta = make_meta(arch="resnet18", n_frames=5, lr_type="t", lr_space=True, encoder_stride=16, self_attention=False)
    save_model(build_model(meta), meta, "toy5", d / "models")
    write_stack(d / "src" / "img.tif", smooth_image((32, 40)), "YX", 0.02)
    write_stack(d / "src" / "live" / "movie.tif", np.stack([smooth_image((32, 32), i) for i in range(7)]), "TYX", 0.1)
    image_gen.main(str(d / "src"), str(d / "one"), models="toy5", model_dir=str(d / "models"), baselines=True)
    return d


def _args(case: Path, out: Path, *more) -> list:
    return ["image_gen.py", case / "src", out, "--models", "toy5", "--model_dir", case / "models", "--baselines", *more]


def assert_same(one: Path, two: Path, skip=()) -> None:
    """Every output of `one` is in `two`, as TIFF of the same layout, pixels within 1e-5; nothing else left."""
    outs = sorted(p.relative_to(one) for p in one.rglob("*.tif"))
    assert outs == sorted(p.relative_to(two) for p in two.rglob("*.tif")) and len(outs) == 6
    for rel in outs:
        with tifffile.TiffFile(one / rel) as a, tifffile.TiffFile(two / rel) as b:
            assert a.series[0].axes == b.series[0].axes and a.imagej_metadata == b.imagej_metadata
            assert a.pages[0].tags["XResolution"].value == b.pages[0].tags["XResolution"].value
            x, y = a.asarray(), b.asarray()
        for i in skip if rel.name == "movie_toy5.tif" else ():
            x[i] = y[i]  # frames the caller checks itself
        assert x.shape == y.shape and np.abs(x - y).max() <= 1e-5, rel
    assert not [p for p in two.rglob(".*")], "temporaries or part files left behind"


@needs_launcher
def test_two_process_inference_matches_one_process(restore_case, tmp_path):
    r = launch(*_args(restore_case, tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 6 restored file(s)" in r.stdout and r.stdout.count("wrote ") == 1
    assert "movie.tif (frames 0-2)" in r.stdout and "movie.tif (frames 3-6)" in r.stdout  # one stack, two ranks
    assert_same(restore_case / "one", tmp_path / "two")


@needs_launcher
def test_resume_after_a_killed_two_process_run(restore_case, tmp_path):
    """Rank 1 is killed (SIGKILL) right after its first frame of the shared time-lapse; the launcher then stops
    rank 0. `--resume` keeps every finished file and frame: the kept frame is marked to prove it is not redone."""
    out = tmp_path / "two"
    die = ("import os, signal, utils.restore as R\nfrom utils import dist\nwrite = R.write_tif_stream\n"
           "def write_then_die(*a, **k):\n    write(*a, **k)\n"
           "    if dist.rank() == 1:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
           "R.write_tif_stream = write_then_die\n")
    killed = launch(wrapper(tmp_path / "die.py", die, "image_gen"), *_args(restore_case, out)[1:])
    assert killed.returncode != 0
    movie = out / "live" / "toy5" / "movie_toy5.tif"
    part = part_dir(movie) / "000003.tif"  # rank 1's first frame
    assert part.exists() and not movie.exists()
    write_tif_stream(part, iter([iter([np.full((128, 128), 0.25, np.float32)])]), (128, 128), "YX")  # the mark
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.tif") if ".parts" not in str(p)}
    r = launch(*_args(restore_case, out, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == v for p, v in before.items())  # finished files kept
    assert f"kept {len(before)} existing" in r.stdout or not before
    assert np.all(tifffile.imread(movie)[3] == 0.25)  # the kept frame was copied in, not restored again
    assert_same(restore_case / "one", out, skip=[3])
