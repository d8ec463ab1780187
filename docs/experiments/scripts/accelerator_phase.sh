#!/usr/bin/env bash
# One U-Net training phase on a lent GPU machine (JAX backend), from the shipped weights, on packed real cases.
# Trial scaffolding of phase 7 (train/accelerator_phase.sh until issue 39; log: docs/experiments/README.md).
#
# Prepare here (the GPU machine has PyTorch/JAX but no TensorFlow, Keras or nibabel, and no ../shared):
#   python -m train.packed --data ../shared/data/brats-real --exclude train/splits/brats-real-validation.txt \
#       -o packed/brats-real                                   # 20 training cases, 45 MB
#   pip download keras namex optree nibabel wheels for CPython 3.12 into .whl/ (README: "Training on a GPU")
# Run there from the repository root (both folders carried); exports land in $OUT for selection here with
#   python -m train.evaluate --weights OUT/export_step*.keras ... on the real validation cases.
# Every setting can be overridden from the environment (a tiny smoke test runs it on a CPU).
set -uo pipefail
OUT=${OUT:-runs/accelerator-out}
LIMIT_S=${LIMIT_S:-470}
RUN_DIR=${RUN_DIR:-/tmp/accelerator-run}
mkdir -p "$OUT" "$RUN_DIR"
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" || exit 1
# keep the newest ${KEEP:-5} exports (and the run state) in $OUT while training runs, so that they come back
# even when the machine's time runs out before this script ends
( while sleep 5; do
    keep=$(ls "$RUN_DIR"/export_step*.keras 2>/dev/null | tail -"${KEEP:-5}")
    for f in $keep; do [ -e "$OUT/$(basename "$f")" ] || cp "$f" "$OUT/"; done
    for f in "$OUT"/export_step*.keras; do [ -e "$f" ] || continue
      echo "$keep" | grep -q "/$(basename "$f")$" || rm -f "$f"; done
    cp "$RUN_DIR/state.json" "$OUT/" 2>/dev/null
  done ) &
syncer=$!
start=$(date +%s)
timeout "$LIMIT_S" python3 -m train.unet --data "${DATA:-packed/brats-real}" --val-cases 0 --regions \
  --precision mixed_bfloat16 --init "${INIT:-weights/unet.keras}" --patch "${PATCH:-128}" --batch "${BATCH:-2}" \
  --lr "${LR:-4e-4}" --steps "${STEPS:-4800}" --val-every "${VAL_EVERY:-400}" --fg-fraction 0.33 \
  --patch-workers "${PATCH_WORKERS:-14}" --pool 20 --patches-per-case 50 --seed "${SEED:-11}" --keep-exports \
  --run-dir "$RUN_DIR" --out "$RUN_DIR/best.keras" > "$OUT/train.log" 2>&1
echo "train.unet exit $? after $(( $(date +%s) - start )) s (124: stopped at the time limit; exports so far kept)"
tr '\r' '\n' < "$OUT/train.log" | grep -E "^step|Error|error|Traceback" | tail -20
sleep 6; kill $syncer
ls -la "$OUT"
