#!/usr/bin/env bash
# PSSR-SF for MitoTracker live imaging (Fig. 3), Supplementary Table 1: single frame, 5000 train / 200 valid
# pairs, input 128² -> output 512², batch 8 per GPU on 2 GPUs, 100 epochs, lr 4e-4, ResNet-34 without ImageNet
# weights or statistics, MSE.
#   SRC=data/live TEST_HR=data/mito_test_hr ONLY=mitotracker recipes/mito_sf.sh
NAME=${NAME:-mito_sf} LR_TYPE=s N_FRAMES=1
: "${CRAP_FUNC:=new_crap_AG_SP}"
: "${TILE:=512}" "${SIZE:=512}" "${N_TRAIN:=5000}" "${N_VALID:=200}" "${GPUS:=2}" "${ARCH:=resnet34}"
: "${BS:=8}" "${LR:=4e-4}" "${CYCLES:=100}" "${PRETRAIN=}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
