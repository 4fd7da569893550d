#!/usr/bin/env bash
# Target-sparsity control on CIFAR-10 ResNet-20 at the CPU scale of scripts/cifar10_resnet20_cpu.sh
# (5,000 training images, 6 epochs, evaluation on 1,000 val + 1,000 test images, one thread):
# ReWA K=9 M=2 starting from weight decay 1e-3 (too weak for this budget, see the uncontrolled
# reference run rewa_base_1e-3), the controller raising it so that training ends at S, for S in
# 0.9 0.95 0.99; then each run pruned at 1e-3 with 3 epochs of masked fine-tuning (rewa prune).
#   DATA=/path/to/cifar10 scripts/target_sparsity_cifar.sh [--set KEY=VALUE ...]
set -euo pipefail
DATA=${DATA:-data/cifar10}
OUT=${OUT:-results/target_sparsity}
RUNS=${RUNS:-runs/target_sparsity}
TARGETS=${TARGETS:-"0.9 0.95 0.99"}
COMMON=(--set data.data_dir="$DATA" --set data.limit_train=5000 --set data.limit_eval=1000
        --set schedule.epochs=6 --set train.threads=1 --set output.runs_root="$RUNS"
        --set output.progress=false --set method.options.weight_decay=1.0e-3
        --set sparsity.every=2)
done_runs=()
if [ ! -f "$RUNS/rewa_base_1e-3/eval.json" ]; then  # the base strength without control
  rewa train --config configs/cifar10_resnet20_rewa.yaml "${COMMON[@]}" \
    --set output.name=rewa_base_1e-3 --resume "$@"
fi
done_runs+=("$RUNS/rewa_base_1e-3")
for S in $TARGETS; do
  name="rewa_target_$S"
  if [ ! -f "$RUNS/$name/eval.json" ]; then
    rewa train --config configs/cifar10_resnet20_rewa.yaml "${COMMON[@]}" --target-sparsity "$S" \
      --set output.name="$name" --resume "$@"
  fi
  # the sparse model: zero |x| <= 1e-3 (the controller's threshold), 3 epochs of masked fine-tuning
  if [ ! -f "$RUNS/$name/pruned/prune.json" ]; then
    rewa prune "$RUNS/$name" --threshold 1e-3 --finetune-epochs 3 --out "$RUNS/$name/pruned" \
      --quiet --resume --set output.progress=false
  fi
  done_runs+=("$RUNS/$name")
done
rewa target-sparsity summarize "${done_runs[@]}" --out "$OUT/cifar10_resnet20"
for S in $TARGETS; do  # the per-layer allocation of each sparse model travels with the table
  mkdir -p "$OUT/cifar10_resnet20/prune_$S"
  cp "$RUNS/rewa_target_$S/pruned/prune.md" "$RUNS/rewa_target_$S/pruned/prune.json" \
    "$OUT/cifar10_resnet20/prune_$S/"
done
