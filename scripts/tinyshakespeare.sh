#!/usr/bin/env bash
# The sparse language-model study (results/tinyshakespeare/): a 6-layer LLaMA-style decoder on tiny
# Shakespeare by character, trained for the same 8M tokens by dense AdamW, AdamW + proximal l1,
# GMP and ReWA on an AdamW base (K=9, M=2 at a high learning rate; M=0 with eps > 0), each
# (configs/tinyshakespeare_llama_*.yaml share every block but `method`), one run after another.
# Every run is then pruned by one global magnitude threshold over the attention and MLP matrices
# to 50/70/80/90% (`rewa prune --sparsity S`) and fine-tuned with the masks for FT_TOKENS tokens
# (the same short AdamW fine-tuning for all); `rewa study lm` tabulates validation loss and
# perplexity, plots them and samples text from the dense and an 80%-sparse model.
#
#   DATA=/path/to/tinyshakespeare scripts/tinyshakespeare.sh      # everything; rerun to resume
#   DATA=... ONLY="dense rewa" COMMIT=1 scripts/tinyshakespeare.sh
#   EXTRA="--set schedule.epochs=1" ...                           # added to every rewa train
#   SPARSITIES="0.5 0.7 0.8 0.9 0.95 0.98" ...  # prune every run further (a rerun adds them)
set -euo pipefail
DATA=${DATA:-data/tinyshakespeare}
RUNS=${RUNS:-runs/tinyshakespeare}
OUT=${OUT:-results/tinyshakespeare}
FT_TOKENS=${FT_TOKENS:-262144}  # 32 steps of 64 x 128 tokens
FT_LR=${FT_LR:-3e-4}
ONLY=${ONLY:-}
COMMIT=${COMMIT:-0}
read -r -a EXTRA <<<"${EXTRA:-}"
ALL=${SPARSITIES:-0.5 0.7 0.8 0.9}  # the sparsities every run is pruned to

# NAME  CONFIG  PRUNE-AT (all, or S,S)  [rewa train arguments]    (in order; the second strength
# of each regularizer is its validation trial: ReWA's decay 0.3 already put 99% of the weights
# below 0.01 and cost 0.18 nats unpruned, so its trial is the weaker 0.1; l1 at lam 1e-3 had
# zeroed 99.97% of the weights by epoch 4, so its trial is the weaker 1e-4)
STUDY=(
  "dense           dense    all"
  "rewa            rewa     all"
  "rewa_m0         rewa_m0  all"
  "l1prox          l1prox   all"
  "gmp_0.8         gmp      0.8,0.9"
  "rewa_wd0.1      rewa     all   --set method.options.weight_decay=0.1"
  "rewa_m0_wd0.1   rewa_m0  all   --set method.options.weight_decay=0.1"
  "l1prox_1e-4     l1prox   all   --set method.options.lam=1.0e-4"
)

CONFIG_PREFIX=tinyshakespeare_llama_
prune_run() {  # NAME S: prune the attention/MLP matrices to S, short masked fine-tuning
  rewa prune "$RUNS/$1" --sparsity "$2" --finetune-epochs 1 --finetune-lr "$FT_LR" \
    --finetune-weight-decay 0 --out "$RUNS/$1/prune_$2" --resume --quiet --data-dir "$DATA" \
    --set data.limit_train="$FT_TOKENS" --set output.progress=false \
    --set eval.target_sparsities=[]
}

. "$(dirname "$0")/lib/study.sh"
study_main
rewa study lm "$OUT/runs" --out "$OUT" --checkpoints "$RUNS" --data-dir "$DATA"
study_commit "table, plot and samples"
