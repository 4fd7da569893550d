#!/usr/bin/env bash
# Target-sparsity control on CIFAR-10 ResNet-20 at the CPU scale of scripts/cifar10_resnet20_cpu.sh
# (5,000 training images, 6 epochs, evaluation on 1,000 val + 1,000 test images, one thread):
# each method starts from a strength too weak for this budget (see its uncontrolled reference run
# METHOD_base_X) and the controller raises it so that training ends at S, for S in 0.9 0.95 0.99;
# each controlled run is then pruned at 1e-3 with 3 epochs of masked fine-tuning (rewa prune).
#   ReWA K=9 M=2 from weight decay 1e-3; the ℓ1 penalty by subgradient (l1) and by a proximal
#   step (l1-prox), both on SGD from λ = 1e-4.
#   DATA=/path/to/cifar10 [METHODS="rewa l1 l1-prox"] [JOBS=2] scripts/target_sparsity_cifar.sh [--set K=V ...]
# Finished steps are skipped, unfinished runs resume: rerun the same command after an interruption.
set -euo pipefail
DATA=${DATA:-data/cifar10}
OUT=${OUT:-results/target_sparsity}
RUNS=${RUNS:-runs/target_sparsity}
TARGETS=${TARGETS:-"0.9 0.95 0.99"}
METHODS=${METHODS:-"rewa l1 l1-prox"}
JOBS=${JOBS:-2}  # runs side by side, one thread each
COMMON=(--set data.data_dir="$DATA" --set data.limit_train=5000 --set data.limit_eval=1000
        --set schedule.epochs=6 --set train.threads=1 --set output.runs_root="$RUNS"
        --set output.progress=false --set sparsity.every=2 --set output.log_every=5)
declare -A CONFIG=([rewa]=cifar10_resnet20_rewa [l1]=cifar10_resnet20_l1 [l1-prox]=cifar10_resnet20_l1)
declare -A KNOB=([rewa]=weight_decay [l1]=lam [l1-prox]=lam)
declare -A BASE=([rewa]=1.0e-3 [l1]=1.0e-4 [l1-prox]=1.0e-4)  # YAML reads 1e-3 as a string
declare -A LABEL=([rewa]=1e-3 [l1]=1e-4 [l1-prox]=1e-4)

train() {  # METHOD NAME [--target-sparsity S] [--set ...]
  local method=$1 name=$2; shift 2
  [ -f "$RUNS/$name/eval.json" ] && return
  rewa train --config "configs/${CONFIG[$method]}.yaml" "${COMMON[@]}" \
    --set method.name="$method" --set "method.options.${KNOB[$method]}=${BASE[$method]}" \
    --set output.name="$name" \
    --resume "$@" >"$RUNS/$name.log" 2>&1 || { echo "FAILED: $name (see $RUNS/$name.log)"; return 1; }
  echo "trained $name"
}

prune() {  # NAME: zero |x| <= 1e-3 (the controller's threshold), 3 epochs of masked fine-tuning
  local name=$1
  [ -f "$RUNS/$name/pruned/prune.json" ] && return
  rewa prune "$RUNS/$name" --threshold 1e-3 --finetune-epochs 3 --out "$RUNS/$name/pruned" \
    --quiet --resume --set output.progress=false >"$RUNS/$name.prune.log" 2>&1 \
    || { echo "FAILED: prune $name (see $RUNS/$name.prune.log)"; return 1; }
  echo "pruned $name"
}

throttle() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done; }

mkdir -p "$RUNS"
runs=()
for m in $METHODS; do
  [ -n "${CONFIG[$m]:-}" ] || { echo "unknown method $m (rewa, l1, l1-prox)"; exit 2; }
  throttle; train "$m" "${m}_base_${LABEL[$m]}" "$@" &
  runs+=("$RUNS/${m}_base_${LABEL[$m]}")
  for S in $TARGETS; do
    throttle; { train "$m" "${m}_target_$S" --target-sparsity "$S" "$@" && prune "${m}_target_$S"; } &
    runs+=("$RUNS/${m}_target_$S")
  done
done
failed=0
while [ -n "$(jobs -rp)" ]; do wait -n || failed=1; done
for r in "${runs[@]}"; do
  [ -f "$r/eval.json" ] || failed=1
  [[ "$r" != *_target_* ]] || [ -f "$r/pruned/prune.json" ] || failed=1
done
[ "$failed" = 0 ] || { echo "some runs failed; rerun the same command to resume them"; exit 1; }

rewa target-sparsity summarize "${runs[@]}" --out "$OUT/cifar10_resnet20"
for r in "${runs[@]}"; do  # the per-layer allocation of each sparse model travels with the table
  [ -f "$r/pruned/prune.json" ] || continue
  mkdir -p "$OUT/cifar10_resnet20/prune_$(basename "$r")"
  cp "$r/pruned/prune.md" "$r/pruned/prune.json" "$OUT/cifar10_resnet20/prune_$(basename "$r")/"
done
