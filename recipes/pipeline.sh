#!/usr/bin/env bash
# One paper model, steps 1-5, from source images to the figures. Sourced by the recipe scripts,
# which set the model's hyper-parameters; every variable below can be overridden from the
# environment (the toy-scale test does exactly that).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # for python -m utils.testset from any folder

: "${PY:=$ROOT/.venv/bin/python}"
: "${SRC:?set SRC to the downloaded training sources: the folder holding category/train and category/valid}"
: "${TEST_HR:?set TEST_HR to high-resolution test images (ground truth) to evaluate on}"
: "${OUT:=runs/$NAME}"
: "${ONLY:=}"
: "${SEED:=0}"
: "${PRETRAIN=}"              # --pretrain: ImageNet encoder weights (torchvision's file in the torch hub cache)
: "${GPUS:=1}"                # training processes (the paper: 2 GPUs, batch BS per GPU)
: "${ARCH:=resnet34}"
: "${TEST_SPLIT:=}"           # only test images inside a folder of this name (e.g. valid); empty: all
: "${INFER=}"                  # image_gen options; default: tiles of the model's training size
: "${TRAIN_EXTRA=}"

INFO="$OUT/$NAME.csv"
DATASET="${LR_TYPE}_${N_FRAMES}_${NAME}_${CRAP_FUNC}"
MODEL_DIR="$OUT/models"
only=${ONLY:+--only $ONLY}

echo "== $NAME: step 1, frame statistics"
$PY "$ROOT/gen_sample_info.py" "$SRC" --out "$INFO" $only --force
echo "== $NAME: step 2, crappified tiles ($N_TRAIN train / $N_VALID valid, tile $TILE)"
$PY "$ROOT/tile_from_info.py" --out "$OUT/datasets" --info "$INFO" --tile "$TILE" --n_train "$N_TRAIN" \
    --n_valid "$N_VALID" --crap_func "$CRAP_FUNC" --n_frames "$N_FRAMES" --lr_type "$LR_TYPE" $only \
    --seed "$SEED" --clean
echo "== $NAME: step 3, training"
n_gpu=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 1 ] && [ "$n_gpu" -lt "$GPUS" ]; then
    echo "note: the paper trained on $GPUS GPUs (batch per GPU as set); this machine has $n_gpu, so one process" >&2
    GPUS=1
fi
train_cmd=("$PY" "$ROOT/train.py")
[ "$GPUS" -gt 1 ] && train_cmd=("$PY" -m accelerate.commands.launch --num_processes "$GPUS" "$ROOT/train.py")
if [ -n "${SCHEDULE:-}" ]; then
    train_args=(--schedule "$SCHEDULE")
else
    train_args=(--bs "$BS" --lr "$LR" --size "$SIZE" --tile_sz "$TILE" --cycles "$CYCLES")
fi
"${train_cmd[@]}" --datasetname "$DATASET" --data_path "$OUT/datasets" --model_dir "$MODEL_DIR" \
    --save_name "$NAME" --lr_type "$LR_TYPE" --n_frames "$N_FRAMES" --arch "$ARCH" --seed "$SEED" \
    "${train_args[@]}" $PRETRAIN $TRAIN_EXTRA --force
model=$(ls -t "$MODEL_DIR"/"${LR_TYPE}_${N_FRAMES}_${NAME}"_e*.json | grep -v _best_ | head -1)
model=$(basename "$model" .json)
echo "== $NAME: step 4, restore the test images with $model"
$PY -m utils.testset "$TEST_HR" "$OUT/test" --split "$TEST_SPLIT" --crap_func "$CRAP_FUNC" --seed "$SEED" --clean
$PY "$ROOT/image_gen.py" "$OUT/test/lr" "$OUT/restored" --models "$model" --model_dir "$MODEL_DIR" --baselines \
    $INFER --force
echo "== $NAME: step 5, PSNR/SSIM/SNR/FRC and figures"
$PY "$ROOT/metric_gen.py" --pred_dir "$OUT/restored" --gt_dir "$OUT/test/gt" --lr_dir "$OUT/test/lr" \
    --out "$OUT/stats" --name "$NAME" --force
