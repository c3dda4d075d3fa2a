#!/usr/bin/env bash
# PSSR-SF for MitoTracker live imaging (Fig. 3): single frame, one fit_one_cycle of 50 epochs.
#   SRC=data/live TEST_HR=data/mito_test_hr ONLY=mitotracker recipes/mito_sf.sh
NAME=${NAME:-mito_sf} LR_TYPE=s N_FRAMES=1
: "${CRAP_FUNC:=new_crap_AG_SP}"
: "${TILE:=512}" "${N_TRAIN:=80}" "${N_VALID:=20}"
: "${BS:=8}" "${LR:=4e-4}" "${SIZE:=512}" "${CYCLES:=50}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
