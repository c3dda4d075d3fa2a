"""The paper's recipes: their numbers are Supplementary Tables 1 and 3's, and they run (the multi-frame
MitoTracker one end to end at toy scale on the sample data)."""
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from utils.training import lr_arg, read_schedule

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("em.sh", "mito_sf.sh", "mito_mf.sh", "neuron_mf.sh")
PAPER = ROOT.parent / "shared" / "paper" / "fang2021_pssr_paper.txt"

# Supplementary Table 1 (fluorescence), as the recipes' variables; checked against the paper's text below.
TABLE1 = {
    "mito_sf.sh": dict(N_FRAMES="1", N_TRAIN="5000", N_VALID="200", GPUS="2", BS="8", CYCLES="100", LR="4e-4"),
    "mito_mf.sh": dict(N_FRAMES="5", N_TRAIN="5000", N_VALID="200", GPUS="2", BS="8", CYCLES="100", LR="4e-4"),
    "neuron_mf.sh": dict(N_FRAMES="5", N_TRAIN="3000", N_VALID="300", GPUS="2", BS="6", CYCLES="50", LR="4e-4"),
}
TABLE1_ROWS = {"N_TRAIN": "No. of image pairs for training", "N_VALID": "No. of image pairs for validation",
               "GPUS": "No. of GPUs", "BS": "Batch size per GPU", "CYCLES": "No. of epochs", "LR": "Learning rate"}
# Supplementary Table 3 (EM): per round (LR input, HR output, batch, [N1, N2], lr1, lr2 range)
TABLE3 = [(32, 128, 64, (1, 1), 1e-3, (1e-5, 1e-3)), (64, 256, 16, (3, 3), 1e-3, (1e-5, 1e-3)),
          (128, 512, 8, (3, 3), 1e-3, (1e-5, 1e-4))]


def recipe_vars(name: str) -> dict:
    """Every default a recipe sets: `VAR=value` and `: "${VAR:=value}"` / `${VAR=value}` forms."""
    text = (ROOT / "recipes" / name).read_text()
    found = dict(re.findall(r"\$\{(\w+):?=([^}]*)\}", text))
    found.update(re.findall(r"^(?:NAME=\S+ )?(\w+)=(\w+)(?: |$)", text, re.M))
    found.update(re.findall(r"(?:^| )(LR_TYPE|N_FRAMES)=(\w+)", text, re.M))
    return found


@pytest.mark.parametrize("recipe", sorted(TABLE1))
def test_fluorescence_recipes_are_table_1(recipe):
    v = recipe_vars(recipe)
    assert {k: v.get(k) for k in TABLE1[recipe]} == TABLE1[recipe]
    # input 128² -> output 512²: 512-px HR crops of 512-px tiles at scale 4; ResNet-34, no ImageNet, MSE
    assert v["TILE"] == v["SIZE"] == "512" and v["ARCH"] == "resnet34" and v["PRETRAIN"] == ""
    assert "l1" not in (ROOT / "recipes" / recipe).read_text()


def test_em_recipe_is_table_3():
    v = recipe_vars("em.sh")
    assert (v["N_TRAIN"], v["N_VALID"], v["GPUS"], v["ARCH"]) == ("80000", "20000", "2", "resnet34")
    assert v["PRETRAIN"] == "--pretrain"  # ImageNet-pretrained encoder, ImageNet statistics: yes
    rounds = read_schedule(ROOT / "recipes" / "em_progressive.json")
    assert v["TILE"] == ",".join(str(r.tile_sz) for r in rounds)  # step 2 writes every round's tiles
    assert len(rounds) == len(TABLE3)
    for r, (lr_in, hr_out, bs, epochs, lr1, lr2) in zip(rounds, TABLE3):
        frozen, unfrozen = r.stages
        assert (r.size // 4, r.size, r.tile_sz, r.bs) == (lr_in, hr_out, hr_out, bs)
        assert (frozen.freeze, unfrozen.freeze) == (True, False)
        assert (frozen.epochs, unfrozen.epochs) == epochs
        assert frozen.lr == lr1 and tuple(unfrozen.lr) == lr2


def test_discriminative_rates_are_linear_over_three_groups():
    """Methods: "a linearly spaced learning rate range lr_2"; a plain rate is the original's slice(lr)."""
    assert lr_arg([1e-5, 1e-3]) == pytest.approx([1e-5, 5.05e-4, 1e-3])
    assert lr_arg(4e-4) == pytest.approx([4e-5, 4e-5, 4e-4])


@pytest.mark.skipif(not PAPER.is_file(), reason="paper text not in ../shared")
def test_recipe_constants_are_the_papers():
    """The tables above are read from the paper's own Supplementary Tables, not from memory."""
    text = PAPER.read_text()
    t1 = text[text.index("Supplementary Table 1:"):text.index("Supplementary Table 2:")]
    cols = list(TABLE1)  # the table's column order: MitoTracker SF, MitoTracker MF, Neuron MF
    for key, row in TABLE1_ROWS.items():
        cells = re.search(rf"^{re.escape(row)}\t(.*)$", t1, re.M).group(1).split("\t")
        assert [float(c) for c in cells] == [float(TABLE1[c][key]) for c in cols], row
    t3 = text[text.index("Supplementary Table 3:"):text.index("References")]
    assert re.search(r"Batch size per GPU\t(.*)$", t3, re.M).group(1).split("\t") == [str(r[2]) for r in TABLE3]
    epochs = re.findall(r"\[(\d+),(\d+)\]", re.search(r"No\. of epochs.*$", t3, re.M).group(0))
    assert [tuple(map(int, e)) for e in epochs] == [r[3] for r in TABLE3]
    rates = re.findall(r"\[([\de.-]+), \(([\de.-]+),([\de.-]+)\)\]", re.search(r"Learning rate \[.*$", t3, re.M).group(0))
    assert [(float(a), (float(b), float(c))) for a, b, c in rates] == [(r[4], r[5]) for r in TABLE3]
    assert "80,000" in t3 and "20,000" in t3


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_scripts_parse_and_need_data(recipe, tmp_path):
    """Every recipe is valid bash and refuses to start without its data folders."""
    path = ROOT / "recipes" / recipe
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    r = subprocess.run(["bash", path], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k not in ("SRC", "TEST_HR")})
    assert r.returncode != 0 and "SRC" in r.stderr


def test_every_script_runs_as_the_readme_writes_it():
    """`recipes/quick.sh SRC WORK CRAP` as typed: executable (in git too: CI runs a clean clone) with a bash
    shebang. quick.sh was committed without the bit, so the README's day-one command said 'Permission denied'."""
    scripts = sorted((ROOT / "recipes").glob("*.sh"))
    assert "quick.sh" in {p.name for p in scripts}
    for p in scripts:
        assert os.access(p, os.X_OK), f"{p.name} is not executable"
        assert p.read_text().startswith("#!/usr/bin/env bash\n"), p.name


def test_mito_multiframe_recipe_toy_scale(sample_tree, tmp_path):
    live = sample_tree / "live"
    env = dict(os.environ, SRC=str(live), TEST_HR=str(live), TEST_SPLIT="valid", ONLY="fluo_live",
               OUT=str(tmp_path / "run"), TILE="64", SIZE="64", N_TRAIN="4", N_VALID="2", BS="2", CYCLES="1",
               ARCH="resnet18", PRETRAIN="", INFER="", GPUS="1")  # tiling: tests/test_restore.py
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
