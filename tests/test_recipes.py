"""The paper's recipes are runnable: one (multi-frame MitoTracker) end to end at toy scale on the sample data."""
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("em.sh", "mito_sf.sh", "mito_mf.sh", "neuron_mf.sh")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_scripts_parse_and_need_data(recipe, tmp_path):
    """Every recipe is valid bash and refuses to start without its data folders."""
    path = ROOT / "recipes" / recipe
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    r = subprocess.run(["bash", path], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k not in ("SRC", "TEST_HR")})
    assert r.returncode != 0 and "SRC" in r.stderr


def test_mito_multiframe_recipe_toy_scale(sample_tree, tmp_path):
    live = sample_tree / "live"
    env = dict(os.environ, SRC=str(live), TEST_HR=str(live), TEST_SPLIT="valid", ONLY="fluo_live",
               OUT=str(tmp_path / "run"), TILE="64", SIZE="64", N_TRAIN="4", N_VALID="2", BS="2", CYCLES="1",
               ARCH="resnet18", PRETRAIN="", INFER="")  # tiling: tests/test_restore.py
    r = subprocess.run(["bash", ROOT / "recipes" / "mito_mf.sh"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    restored = run / "restored" / "fluo_live" / "valid"
    assert (restored / "t_5_mito_mf_e1" / "fluo_live_valid_t_5_mito_mf_e1.tif").exists()
    summary = pd.read_csv(run / "stats" / "mito_mf_summary.csv").set_index("method")
    assert {"t_5_mito_mf_e1", "LR-bilinear", "HR"} <= set(summary.index)
    assert summary.loc["t_5_mito_mf_e1", "n"] == 10  # every time point restored and measured
    assert (run / "stats" / "mito_mf_bars.png").exists() and (run / "stats" / "mito_mf_panel_fluo_live_valid.png").exists()
