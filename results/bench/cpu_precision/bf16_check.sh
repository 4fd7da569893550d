#!/usr/bin/env bash
# The short bf16-vs-float32 check of results/bench/cpu_precision/bf16_check.md (run from the repo root).
cd /work/main
for b in false true; do
  rewa train --config configs/cifar10_resnet20_rewa.yaml --set data.data_dir=/work/shared/data/cifar10 \
    --set data.limit_train=2560 --set data.limit_eval=1000 --set schedule.epochs=3 \
    --set method.options.weight_decay=5.0e-3 --set model.bf16=$b --set train.threads=2 \
    --set eval.thresholds=[1.0e-3] --set eval.target_sparsities=[] --set eval.plots=false \
    --set output.runs_root=runs/bf16_check --set output.name=bf16_$b --set output.progress=false --force > /tmp/bf16chk/$b.log 2>&1
done
