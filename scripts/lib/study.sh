# Shared by the study scripts (scripts/cifar10_resnet20.sh, scripts/tinyshakespeare.sh): train the
# runs of $STUDY one after another (resuming), prune each at its sparsities, keep each run's small
# files in $OUT/runs/NAME and optionally commit them. A script sets DATA, RUNS, OUT, COMMIT,
# EXTRA (array), ALL (its sparsities), CONFIG_PREFIX (configs/<prefix><config>.yaml), STUDY and
# ONLY, defines prune_run NAME S (writing $RUNS/NAME/prune_S/prune.json) and calls study_main. It
# may define prune_done PRUNE_JSON (default: the file exists) to have prunes made by an older
# protocol redone: from the run's checkpoint if $RUNS has it, else by training the run again.

declare -F prune_done >/dev/null || prune_done() { [ -f "$1" ]; }

study_commit() {  # WHAT [PATH]: commit PATH (default $OUT) alone; other work, in $OUT too
  # (a README being edited while the study runs), is left as it is
  [ "$COMMIT" = 1 ] || return 0
  local path=${2:-$OUT}
  git add -- "$path" && git commit -q -m "$(basename "$OUT"): $1" -- "$path" \
    || echo "WARNING: could not commit $1 (commit $path by hand)"
}

study_save() {  # NAME: copy the run's small files (not checkpoints) next to the table
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

study_train() {  # NAME CONFIG [rewa train arguments...]
  local name=$1 config=$2; shift 2
  [ -f "$RUNS/$name/eval.json" ] && return 0
  echo "$(date -u +%FT%TZ) training $name"
  if [ -f "$OUT/runs/$name/eval.json" ] && [ ! -f "$RUNS/$name/checkpoint.pt" ]; then
    echo "  (again: $OUT/runs/$name lacks a prune, or has one of an older protocol, and" \
      "$RUNS/$name has no model to prune; its prunes are redone from the new model)"
    rm -rf "$OUT/runs/$name"/prune_*
  fi
  rewa train --config "configs/$CONFIG_PREFIX$config.yaml" --resume \
    --set data.data_dir="$DATA" --set output.runs_root="$RUNS" --set output.name="$name" \
    --set output.progress=false "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"$RUNS/$name.log" 2>&1 \
    || { echo "FAILED: $name (see $RUNS/$name.log)"; return 1; }
  study_save "$name" && study_commit "$name trained" "$OUT/runs/$name"
}

study_prune() {  # NAME S: prune_run unless done, then keep and commit the result
  local name=$1 s=$2
  prune_done "$RUNS/$name/prune_$s/prune.json" && return 0
  echo "$(date -u +%FT%TZ) pruning $name to $s"
  prune_run "$name" "$s" >"$RUNS/$name.prune_$s.log" 2>&1 \
    || { echo "FAILED: prune $name $s (see $RUNS/$name.prune_$s.log)"; return 1; }
  study_save "$name" && study_commit "$name pruned to $s" "$OUT/runs/$name"
}

study_kept() {  # NAME S...: the run and all its prunes are already in $OUT (a committed result)
  local name=$1 s; shift
  [ -f "$OUT/runs/$name/eval.json" ] || return 1
  for s in "$@"; do prune_done "$OUT/runs/$name/prune_$s/prune.json" || return 1; done
}

study_main() {  # every entry of STUDY: "NAME CONFIG PRUNE-AT [rewa train arguments...]"
  # PRUNE-AT: comma-separated sparsities, "all" ($ALL) or "-" (none). A run whose results are all
  # in $OUT is skipped even when $RUNS is gone (a fresh checkout); one with a prune missing there
  # and no checkpoint in $RUNS is trained again, and all its prunes redone, so that they come from
  # one model.
  command -v rewa >/dev/null \
    || { echo "rewa is not on PATH: install it (pip install -e .) or activate its venv"; return 1; }
  mkdir -p "$RUNS" "$OUT"
  local failed=0 entry words name config at s
  for entry in "${STUDY[@]}"; do
    read -r -a words <<<"$entry"
    name=${words[0]} config=${words[1]} at=${words[2]}
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    [ "$at" = all ] && at=$ALL
    [ "$at" = - ] && at=  # trained only, not pruned
    # shellcheck disable=SC2086  # word splitting of the sparsity list is intended
    study_kept "$name" ${at//,/ } && continue
    study_train "$name" "$config" "${words[@]:3}" || { failed=1; continue; }
    for s in ${at//,/ }; do study_prune "$name" "$s" || failed=1; done
  done
  [ "$failed" = 0 ] || { echo "some steps failed; rerun the same command to resume them"; return 1; }
}
