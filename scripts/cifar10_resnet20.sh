#!/usr/bin/env bash
# The full-scale CIFAR-10 ResNet-20 study (results/cifar10_resnet20/): dense, ReWA (K=9, M=2, SGD
# base) at three fixed strengths and steered to 90/95/98/99% (--target-sparsity), proximal l1 at
# the same three strengths, GMP (global; one per-layer run at 95%), STR (two initial thresholds)
# and Spred (both inits), each trained for the same 30 epochs on 45,000 images
# (configs/cifar10_resnet20_*.yaml share every block but `method`), one run after another with
# every core. Each sparse model is then
# pruned by one global magnitude threshold to exactly S (`rewa prune --sparsity S`; S in 90/95/98/99%
# for the fixed-strength runs, the run's own target for the steered and GMP runs) and reported three
# ways: as pruned (the paper's protocol), after re-estimating BatchNorm statistics on BN_IMAGES
# training images, and after FT_EPOCHS epoch(s) of masked fine-tuning at each lr of FT_LRS, the
# one of best validation accuracy kept (no single lr suits every method:
# results/cifar10_resnet20/ft_check).
#
#   DATA=/path/to/cifar10 scripts/cifar10_resnet20.sh        # everything; rerun to resume
#   DATA=... ONLY="dense rewa_1e-4" scripts/cifar10_resnet20.sh
#   COMMIT=1 ...                                             # git-commit each run's results
#   EXTRA="--set data.limit_train=512 --set schedule.epochs=1" ...  # added to every rewa train
#   GATE=1 ...      # instead: the sanity gate's long dense runs, to $OUT/gate (dense >= 90%?)
#   SEEDS=1 ...     # instead: runs of the table again with another seed, to $OUT/seeds
#
# Finished steps are skipped and an interrupted run resumes from its last checkpoint, so after an
# interruption rerun the same command. Each run's config.yaml, run.json, metrics.jsonl, eval.json
# and prune results are copied to $OUT/runs/NAME as the run ends (checkpoints stay in $RUNS).
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10_resnet20}
OUT=${OUT:-results/cifar10_resnet20}
FT_EPOCHS=${FT_EPOCHS:-1}
read -r -a FT_LRS <<<"${FT_LRS:-0.01 0.001}"
BN_IMAGES=${BN_IMAGES:-10000}
ONLY=${ONLY:-}
COMMIT=${COMMIT:-0}
read -r -a EXTRA <<<"${EXTRA:-}"
ALL="0.9 0.95 0.98 0.99"

# NAME  CONFIG  PRUNE-AT  [rewa train arguments]    (in the order they run; the last six were
# first run before fine-tuning chose its lr on validation and are trained again for it, last,
# those whose table cells the lr choice can change most first)
STUDY=(
  "rewa_1e-3        rewa    all   --set method.options.weight_decay=1.0e-3"
  "l1prox_3e-4      l1prox  all   --set method.options.lam=3.0e-4"
  "l1prox_1e-3      l1prox  all   --set method.options.lam=1.0e-3"
  "gmp_0.9          gmp     0.9   --set method.options.target=0.9"
  "gmp_0.99         gmp     0.99  --set method.options.target=0.99"
  "gmp_0.98         gmp     0.98  --set method.options.target=0.98"
  "rewa_target_0.9  rewa    0.9   --target-sparsity 0.9 --set method.options.weight_decay=3.0e-5"
  "rewa_target_0.99 rewa    0.99  --target-sparsity 0.99 --set method.options.weight_decay=3.0e-5"
  "rewa_target_0.98 rewa    0.98  --target-sparsity 0.98 --set method.options.weight_decay=3.0e-5"
  "gmp_layer_0.95   gmp     0.95  --set method.options.target=0.95 --set method.options.scope=layer"
  "str_5e-4         str     all   --set method.options.weight_decay=5.0e-4"
  "str_5e-4_s-3     str     all   --set method.options.weight_decay=5.0e-4 --set method.options.s_init=-3.0"
  "spred_5e-4       spred   all   --set method.options.init=sqrt"
  "spred_indep_5e-4 spred   all   --set method.options.init=independent"
  "rewa_target_0.95 rewa    0.95  --target-sparsity 0.95 --set method.options.weight_decay=3.0e-5"
  "rewa_1e-4        rewa    all   --set method.options.weight_decay=1.0e-4"
  "l1prox_1e-4      l1prox  all   --set method.options.lam=1.0e-4"
  "rewa_3e-4        rewa    all   --set method.options.weight_decay=3.0e-4"
  "gmp_0.95         gmp     0.95  --set method.options.target=0.95"
  "dense            dense   all"
  "rigl_0.9         rigl    0.9   --set method.options.sparsity=0.9"
  "rigl_0.95        rigl    0.95  --set method.options.sparsity=0.95"
  "rigl_0.98        rigl    0.98  --set method.options.sparsity=0.98"
  "rigl_0.99        rigl    0.99  --set method.options.sparsity=0.99"
  "powerprop        powerprop all"
  "powerprop_5e-4   powerprop all --set method.options.weight_decay=5.0e-4"
)

# The sanity gate: is the dense recipe's test accuracy >= 90% on this data with more epochs?
# Its runs go to $OUT/gate/runs (dense_30ep, dense_60ep and dense_wd1e-4_60ep there were run by
# hand before this list; $OUT/gate/README.md reads them).
GATE_RUNS=(
  "dense_100ep      dense   -     --set schedule.epochs=100"
)

# The spread between seeds: the closest contested cells of the table (98%: steered ReWA and GMP
# as pruned) trained again as NAME_seed1, their STUDY entry with train.seed=1 (seed 0 there; the
# validation split is fixed by data.split_seed), to $OUT/seeds/runs with their own table.
SEEDED="rewa_target_0.98 gmp_0.98"
SEED_RUNS=()
for entry in "${STUDY[@]}"; do
  read -r name rest <<<"$entry"
  [[ " $SEEDED " == *" $name "* ]] && SEED_RUNS+=("${name}_seed1 $rest --set train.seed=1")
done
GATE=${GATE:-0}
SEEDS=${SEEDS:-0}
if [ "$GATE" = 1 ] && [ "$SEEDS" = 1 ]; then
  echo "GATE=1 and SEEDS=1 are two studies: run one, then the other" >&2
  exit 2
elif [ "$GATE" = 1 ]; then
  STUDY=("${GATE_RUNS[@]}")
  OUT=$OUT/gate
elif [ "$SEEDS" = 1 ]; then
  STUDY=("${SEED_RUNS[@]}")
  OUT=$OUT/seeds
fi

CONFIG_PREFIX=cifar10_resnet20_
prune_done() {  # PRUNE_JSON: written, and its fine-tuning lr chosen among FT_LRS when several
  [ -f "$1" ] && { [ "${#FT_LRS[@]}" -lt 2 ] || grep -q '"finetune_trials"' "$1"; }
}
prune_run() {  # NAME S: prune to S, re-estimate BatchNorm, masked fine-tuning
  rewa prune "$RUNS/$1" --sparsity "$2" --bn-recalibrate "$BN_IMAGES" \
    --finetune-epochs "$FT_EPOCHS" --finetune-lr "${FT_LRS[@]}" --out "$RUNS/$1/prune_$2" \
    --resume --quiet --data-dir "$DATA" \
    --set output.progress=false --set eval.thresholds=[] --set eval.target_sparsities=[]
}

. "$(dirname "$0")/lib/study.sh"
study_main
[ "$GATE" = 1 ] && exit 0
rewa study cifar "$OUT/runs" --out "$OUT"
study_commit "table and plot"
