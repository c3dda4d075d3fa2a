#!/usr/bin/env bash
# PSSR-MF for mito-dsRed in hippocampal neurons (Fig. 4): 5 time points, as the MitoTracker model.
#   SRC=data/live TEST_HR=data/neuron_test_hr ONLY=neuron_mito recipes/neuron_mf.sh
NAME=${NAME:-neuron_mf} LR_TYPE=t N_FRAMES=5
: "${CRAP_FUNC:=new_crap_AG_SP}"
: "${TILE:=512}" "${N_TRAIN:=80}" "${N_VALID:=20}"
: "${BS:=8}" "${LR:=4e-4}" "${SIZE:=512}" "${CYCLES:=50}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
