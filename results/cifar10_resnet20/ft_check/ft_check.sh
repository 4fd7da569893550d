#!/usr/bin/env bash
# Why does the study's 1-epoch masked fine-tuning (plain SGD on x, lr 0.01, cosine) lower the
# ReWA models whose prune cost nothing, while it raises the others? Run from the repo root after
# scripts/cifar10_resnet20.sh has trained the runs named below (it needs their checkpoints and
# their prune_S/pruned.pt). For each run, pruned to S, it fine-tunes the same pruned model
# (BatchNorm already re-estimated, as in the study) once more with a 10x smaller lr and, for ReWA,
# with ReWA itself on the masked model instead of plain SGD; the study's own lr-0.01 fine-tuning
# is the reference. Then it prints the size of the weights that survive the prune, per layer: in
# a conv followed by BatchNorm the output does not depend on a weight's scale, so a step of lr
# moves a layer by about lr / ||w||^2, and a model with smaller weights is shaken harder by the
# same lr.
set -euo pipefail
RUNS=${RUNS:-runs/cifar10_resnet20}
DATA=${DATA:-/work/shared/data/cifar10}
OUT=${OUT:-results/cifar10_resnet20/ft_check}
S=${S:-0.9}
CHECK=${CHECK:-"rewa_1e-3 l1prox_3e-4"}

finetune() {  # RUN TAG [rewa prune arguments]
  local run=$1 tag=$2
  shift 2
  rewa prune "$RUNS/$run" --sparsity "$S" --bn-recalibrate 10000 --finetune-epochs 1 \
    --out "$RUNS/$run/ftcheck_${S}_$tag" --resume --quiet --data-dir "$DATA" \
    --set output.progress=false --set eval.thresholds=[] --set eval.target_sparsities=[] "$@"
  mkdir -p "$OUT/$run"
  cp "$RUNS/$run/ftcheck_${S}_$tag/prune.json" "$OUT/$run/prune_${S}_$tag.json"
}

for run in $CHECK; do
  finetune "$run" lr0.001 --finetune-lr 0.001
  case $run in rewa*) finetune "$run" same_lr0.01 --finetune-method same ;; esac
done

python - "$RUNS" "$OUT" "$S" $CHECK <<'PY'
import json
import sys
from pathlib import Path

from rewa.provenance import provenance
from rewa.sparsity import sparsifiable_parameters
from rewa.train.source import plain_model, read_source

runs, out, s, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
table = {"provenance": provenance(), "sparsity": float(s), "runs": {}}
for name in names:
    model = plain_model(read_source(runs / name / f"prune_{s}" / "pruned.pt"))
    layers = {}
    for pname, p in sparsifiable_parameters(model):
        kept = p.detach()[p != 0]
        layers[pname] = {
            "kept": int(kept.numel()),
            "norm": float(kept.norm()),
            "rms_kept": float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0,
        }
    runs_ft = {}
    dirs = [runs / name / f"prune_{s}", *sorted((runs / name).glob(f"ftcheck_{s}_*"))]
    for d in dirs:
        ft = json.loads((d / "prune.json").read_text()).get("finetune", {})
        runs_ft[d.name] = {k: ft.get(k) for k in ("method", "lr", "val_acc", "test_acc")}
    table["runs"][name] = {"layers": layers, "finetune": runs_ft}
    print(name)
    for tag, ft in runs_ft.items():
        print(f"  {tag}: {ft}")
    for pname, row in layers.items():
        print(f"  {pname:32s} kept {row['kept']:7d}  norm {row['norm']:.3f}")
(out / f"weights_{s}.json").write_text(json.dumps(table, indent=1) + "\n")
PY
