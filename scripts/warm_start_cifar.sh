#!/usr/bin/env bash
# Sparsify a trained dense model (issue 14: the warm start most users have): from the weights of a
# dense CIFAR-10 ResNet-20 run (`rewa train --init-from`, fresh optimizer state), EPOCHS epochs of
# ReWA (K=9, M=2, its decay steered to S by --target-sparsity) against the same epochs of GMP to S,
# same learning rate (LR, cosine, no warmup), for S in 90/95/99%. Each run is then pruned to
# exactly S by one global magnitude threshold, BatchNorm re-estimated (no further fine-tuning), and
# `rewa study cifar` tabulates them (results/warm_start/).
#
#   DATA=/path/to/cifar10 INIT=runs/cifar10_resnet20/dense_60ep scripts/warm_start_cifar.sh
# Rerun the same command to resume.
set -euo pipefail
DATA=${DATA:-data/cifar10}
INIT=${INIT:-runs/cifar10_resnet20/dense_60ep}
RUNS=${RUNS:-runs/warm_start}
OUT=${OUT:-results/warm_start}
EPOCHS=${EPOCHS:-5}
LR=${LR:-0.01}
TARGETS=${TARGETS:-"0.9 0.95 0.99"}
COMMIT=${COMMIT:-0}
read -r -a EXTRA <<<"${EXTRA:-}"
[ -e "$INIT" ] || { echo "INIT=$INIT: no such run directory or checkpoint" >&2; exit 2; }
COMMON=(--init-from "$INIT" --resume --set data.data_dir="$DATA" --set output.runs_root="$RUNS"
        --set schedule.epochs="$EPOCHS" --set schedule.warmup_epochs=0 --set method.lr="$LR"
        --set output.progress=false)

commit() {
  [ "$COMMIT" = 1 ] || return 0
  git add -- "$OUT" && git commit -q -m "results/warm_start: $1" -- "$OUT" \
    || echo "WARNING: could not commit $1 (commit $OUT by hand)"
}

run() {  # NAME S CONFIG [ARGS...]: train from INIT, prune to S with BatchNorm re-estimated
  local name=$1 s=$2 config=$3; shift 3
  if [ ! -f "$RUNS/$name/eval.json" ]; then
    echo "$(date -u +%FT%TZ) training $name"
    rewa train --config "configs/cifar10_resnet20_$config.yaml" --set output.name="$name" \
      "${COMMON[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"$RUNS/$name.log" 2>&1 \
      || { echo "FAILED: $name (see $RUNS/$name.log)"; return 1; }
  fi
  if [ ! -f "$RUNS/$name/prune_$s/prune.json" ]; then
    rewa prune "$RUNS/$name" --sparsity "$s" --bn-recalibrate 10000 --out "$RUNS/$name/prune_$s" \
      --resume --quiet --data-dir "$DATA" >"$RUNS/$name.prune.log" 2>&1 \
      || { echo "FAILED: prune $name (see $RUNS/$name.prune.log)"; return 1; }
  fi
  mkdir -p "$OUT/runs/$name/prune_$s"
  cp "$RUNS/$name"/{config.yaml,run.json,metrics.jsonl,eval.json} "$OUT/runs/$name/"
  cp "$RUNS/$name/prune_$s"/{prune.json,prune.md} "$OUT/runs/$name/prune_$s/"
  commit "$name"
}

mkdir -p "$RUNS" "$OUT"
failed=0
for s in $TARGETS; do
  run "rewa_target_$s" "$s" rewa --target-sparsity "$s" \
    --set method.options.weight_decay=1.0e-3 || failed=1
  run "gmp_$s" "$s" gmp --set method.options.target="$s" || failed=1
done
[ "$failed" = 0 ] || { echo "some steps failed; rerun the same command to resume them"; exit 1; }
rewa study cifar "$OUT/runs" --out "$OUT"
commit "table and plot"
