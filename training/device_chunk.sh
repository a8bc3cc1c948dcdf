#!/usr/bin/env bash
# One time-boxed training chunk on the lent GPU machine (docs/training.md, "Training on the accelerator").
#
# Run from the repo root there, with cache/train256, cache/dev256 and cache/backbones carried.
# The full training state stays in $RUN on the machine between calls while it is warm, so the
# next call resumes exactly; a fresh machine starts from the committed fp16 weights
# (codec/weights/$CONFIG/, generator and discriminator) or, failing those, from scratch.
# What comes back in $OUT: the exports and logs as a tar split into parts under the tool's
# 16 MiB per-file limit (cat "$OUT"/chunk.tar.part-* | tar -x), plus the newest sample grid.
set -euo pipefail

CONFIG=${CONFIG:-vox256}
MINUTES=${MINUTES:-7}          # training time; saving, export and dev evaluation come after it
BATCH=${BATCH:-16}
WORKERS=${WORKERS:-8}
AMP=${AMP:-bf16}
DEV_CLIPS=${DEV_CLIPS:-20}
DEV_FRAMES=${DEV_FRAMES:-250}
RUN=${RUN:-/tmp/facecodec-run}
OUT=${OUT:-out/device}
EXTRA=${EXTRA:-}
export FACECODEC_BACKBONES=${FACECODEC_BACKBONES:-$PWD/cache/backbones}
export PYTHONUNBUFFERED=1

args=(--config "$CONFIG" --data cache/train256 --dev cache/dev256 --out "$RUN"
      --minutes "$MINUTES" --batch "$BATCH" --workers "$WORKERS" --amp "$AMP"
      --dev-clips "$DEV_CLIPS" --dev-frames "$DEV_FRAMES")
if [ -f "$RUN/state.pt" ]; then
  args+=(--resume)                                   # warm machine: exact continuation
elif [ -f "codec/weights/$CONFIG/model.safetensors" ]; then
  args+=(--init-from "codec/weights/$CONFIG")       # fresh machine: committed fp16 weights
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086
python3 -m training train "${args[@]}" $EXTRA

mkdir -p "$OUT"
latest_eval=$(ls -d "$RUN"/eval/step_* 2>/dev/null | sort -t_ -k2 -n | tail -1 || true)
latest_grid=$(ls "$RUN"/samples/step_*.png 2>/dev/null | sort -t_ -k2 -n | tail -1 || true)
files=(model.safetensors discriminator.safetensors log.csv)
[ -n "$latest_eval" ] && files+=("${latest_eval#"$RUN"/}")
tar -C "$RUN" -cf - "${files[@]}" | split -b 15m - "$OUT/chunk.tar.part-"
[ -n "$latest_grid" ] && cp "$latest_grid" "$OUT/"
ls -la "$OUT"
