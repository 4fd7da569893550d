#!/usr/bin/env bash
# Sparsify a trained dense model (issue 14: the warm start most users have): from the weights of a
# dense CIFAR-10 ResNet-20 run (`rewa train --init-from`, fresh optimizer state), EPOCHS epochs of
# ReWA (K=9, M=2, its decay steered to S by --target-sparsity) against the same epochs of GMP to S,
# same learning rate (LR, cosine, no warmup), for S in 90/95/99%. Each run is then pruned to
# exactly S by one global magnitude threshold, BatchNorm re-estimated (no further fine-tuning), and
# `rewa study cifar` tabulates them (results/warm_start/). The rewa_rms_* runs test why the
# rewa_target_* runs lose: the same ReWA steered on |x| / rms(layer) <= REL_THRESHOLD instead of
# |x| <= 1e-3 (a layer feeding BatchNorm can meet an absolute threshold by shrinking whole), and
# pruned by the global magnitude of |x| / rms(layer).
#
#   DATA=/path/to/cifar10 INIT=runs/cifar10_resnet20/dense_60ep scripts/warm_start_cifar.sh
#   COMMIT=1 EPOCHS=3 ...            # git-commit each run's small files; fewer epochs
# Rerun the same command to resume (the train/prune/save/commit loop is scripts/lib/study.sh).
set -euo pipefail
DATA=${DATA:-data/cifar10}
INIT=${INIT:-runs/cifar10_resnet20/dense_60ep}
RUNS=${RUNS:-runs/warm_start}
OUT=${OUT:-results/warm_start}
EPOCHS=${EPOCHS:-5}
LR=${LR:-0.01}
TARGETS=${TARGETS:-"0.9 0.95 0.99"}
BN_IMAGES=${BN_IMAGES:-10000}
REL_THRESHOLD=${REL_THRESHOLD:-0.01}
ONLY=${ONLY:-}
COMMIT=${COMMIT:-0}
[ -e "$INIT" ] || { echo "INIT=$INIT: no such run directory or checkpoint" >&2; exit 2; }
read -r -a EXTRA <<<"${EXTRA:-}"
EXTRA=(--init-from "$INIT" --set schedule.epochs="$EPOCHS" --set schedule.warmup_epochs=0
       --set method.lr="$LR" ${EXTRA[@]+"${EXTRA[@]}"})
ALL=$TARGETS

STUDY=()  # NAME CONFIG PRUNE-AT [rewa train arguments]
for s in $TARGETS; do
  STUDY+=("rewa_target_$s rewa $s --target-sparsity $s --set method.options.weight_decay=1.0e-3"
          "gmp_$s gmp $s --set method.options.target=$s")
done
RMS="--set sparsity.normalize=rms --set sparsity.threshold=$REL_THRESHOLD"
for s in $TARGETS; do
  STUDY+=("rewa_rms_$s rewa $s --target-sparsity $s --set method.options.weight_decay=1.0e-3 $RMS")
done

CONFIG_PREFIX=cifar10_resnet20_
prune_run() {  # NAME S: prune to S, re-estimate BatchNorm (no fine-tuning)
  local normalize=none
  [[ $1 == rewa_rms_* ]] && normalize=rms
  rewa prune "$RUNS/$1" --sparsity "$2" --normalize "$normalize" --bn-recalibrate "$BN_IMAGES" \
    --out "$RUNS/$1/prune_$2" --resume --quiet --data-dir "$DATA"
}

. "$(dirname "$0")/lib/study.sh"
study_main
rewa study cifar "$OUT/runs" --out "$OUT"
study_commit "table and plot"
