#!/usr/bin/env bash
# PSSR-MF for mito-dsRed in hippocampal neurons (Fig. 4), Supplementary Table 1: 5 time points in, the centre
# one out; 3000 train / 300 valid pairs, input 128² x 5 -> output 512², batch 6 per GPU on 2 GPUs, 50 epochs,
# lr 4e-4, ResNet-34 without ImageNet weights or statistics, MSE.
#   SRC=data/live TEST_HR=data/neuron_test_hr ONLY=neuron_mito recipes/neuron_mf.sh
NAME=${NAME:-neuron_mf} LR_TYPE=t N_FRAMES=5
: "${CRAP_FUNC:=new_crap_AG_SP}"
: "${TILE:=512}" "${SIZE:=512}" "${N_TRAIN:=3000}" "${N_VALID:=300}" "${GPUS:=2}" "${ARCH:=resnet34}"
: "${BS:=6}" "${LR:=4e-4}" "${CYCLES:=50}" "${PRETRAIN=}"
source "$(dirname "${BASH_SOURCE[0]}")/pipeline.sh"
