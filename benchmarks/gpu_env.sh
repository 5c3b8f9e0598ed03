# Sourced by the GPU session scripts (gpu_session.sh, gpu_accuracy.sh), from the repository root: $OUT made,
# albumentations and torchinfo importable (from the wheels in .gpu/wheels when the machine lacks them: no
# network there), the repository on PYTHONPATH, unbuffered logs. benchmarks/gpu_speed.py does the same in Python.
OUT=${OUT:-/tmp/s7-out}; mkdir -p "$OUT"
python3 -c "import albumentations, torchinfo" 2>/dev/null || {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
}
export PYTHONPATH=$PWD:${PYTHONPATH:-} NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
