#!/usr/bin/env bash
# PSSR for EM (Figs 1-2), Supplementary Table 3: single frame, 80,000 train / 20,000 valid pairs per round,
# three rounds of progressive resizing on 128/256/512-px tiles (recipes/em_progressive.json), ImageNet-pretrained
# ResNet-34 encoder with ImageNet statistics, MSE, 2 GPUs.
#   SRC=data/em_sources TEST_HR=data/em_test_hr recipes/em.sh
NAME=${NAME:-em} LR_TYPE=s N_FRAMES=1
: "${CRAP_FUNC:=em_AG_D_sameas_preprint}"
: "${TILE:=128,256,512}" "${N_TRAIN:=80000}" "${N_VALID:=20000}" "${GPUS:=2}" "${ARCH:=resnet34}"
: "${PRETRAIN=--pretrain}"
: "${SCHEDULE=$(dirname "${BASH_SOURCE[0]}")/em_progressive.json}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
