"""Shared fixtures: the generated sample source tree and its step-1 info CSV (built once per session)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401  (quiets library import warnings)
from utils.info import build_info, write_info
from utils.sample_data import write_sample_tree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/czi_writer.py


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory) -> Path:
    """OUT of `python -m utils.sample_data OUT --seed 0`: fixed/em and live/fluo_live (read-only!)."""
    return write_sample_tree(tmp_path_factory.mktemp("sample") / "sources", seed=0)


@pytest.fixture(scope="session")
def sample_info(sample_tree, tmp_path_factory) -> Path:
    """Step-1 CSV of the sample tree, named `sample.csv` as in the Makefile demo."""
    out = tmp_path_factory.mktemp("info") / "sample.csv"
    return write_info(build_info([sample_tree / "fixed", sample_tree / "live"]), out)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    """`module_dir(name)`: a fresh folder for a module's shared fixtures, all removed when the module ends.

    Models and their optimizer state weigh 100+ MB each and CI's disk can be small: nothing outlives its module
    (tests/pytest.ini likewise drops a passed test's tmp_path)."""
    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def run_script(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run a pipeline script (or `-m module`) with the venv's Python, capturing its output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True)


def make_category(root: Path, name: str = "cat", train=(), valid=()) -> Path:
    """SRC/<name>/{train,valid}/ holding the given {filename: array} images as TIFFs."""
    for split, files in (("train", train), ("valid", valid)):
        d = root / name / split
        d.mkdir(parents=True, exist_ok=True)
        for fn, arr in dict(files).items():
            tifffile.imwrite(d / fn, arr, photometric="minisblack")
    return root


def textured(shape, seed=0, dtype=np.uint16) -> np.ndarray:
    """Random integer image with structure everywhere (no background to reject)."""
    hi = 255 if dtype == np.uint8 else 4000
    return np.random.default_rng(seed).integers(10, hi, shape).astype(dtype)
