#!/usr/bin/env bash
# One time-boxed refiner training chunk on the lent GPU machine, then the dev evaluation.
#
# Run from the repo root there, with cache/train256, cache/dev256 and cache/backbones carried
# (docs/training.md, "Training on the accelerator"). It starts from, in order: $RUN/refiner.safetensors
# (a warm machine: the previous call's result), the committed
# codec/weights/landmark/refiner.safetensors, or a fresh (identity) refiner. Each start from a
# file continues at that file's sample count, so chained chunks see new pairs.
# What comes back in $OUT: refiner.safetensors (fp16, < 2 MB), log.csv, refiner_eval.json.
# CPU smoke test here: MINUTES=0.3 DEVICE=cpu WORKERS=1 BATCH=2 PERCEPTUAL=lpips PRELOAD=0 \
#   EVERY=125 OUT=/tmp/out RUN=/tmp/run PYTHON=.venv/bin/python bash training/refiner_chunk.sh
set -euo pipefail

# Defaults: the recipe of the shipped refiner (3 min from identity, LPIPS + 0.1 × L1, lr 3e-5).
# Longer or faster runs overfit the train clips: lr 1e-4 for 3 min gave dev LPIPS 0.1385,
# 4.4 more minutes 0.1469, worse than the plain warp's 0.1435 (docs/training.md).
MINUTES=${MINUTES:-3}          # training time, setup and preload included; evaluation comes after
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-$([ "$DEVICE" = cuda ] && echo bf16 || echo none)}
BATCH=${BATCH:-16}
WORKERS=${WORKERS:-14}         # the warp runs in the workers: leave 2 of the 16 cores to the trainer
PERCEPTUAL=${PERCEPTUAL:-lpips}
EVERY=${EVERY:-10}
EVAL_ARGS=${EVAL_ARGS:-}       # more evaluate flags (tests: --no-lpips --segments 1)
TRAIN=${TRAIN:-cache/train256}
DEV=${DEV:-cache/dev256}
SEED=${SEED:-0}
PRELOAD=${PRELOAD:-1}          # decode the train set once (~6 GB RAM), shared by the workers
RUN=${RUN:-/tmp/facecodec-refiner}
OUT=${OUT:-out/device}
COMMITTED=codec/weights/landmark/refiner.safetensors
PYTHON=${PYTHON:-python3}
EXTRA=${EXTRA:---w-l1 0.1 --lr 3e-5}
export FACECODEC_BACKBONES=${FACECODEC_BACKBONES:-$PWD/cache/backbones}
export PYTHONUNBUFFERED=1

args=(train --data "$TRAIN" --out "$RUN" --minutes "$MINUTES" --device "$DEVICE"
      --amp "$AMP" --batch "$BATCH" --workers "$WORKERS" --perceptual "$PERCEPTUAL" --seed "$SEED")
if [ "$PRELOAD" = 1 ]; then args+=(--preload); fi
mkdir -p "$RUN"
if [ -f "$RUN/refiner.safetensors" ]; then
  cp "$RUN/refiner.safetensors" "$RUN/start.safetensors"   # warm machine: continue the last call
  args+=(--init-from "$RUN/start.safetensors")
elif [ -f "$COMMITTED" ]; then
  args+=(--init-from "$COMMITTED")                          # fresh machine: the committed refiner
fi
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi
echo "== train: ${args[*]} $EXTRA"
# shellcheck disable=SC2086
"$PYTHON" -m training.refiner "${args[@]}" $EXTRA

echo "== evaluate on $DEV (every $EVERY frames) $EVAL_ARGS"
# shellcheck disable=SC2086
"$PYTHON" -m training.refiner evaluate --weights "$RUN/refiner.safetensors" --data "$DEV" \
  --every "$EVERY" --device "$DEVICE" --json "$RUN/refiner_eval.json" $EVAL_ARGS

mkdir -p "$OUT"
cp "$RUN/refiner.safetensors" "$RUN/log.csv" "$RUN/refiner_eval.json" "$OUT/"
ls -la "$OUT"
