#!/usr/bin/env bash
# Issue 12 probes, side by side on this machine: does the U-Net learn the real cases better from the phantom
# weights or from scratch, and at which width, depth and patch size, per CPU-hour? Each arm is one `train.unet` run on the 20 real
# training cases (real only, the shipped recipe: regions, mixed bfloat16, 128^3 patches, a third on tumour),
# validated on the 6 validation cases every VAL_EVERY steps; all arms run at once so that they share the same
# machine conditions, and `/usr/bin/time` records each arm's CPU seconds (its case-producer child included).
# Trial scaffolding (train/probe_unet.sh until issue 39; log: docs/experiments/README.md). Summarise with:
#   python docs/experiments/scripts/probe_report.py runs/probe/* --json docs/experiments/results/unet_probe.json
#
#   bash docs/experiments/scripts/probe_unet.sh             # arms: init16 (phantom weights), scratch16, scratch8
#   ARMS="scratch24 scratch16d5 scratch16p96" bash docs/experiments/scripts/probe_unet.sh
# Arms: init16 / scratchN (base N, depth 4, 128^3); scratch16d5 (depth 5: one more down-sampling, to 8^3);
# scratch16p96 (96^3 patches, 0.42x the voxels of 128^3, so it runs 2 x STEPS steps, validated every
# 2 x VAL_EVERY, to spend about the CPU of a 128^3 arm).
# Settings come from the environment: STEPS, VAL_EVERY, LR, SEED, PROBE_DIR, DATA, ARMS, PHANTOM_WEIGHTS.
set -euo pipefail
PROBE_DIR=${PROBE_DIR:-runs/probe}
DATA=${DATA:-../shared/data/brats-real}
STEPS=${STEPS:-600}
VAL_EVERY=${VAL_EVERY:-200}
LR=${LR:-5e-4}
SEED=${SEED:-30}
ARMS=${ARMS:-init16 scratch16 scratch8}
PYTHON=${PYTHON:-.venv/bin/python}
# The phantom-only U-Net (phases 1-3, shipped at d548168): the starting point of every real-data phase so far.
PHANTOM_WEIGHTS=${PHANTOM_WEIGHTS:-$PROBE_DIR/phantom_unet.keras}
mkdir -p "$PROBE_DIR"
if [ ! -f "$PHANTOM_WEIGHTS" ]; then
  git show d548168:weights/unet.keras > "$PHANTOM_WEIGHTS"
fi
for arm in $ARMS; do
  patch=128; depth=4; steps=$STEPS; val_every=$VAL_EVERY
  case $arm in
    init16) extra=(--base 16 --init "$PHANTOM_WEIGHTS") ;;
    scratch16) extra=(--base 16) ;;
    scratch8) extra=(--base 8) ;;
    scratch24) extra=(--base 24) ;;
    scratch16d5) extra=(--base 16); depth=5 ;;
    scratch16p96) extra=(--base 16); patch=96; steps=$((2 * STEPS)); val_every=$((2 * VAL_EVERY)) ;;
    *) echo "unknown arm $arm (init16 scratch16 scratch8 scratch24 scratch16d5 scratch16p96)" >&2; exit 2 ;;
  esac
  dir=$PROBE_DIR/$arm
  mkdir -p "$dir"
  nohup /usr/bin/time -f '{"cpu_user_s": %U, "cpu_system_s": %S, "wall_s": %e, "max_rss_kb": %M}' -o "$dir/time.json" \
    "$PYTHON" -m train.unet --data "$DATA" --val-cases train/splits/brats-real-validation.txt \
    --precision mixed_bfloat16 --regions --patch "$patch" --batch 1 --depth "$depth" --fg-fraction 0.33 --pool 16 \
    --patches-per-case 8 --workers 1 --lr "$LR" --steps "$steps" --val-every "$val_every" --seed "$SEED" \
    --keep-exports --run-dir "$dir" --out "$dir/unet.keras" "${extra[@]}" > "$dir/train.log" 2>&1 &
  echo "$arm: pid $! -> $dir"
done
