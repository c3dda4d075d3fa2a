#!/usr/bin/env bash
# Day one for a new lab: steps 1-3 on your own high-resolution data, within a time budget.
#
#   recipes/quick.sh SRC_DIR WORK_DIR CRAP_FUNC [N_FRAMES]
#   LR_DIR=folder_of_real_LR_scans recipes/quick.sh ...   # match the crappifier's noise (and scan-line
#                                                          # smoothing, a detector's bandwidth) to yours
#
# SRC_DIR is a step-1 source tree (<category>/{train,valid}/*.tif|czi); N_FRAMES 5 trains the paper's
# multi-frame model on time-lapses, started from a 1-frame model trained first on the same frames (WARM
# of the budget, default 0.75; WARM=0 trains it from scratch). The models go to WORK_DIR/models and the last
# line printed is the name of the final one; then:
#   python image_gen.py LR_FOLDER OUT --models NAME --model_dir WORK_DIR/models
# Settings (utils/quick.py explains each): MINUTES (whole script, default 20), SEED, PY, ARCH,
# TRAIN_EXTRA (more train.py options), LR_TYPE (t or z for N_FRAMES 5, default t), FRESH=0 (crappify
# once in step 2 instead of on the fly, for comparison), AVERAGE (the model keeps its weights averaged over about
# this many last epochs where they validate within 1% of the best epoch, default 4; 0 keeps the best epoch's).
# Any value of the printed plan can be fixed from the environment (for every model trained), e.g. EPOCHS=40,
# TILE=128 (the rest of the plan, the encoder stride included, is then made for that tile),
# BANDWIDTH=0,1 (LR smoothed along its scan lines, which LR_DIR sets where it measures it; BANDWIDTH_SHARE=0.33
# for a third of the tiles only), COUNTS=5,80 (shot noise on each LR pixel, counts for white: LR_DIR sets it
# for LR noisier than the crappifier reaches; COUNTS_SHARE=0.5 for half of the tiles only), CLEAN_SHARE=0.15
# (that share of the tiles crappified without any noise, for nearly noise-free real LR),
# NET="--lr_space --encoder_stride 16" for a blind EM model (the plan tells EM models the noise level),
# or NET="--encoder_stride 32" TILE=128 EPOCHS=3 for the paper's HR-space U-Net (the epochs are planned for the
# --lr_space network, ~5x faster per image). Unless EPOCHS is fixed, train.py fits the epochs to the time left
# (--minutes, re-planned from each epoch's measured time) and the models are named without `_e{epochs}`; a
# fixed EPOCHS runs exactly that many (the same seed then gives the same model on one machine) and names them
# `..._e{EPOCHS}`.
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(train_model ...) stops the script too
[ $# -ge 3 ] || { echo "usage: recipes/quick.sh SRC_DIR WORK_DIR CRAP_FUNC [N_FRAMES]" >&2; exit 2; }
SRC_DIR=$1 WORK=$2 CRAP_FUNC=$3 N_FRAMES=${4:-1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # python -m utils.quick from any folder
: "${PY:=$ROOT/.venv/bin/python}" "${MINUTES:=20}" "${SEED:=0}" "${ARCH:=resnet34}" "${TRAIN_EXTRA=}" "${LR_DIR:=}"
: "${WARM:=0.75}" "${FRESH:=1}" "${AVERAGE:=4}"
[[ $WARM =~ ^(0|1|0?\.[0-9]+)$ ]] || { echo "error: WARM must be a share of the budget from 0 to 1, not '$WARM'" >&2; exit 2; }
if [ "$N_FRAMES" = 1 ]; then LR_TYPE=s; else : "${LR_TYPE:=t}"; fi
# No SSIM term in a multi-frame run (either model): it cost the 5-frame model 0.17-0.30 dB on held-out movies.
SSIM_ARG=; [ "$N_FRAMES" = 1 ] || SSIM_ARG="--ssim_weight 0"
START=$(date +%s)
mkdir -p "$WORK"
INFO="$WORK/quick.csv"
NAME=quick_${CRAP_FUNC}
OVERHEAD=90  # seconds per model for the plan's probe, step 2 and saving
TAIL=45      # seconds per model outside train.py's timed epochs: its start (imports, reading tiles) and saving
FIT_EPOCHS=${EPOCHS-}  # empty: train.py fits the epochs to the time (--minutes)

left() { echo $(( MINUTES * 60 - ($(date +%s) - START) )); }

# train_model N_FRAMES LR_TYPE SECONDS [START_MODEL]: plan, step 2 and step 3 of one model (from START_MODEL's
# weights if given) in SECONDS of training plus OVERHEAD; prints its name. Runs in a subshell ($(...)): one
# model's plan never leaks into the next.
train_model() {
    local nf=$1 lt=$2 secs=$3 start=${4:-} began line key name bw cn budget=()
    began=$(date +%s)
    echo "== quick: planning the $nf-frame model for $(( secs / 60 )) min $(( secs % 60 )) s" >&2
    PLAN=$("$PY" -m utils.quick "$INFO" --crap_func "$CRAP_FUNC" --n_frames "$nf" --minutes "$(( secs / 6 ))e-1" \
           --arch "$ARCH" --seed "$SEED" ${LR_DIR:+--lr_dir "$LR_DIR"} ${TILE:+--tile "$TILE"} ${start:+--warm} \
           $SSIM_ARG)
    # Values already set in the environment win over the plan's.
    while IFS= read -r line; do
        key=${line%%=*}
        [ -n "${!key+x}" ] || printf -v "$key" '%s' "${line#*=}"
        echo "  $key=${!key}" >&2
    done <<< "$PLAN"
    if [ "$FRESH" = 1 ]; then
        TILE_ARGS=(--hr_only) DATASET="${lt}_${nf}_quick_hr"
        FLY_ARGS=(--crap_func "$CRAP_FUNC" --crap_strength "$STRENGTH" --crap_bandwidth "$BANDWIDTH"
                  --crap_bandwidth_share "$BANDWIDTH_SHARE" --crap_counts "$COUNTS"
                  --crap_counts_share "$COUNTS_SHARE" --crap_clean_share "$CLEAN_SHARE")
    else
        TILE_ARGS=(--crap_func "$CRAP_FUNC") DATASET="${lt}_${nf}_quick_${CRAP_FUNC}" FLY_ARGS=()
        [ "$BANDWIDTH $COUNTS" = "0 0" ] || echo "== quick: note: FRESH=0 pairs are crappified once in step 2," \
            "without BANDWIDTH $BANDWIDTH or COUNTS $COUNTS (only pairs drawn on the fly take them)" >&2
    fi
    echo "== quick: step 2, $N_TRAIN + $N_VALID HR tiles of $TILE px" >&2
    "$PY" "$ROOT/tile_from_info.py" --out "$WORK/datasets" --info "$INFO" --tile "$TILE" --n_train "$N_TRAIN" \
        --n_valid "$N_VALID" --n_frames "$nf" --lr_type "$lt" "${TILE_ARGS[@]}" --seed "$SEED" --clean >&2
    name="${lt}_${nf}_${NAME}_e${EPOCHS}"
    if [ -z "$FIT_EPOCHS" ]; then
        # This model's share of the budget (its training time plus OVERHEAD) less what its plan and step 2 used.
        budget=(--minutes "$(awk -v s="$(( secs + OVERHEAD ))" -v u="$(( $(date +%s) - began ))" -v t="$TAIL" \
                'BEGIN { m = (s - u - t) / 60; printf "%.2f", (m > 0.1 ? m : 0.1) }')")
        name="${lt}_${nf}_${NAME}"
    fi
    bw=$BANDWIDTH cn=$COUNTS
    [ "$BANDWIDTH" = 0 ] || [ "$BANDWIDTH_SHARE" = 1 ] || bw+=" for $BANDWIDTH_SHARE of the tiles"
    [ "$COUNTS" = 0 ] || [ "$COUNTS_SHARE" = 1 ] || cn+=" for $COUNTS_SHARE of the tiles"
    echo "== quick: step 3, ${budget[1]:+about }$EPOCHS epochs${budget[1]:+ in ${budget[1]} min} of $CRAP_FUNC pairs" \
         "(fresh: $FRESH, strength $STRENGTH, bandwidth $bw, counts $cn, noise-free $CLEAN_SHARE) on $DEVICE" >&2
    "$PY" "$ROOT/train.py" --datasetname "$DATASET" --data_path "$WORK/datasets" --model_dir "$WORK/models" \
        --save_name "$NAME" --lr_type "$lt" --n_frames "$nf" --arch "$ARCH" $NET --size "$TILE" \
        --tile_sz "$TILE" --bs "$BS" --workers "$WORKERS" --cycles "$EPOCHS" --lr_start "$LR" --lr "$LR" $LOSS \
        "${FLY_ARGS[@]}" "${budget[@]}" --average_epochs "$AVERAGE" --seed "$SEED" ${start:+--load_name "$start"} $TRAIN_EXTRA --force >&2
    echo "$name"
}

echo "== quick: step 1, frame statistics of $SRC_DIR" >&2
"$PY" "$ROOT/gen_sample_info.py" "$SRC_DIR" --out "$INFO" --force >&2

ONE=
if [ "$N_FRAMES" != 1 ] && [ "$WARM" != 0 ]; then
    # A short movie holds too few windows to teach a 5-frame model from scratch what one frame already shows
    # (it averaged neighbours and lost to the 1-frame model on nearly clean LR); started from the 1-frame model
    # it only has to learn what the neighbours add (README, "What to expect"). Three quarters of the budget: the
    # 1-frame restoration still climbs at 20 minutes and the neighbours' share is learnt in a few; with half, the
    # 5-frame model trailed the 1-frame one on noise-free LR (bench/RESULTS.md, "A longer 1-frame start").
    SECS=$(awk -v s="$(left)" -v o="$OVERHEAD" -v w="$WARM" 'BEGIN { print int((s - 2 * o) * w) }')
    ONE=$(train_model 1 s "$SECS")
    echo "== quick: 1-frame model $ONE starts the $N_FRAMES-frame one" >&2
fi
FINAL=$(train_model "$N_FRAMES" "$LR_TYPE" $(( $(left) - OVERHEAD )) "$ONE")
echo "== quick: done in $(( $(date +%s) - START )) s" >&2
echo "$FINAL"
