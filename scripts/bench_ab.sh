#!/usr/bin/env bash
# A/B timing of the optimizer step: `rewa bench optim` from a base commit (in a temporary git
# worktree) and from the working tree, alternated ROUNDS times in the same conditions, each
# round's tables kept under OUT/{base,new}_N. Machine-to-machine and hour-to-hour drift on a
# shared CPU is larger than many changes; alternating the two in one sitting is what separates
# them. Run on an idle machine.
#
#   scripts/bench_ab.sh BASE_REV [rewa bench optim arguments...]
#   OUT=results/bench/ab ROUNDS=3 scripts/bench_ab.sh HEAD~2 --threads 1 --sets llama --reps 10
set -euo pipefail
BASE=${1:?usage: scripts/bench_ab.sh BASE_REV [rewa bench optim arguments...]}
shift
OUT=${OUT:-runs/bench_ab}
ROUNDS=${ROUNDS:-2}
PYTHON=${PYTHON:-python}
root=$(git rev-parse --show-toplevel)
worktree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$worktree" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --detach --force "$worktree" "$BASE" >/dev/null
echo "base $(git -C "$worktree" rev-parse --short HEAD) vs working tree of $(git -C "$root" rev-parse --short HEAD)"
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  PYTHONPATH="$worktree/src" "$PYTHON" -m rewa bench optim "$@" --out-dir "$OUT/base_$round" --quiet
  PYTHONPATH="$root/src" "$PYTHON" -m rewa bench optim "$@" --out-dir "$OUT/new_$round" --quiet
done
for round in $(seq 1 "$ROUNDS"); do
  for side in base new; do
    echo "== $side, round $round"
    grep -E '^## |^\| +[a-z]' "$OUT/${side}_$round/optim.md" | grep -v '^| optimizer' | cut -c1-100
  done
done | tee "$OUT/summary.txt"
