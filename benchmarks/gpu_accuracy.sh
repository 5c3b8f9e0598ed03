#!/usr/bin/env bash
# Issue 9's GPU session: the final recipes of all three nets side by side on one GPU, within about 8 minutes.
# Run from the repository root on a machine with torch, torchvision, accelerate and timm (no network needed).
# Needs .gpu/wheels (albumentations, torchinfo + deps for the machine's Python) and .gpu/cifar10-jpeg.tar.gz:
#     mkdir -p .gpu && cp -r ../shared/wheels/py312 .gpu/wheels && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
# Results land in $OUT (default /tmp/s7-out): results.tar.gz (run folders less checkpoints), one log per run,
# time_to_accuracy.jsonl (one JSON line per run), env.txt.
#   1. warm the decoded-data cache (one `s7 stats`, so the four runs below read it instead of decoding);
#   2. four runs at once, the CPU cores split between their loaders:
#        the candidate for s7, s7_cand_a, with its short recipe (configs/s7_cand_a.yaml: >= 87 % by epoch 12?
#        83.5 % on the CPU) and a long one (configs/s7_cand_a_long.yaml: >= 92 % with TTA, >= 91 % without?),
#        the candidates for s7_strided and s7_dilated (>= 90 % each): s7_cand_a_strided and s7_cand_a_dilated
#        (configs/s7_cand_a_strided.yaml, configs/s7_cand_a_dilated.yaml).
#      A candidate that reaches its target replaces the registered net, with the weights of that run.
# Every figure is the final epoch's (no selection on the test split), with and without flip TTA.
# QUICK=1 shrinks every run to one epoch of batch 128 on a subset, to rehearse the script on a CPU.
# *_EPOCHS override a recipe's epochs (e.g. when a rehearsal shows the budget does not fit).
set -u
source benchmarks/gpu_env.sh
DATA=${DATA:-.gpu/cifar10-jpeg.tar.gz} DD=${DD:-/tmp/s7-data} RUNS=${RUNS:-/tmp/s7-runs}
LIMIT=${LIMIT:-480}                       # seconds each run may take (the whole session: about 8 minutes)
CORES=$(nproc); WORKERS=${WORKERS:-$(( CORES / 4 > 1 ? CORES / 4 - 1 : 1 ))}   # per run: its share less the trainer
quick=(); [ "${QUICK:-0}" = 1 ] && quick=(--train-subset 2000 --test-subset 500 --epochs 1 --batch-size 128)
epochs() { [ -n "${1:-}" ] && echo "--epochs $1"; }
{ nvidia-smi || true; echo "cores: $CORES, loader workers per run: $WORKERS"; python3 -c "import sys, torch, accelerate, timm, albumentations, numpy
print(sys.version); print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'timm', timm.__version__,
      'albumentations', albumentations.__version__, 'numpy', numpy.__version__)"; } > "$OUT/env.txt" 2>&1
python3 -m trainer.tools.cli stats --data "$DATA" --data-dir "$DD" > "$OUT/stats.txt" 2>&1
run() {  # name, model, config, extra trainer flags...
    local name=$1 model=$2 config=$3; shift 3
    timeout "$LIMIT" python3 benchmarks/time_to_accuracy.py --model "$model" --config "$config" --data "$DATA" \
        --data-dir "$DD" --out "$RUNS" --name "$name" -- --workers "$WORKERS" "$@" "${quick[@]}" > "$OUT/$name.log" 2>&1
    cat "$RUNS/$name/time_to_accuracy.json" 2>/dev/null | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)))" \
        >> "$OUT/time_to_accuracy.jsonl"
}
# shellcheck disable=SC2046  # epochs() prints two words or none
{
    run cand_a-short s7_cand_a configs/s7_cand_a.yaml $(epochs "${SHORT_EPOCHS:-}") &
    run cand_a-long s7_cand_a configs/s7_cand_a_long.yaml $(epochs "${LONG_EPOCHS:-}") &
    run cand_a_strided s7_cand_a_strided configs/s7_cand_a_strided.yaml $(epochs "${STRIDED_EPOCHS:-}") &
    run cand_a_dilated s7_cand_a_dilated configs/s7_cand_a_dilated.yaml $(epochs "${DILATED_EPOCHS:-}") &
    wait
}
for d in "$RUNS"/*/; do python3 -m trainer.tools.cli report "$d" >> "$OUT/reports.log" 2>&1; done
tar czf "$OUT/results.tar.gz" --exclude=checkpoints --exclude=wandb -C "$RUNS" .
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/env.txt" 2>&1
ls -la "$OUT"; tail -n 4 "$OUT"/*.log
