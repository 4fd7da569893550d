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
set -euo pipefail
DATA=${DATA:-data/tinyshakespeare}
RUNS=${RUNS:-runs/tinyshakespeare}
OUT=${OUT:-results/tinyshakespeare}
FT_TOKENS=${FT_TOKENS:-262144}  # 32 steps of 64 x 128 tokens
FT_LR=${FT_LR:-3e-4}
ONLY=${ONLY:-}
COMMIT=${COMMIT:-0}
read -r -a EXTRA <<<"${EXTRA:-}"
ALL="0.5 0.7 0.8 0.9"

# NAME  CONFIG  PRUNE-AT (all, or S,S)  [rewa train arguments]    (in order; the second strength
# of each regularizer is its validation trial)
STUDY=(
  "dense           dense    all"
  "rewa            rewa     all"
  "rewa_m0         rewa_m0  all"
  "l1prox          l1prox   all"
  "gmp_0.8         gmp      0.8,0.9"
  "rewa_wd1        rewa     all   --set method.options.weight_decay=1.0"
  "rewa_m0_wd1     rewa_m0  all   --set method.options.weight_decay=1.0"
  "l1prox_3e-3     l1prox   all   --set method.options.lam=3.0e-3"
)

commit() {
  [ "$COMMIT" = 1 ] || return 0
  git add -- "$OUT" && git commit -q -m "results/tinyshakespeare: $1" -- "$OUT" \
    || echo "WARNING: could not commit $1 (commit $OUT by hand)"
}

save() {  # NAME: the run's small files (not checkpoints) next to the table
  local name=$1 dest="$OUT/runs/$1"
  mkdir -p "$dest"
  for f in config.yaml run.json metrics.jsonl eval.json eval.md; do
    [ -f "$RUNS/$name/$f" ] && cp "$RUNS/$name/$f" "$dest/"
  done
  for p in "$RUNS/$name"/prune_*; do
    [ -f "$p/prune.json" ] || continue
    mkdir -p "$dest/$(basename "$p")"
    cp "$p/prune.json" "$p/prune.md" "$dest/$(basename "$p")/"
  done
}

train() {  # NAME CONFIG [ARGS...]
  local name=$1 config=$2; shift 2
  [ -f "$RUNS/$name/eval.json" ] && return 0
  echo "$(date -u +%FT%TZ) training $name"
  rewa train --config "configs/tinyshakespeare_llama_$config.yaml" --resume \
    --set data.data_dir="$DATA" --set output.runs_root="$RUNS" --set output.name="$name" \
    --set output.progress=false "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"$RUNS/$name.log" 2>&1 \
    || { echo "FAILED: $name (see $RUNS/$name.log)"; return 1; }
  save "$name" && commit "$name trained"
}

prune() {  # NAME S: prune the attention/MLP matrices to S, short masked fine-tuning
  local name=$1 s=$2 out="$RUNS/$1/prune_$2"
  [ -f "$out/prune.json" ] && return 0
  echo "$(date -u +%FT%TZ) pruning $name to $s"
  rewa prune "$RUNS/$name" --sparsity "$s" --finetune-epochs 1 --finetune-lr "$FT_LR" \
    --finetune-weight-decay 0 --out "$out" --resume --quiet --data-dir "$DATA" \
    --set data.limit_train="$FT_TOKENS" --set output.progress=false \
    --set eval.target_sparsities=[] >"$RUNS/$name.prune_$s.log" 2>&1 \
    || { echo "FAILED: prune $name $s (see $RUNS/$name.prune_$s.log)"; return 1; }
  save "$name" && commit "$name pruned to $s"
}

mkdir -p "$RUNS" "$OUT"
failed=0
for entry in "${STUDY[@]}"; do
  read -r -a words <<<"$entry"
  name=${words[0]} config=${words[1]} at=${words[2]}
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  train "$name" "$config" "${words[@]:3}" || { failed=1; continue; }
  [ "$at" = all ] && at=$ALL
  for s in ${at//,/ }; do prune "$name" "$s" || failed=1; done
done
[ "$failed" = 0 ] || { echo "some steps failed; rerun the same command to resume them"; exit 1; }
rewa study lm "$OUT/runs" --out "$OUT" --checkpoints "$RUNS" --data-dir "$DATA"
commit "table, plot and samples"
