#!/usr/bin/env bash
# CPU-scale CIFAR-10 ResNet-20 comparison (issue 4), sized for a 2-core machine:
# 5,000 training images (seeded subset), 6 epochs, evaluation on 1,000 val + 1,000 test images.
# The decay budget sum_t lr_t * kappa is scaled to this short run (docs/METHOD.md, practical note).
#   DATA=/path/to/cifar10 OUT=results/cifar10_resnet20_cpu scripts/cifar10_resnet20_cpu.sh
set -euo pipefail
DATA=${DATA:-data/cifar10}
OUT=${OUT:-results/cifar10_resnet20_cpu}
RUNS=${RUNS:-runs/cifar10_resnet20_cpu}
COMMON=(--set data.data_dir="$DATA" --set data.limit_train=5000 --set data.limit_eval=1000
        --set schedule.epochs=6 --set train.threads=1 --set output.runs_root="$RUNS" --set output.progress=false)
run() {  # name config [overrides...]
  local name=$1 config=$2; shift 2
  if [ -f "$RUNS/$name/eval.json" ]; then echo "skip $name (done)"; return; fi
  rewa train --config "configs/$config.yaml" "${COMMON[@]}" --set output.name="$name" "$@" --resume
}
# Two chains side by side, one thread each: on 2 cores this is ~3x the throughput of one
# 2-thread process (measured by the trainer's author under load).
{
  run dense      cifar10_resnet20_dense
  run l1_3e-3    cifar10_resnet20_l1    --set method.options.lam=3.0e-3
  run l1_1e-3    cifar10_resnet20_l1    --set method.options.lam=1.0e-3
} &
{
  run rewa_2e-2  cifar10_resnet20_rewa  --set method.options.weight_decay=2.0e-2
  run rewa_7e-3  cifar10_resnet20_rewa  --set method.options.weight_decay=7.0e-3
  run spred_3e-3 cifar10_resnet20_spred --set method.options.weight_decay=3.0e-3
  run rewa_2e-3  cifar10_resnet20_rewa  --set method.options.weight_decay=2.0e-3
} &
wait
finished=(); for r in dense l1_1e-3 l1_3e-3 rewa_2e-3 rewa_7e-3 rewa_2e-2 spred_3e-3; do
  [ -f "$RUNS/$r/eval.json" ] && finished+=("$RUNS/$r"); done
rewa report "${finished[@]}" --out "$OUT"
for r in "${finished[@]}"; do  # each run's own sweep and config next to the comparison
  mkdir -p "$OUT/runs/$(basename "$r")"
  cp "$r"/eval.md "$r"/eval.json "$r"/config.yaml "$r"/run.json "$OUT/runs/$(basename "$r")/"
done
