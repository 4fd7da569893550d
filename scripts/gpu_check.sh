#!/usr/bin/env bash
# Everything that needs a GPU, in one command of under 10 minutes on one H200 (issue 12):
#   1. the CUDA tests (pytest -m cuda),
#   2. `rewa bench optim` on ResNet-18/50 shapes (ReWA SGD/AdamW bases, eager/foreach/compiled,
#      against torch's fused and foreach AdamW and SGD) and `rewa bench precision` (img/s),
#   3. the published CIFAR-10 recipe, configs/cifar10_resnet18_rewa.yaml (ReWA K=9 M=2, 100
#      epochs unless the time budget allows fewer; see --epochs and --budget), with its threshold
#      sweep at 90/95/98/99/99.2% sparsity and plots,
#   4. README.md: every number beside the published 91.5% @ 99.0% and 90.2% @ 99.2%.
# Everything goes under --out (default results/gpu; checkpoints stay in runs/gpu). A failing stage
# is recorded in stages.txt and the next one still runs.
#
#   scripts/gpu_check.sh --data device_data/cifar10.npz        # on the GPU machine
#   scripts/gpu_check.sh --smoke --out runs/gpu_smoke           # the same path, CPU, toy size
#
# The lent machine has no network and takes at most 64 MiB of files per call: CIFAR-10 travels as
# JPEGs (python -m rewa.data.transport pack ../shared/data/cifar10 device_data/cifar10.npz, 53
# MiB; device_data/ is git-ignored and named in the device tool's `carry`). Its python3 has torch;
# rewa runs from src/ without installing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0 OUT="" DATA="" EPOCHS=100 BUDGET=540 COMPILE=false
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;  # seconds for the whole script; training is sized to fit
    --compile) COMPILE=true ;;      # torch.compile the model for training
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
START=$(date +%s)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
REWA=("$PY" -m rewa)
if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-runs/gpu_smoke} DEVICE=cpu RUNS="$OUT/runs"
else
  OUT=${OUT:-results/gpu} DEVICE=cuda RUNS=runs/gpu
fi
mkdir -p "$OUT" "$RUNS"
: >"$OUT/stages.txt"
stage() {  # NAME COMMAND...: run, log to $OUT/NAME.log, record the outcome and seconds
  local name=$1 t0 rc; shift
  t0=$(date +%s)
  echo "== $name: $*"
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/stages.txt"
  return $rc
}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# -- environment
{
  date -u +%FT%TZ
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
  "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() \
if torch.cuda.is_available() else None)"
} >"$OUT/env.txt" 2>&1
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"
then
  echo "gpu_check.sh: torch sees no CUDA device (use --smoke on a CPU)" >&2; exit 2
fi

# -- data
if [ "$SMOKE" = 1 ]; then
  DATA_DIR="$OUT/data"
  "$PY" -c "from rewa.data.cifar import write_fake_cifar as w; w('$DATA_DIR', n_train=600, n_test=200)"
elif [ -n "$DATA" ] && [ "${DATA%.npz}" != "$DATA" ]; then
  DATA_DIR=device_data/cifar10
  [ -f "$DATA_DIR/test_batch" ] || stage unpack "$PY" -m rewa.data.transport unpack "$DATA" "$DATA_DIR"
else
  DATA_DIR=${DATA:-data/cifar10}
fi

# -- 1. CUDA tests
stage tests "$PY" -m pytest -q -m cuda tests -p no:cacheprovider

# -- 2. benchmarks
if [ "$SMOKE" = 1 ]; then
  stage bench_optim "${REWA[@]}" bench optim --device cpu --sets resnet20 --reps 2 --no-compile \
    --out-dir "$OUT/bench" --quiet
  stage bench_precision "${REWA[@]}" bench precision --device cpu --model tiny --batch-size 32 \
    --reps 1 --steps 1 --out-dir "$OUT/bench" --quiet
else
  stage bench_optim "${REWA[@]}" bench optim --device cuda --sets resnet18 resnet50 --reps 20 \
    --out-dir "$OUT/bench" --quiet
  stage bench_precision "${REWA[@]}" bench precision --device cuda --model resnet18 \
    --batch-size 256 --precisions fp32 bf16 --steps 20 --reps 5 --warmup 5 \
    --out-dir "$OUT/bench" --quiet
fi

# -- 3. the published recipe, sized to the time left: eager bf16 + channels_last img/s (compiled
#       training is faster), 45,000 training images per epoch, 25% for evaluation and start-up
if [ "$SMOKE" = 1 ]; then
  TRAIN=(--set model.name=tiny --set model.bf16=auto --set data.val_size=100 --set data.batch_size=64
         --set schedule.epochs=2 --set schedule.warmup_epochs=0.5 --set eval.plots=true)
else
  FIT=$("$PY" - "$OUT/bench/precision.json" "$(left)" <<'EOF' 2>/dev/null
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
ips = max(r["images_per_s"] for r in rows if r["precision"] == "bf16 autocast")
print(int(max(0, int(sys.argv[2]) - 60) * 0.75 * ips / 45000))
EOF
)
  if [ -n "$FIT" ] && [ "$FIT" -lt "$EPOCHS" ]; then
    echo "time left $(left) s fits $FIT epochs, not $EPOCHS" | tee -a "$OUT/stages.txt"
    EPOCHS=$(( FIT > 1 ? FIT : 1 ))
  fi
  TRAIN=(--set schedule.epochs="$EPOCHS" --set model.compile="$COMPILE"
         --set output.checkpoint_every=10)  # a ResNet-18 checkpoint is ~135 MB
fi
stage train "${REWA[@]}" train --config configs/cifar10_resnet18_rewa.yaml --force \
  --set data.data_dir="$DATA_DIR" --set train.device="$DEVICE" --set output.runs_root="$RUNS" \
  --set output.name=cifar10_resnet18_rewa --set output.progress=false \
  --set output.tensorboard=false --set eval.target_sparsities=[0.9,0.95,0.98,0.99,0.992] \
  "${TRAIN[@]}"
RUN="$RUNS/cifar10_resnet18_rewa"
mkdir -p "$OUT/run"
for f in config.yaml run.json metrics.jsonl eval.json eval.md; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/run/"
done
cp "$RUN"/*.png "$OUT/run/" 2>/dev/null || true

# -- 4. the README
stage readme "$PY" -m rewa.report.gpu "$OUT"
echo "done in $(( $(date +%s) - START )) s; see $OUT/README.md"
