#!/usr/bin/env bash
# One GPU session for issue 5, run from the repository root on a machine with torch, torchvision,
# accelerate and timm (no network). Needs .gpu/wheels (albumentations, torchinfo + deps for Python 3.12)
# and .gpu/cifar10-jpeg.tar.gz. Results land in $OUT (default /tmp/s7-out) as results.tar.gz + logs.
#   1. warm the decoded-data cache;
#   2. s7 with the default recipe alone, all cores loading: time to 87%, loader vs step throughput;
#   3. s7 long recipe, s7_dilated and s7_strided side by side, the cores split between them.
# QUICK=1 shrinks every run to one epoch on a subset (to rehearse the script on a CPU).
set -u
source benchmarks/gpu_env.sh
DATA=.gpu/cifar10-jpeg.tar.gz DD=/tmp/s7-data RUNS=${RUNS:-/tmp/s7-runs}
LONG_EPOCHS=${LONG_EPOCHS:-80} SIDE_EPOCHS=${SIDE_EPOCHS:-30} LONG_WORKERS=${LONG_WORKERS:-7} SIDE_WORKERS=${SIDE_WORKERS:-4}
quick=(); [ "${QUICK:-0}" = 1 ] && quick=(--train-subset 2000 --test-subset 500 --epochs 1) && LONG_EPOCHS=1 SIDE_EPOCHS=1
{ nvidia-smi || true; nproc; python3 -c "import sys, torch, accelerate, timm, albumentations, numpy
print(sys.version); print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'timm', timm.__version__,
      'albumentations', albumentations.__version__, 'numpy', numpy.__version__)"; } > "$OUT/env.txt" 2>&1
python3 -m trainer.tools.cli stats --data $DATA --data-dir $DD > "$OUT/stats.txt" 2>&1
python3 -m trainer.tools.cli stats --data $DATA --data-dir $DD >> "$OUT/stats.txt" 2>&1
tta() { python3 benchmarks/time_to_accuracy.py --data $DATA --data-dir $DD --out $RUNS "$@"; }
timeout 140 bash -c "$(declare -f tta); DATA=$DATA DD=$DD RUNS=$RUNS tta --model s7 --name s7-default --throughput -- ${quick[*]}" \
    > "$OUT/s7-default.log" 2>&1
timeout 300 bash -c "$(declare -f tta); DATA=$DATA DD=$DD RUNS=$RUNS tta --model s7 --config configs/s7_long.yaml --name s7-long -- --epochs $LONG_EPOCHS --workers $LONG_WORKERS ${quick[*]}" > "$OUT/s7-long.log" 2>&1 &
timeout 300 bash -c "$(declare -f tta); DATA=$DATA DD=$DD RUNS=$RUNS tta --model s7_dilated --name s7_dilated -- --epochs $SIDE_EPOCHS --workers $SIDE_WORKERS ${quick[*]}" > "$OUT/s7_dilated.log" 2>&1 &
timeout 300 bash -c "$(declare -f tta); DATA=$DATA DD=$DD RUNS=$RUNS tta --model s7_strided --name s7_strided -- --epochs $SIDE_EPOCHS --workers $SIDE_WORKERS ${quick[*]}" > "$OUT/s7_strided.log" 2>&1 &
wait
for d in "$RUNS"/*/; do python3 -m trainer.tools.cli report "$d" >> "$OUT/reports.log" 2>&1; done
tar czf "$OUT/results.tar.gz" --exclude=checkpoints --exclude=wandb -C "$RUNS" .
nvidia-smi --query-gpu=name,memory.used --format=csv >> "$OUT/env.txt" 2>&1
ls -la "$OUT"; tail -n 5 "$OUT"/*.log
