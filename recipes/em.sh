#!/usr/bin/env bash
# PSSR for EM (Fig. 1-2): single frame, 3-round progressive resizing (recipes/em_progressive.json:
# HR crops 128 -> 256 -> 512 of 512-px tiles, frozen then unfrozen ImageNet ResNet-34 encoder).
#   SRC=data/em_sources TEST_HR=data/em_test_hr recipes/em.sh
NAME=${NAME:-em} LR_TYPE=s N_FRAMES=1
: "${CRAP_FUNC:=em_AG_D_sameas_preprint}"
: "${TILE:=512}" "${N_TRAIN:=80000}" "${N_VALID:=8000}"
: "${SCHEDULE=$(dirname "${BASH_SOURCE[0]}")/em_progressive.json}" "${BS:=8}" "${LR:=4e-4}" "${SIZE:=512}" "${CYCLES:=50}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
