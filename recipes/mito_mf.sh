#!/usr/bin/env bash
# PSSR-MF for MitoTracker live imaging (Fig. 3): 5 consecutive time points in, the centre one out.
#   SRC=data/live TEST_HR=data/mito_test_hr ONLY=mitotracker recipes/mito_mf.sh
NAME=${NAME:-mito_mf} LR_TYPE=t N_FRAMES=5
: "${CRAP_FUNC:=new_crap_AG_SP}"
: "${TILE:=512}" "${N_TRAIN:=80}" "${N_VALID:=20}"
: "${BS:=8}" "${LR:=4e-4}" "${SIZE:=512}" "${CYCLES:=50}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
