#!/usr/bin/env bash
# One-shot GPU correctness check and throughput suite (benchmarks/2026-11-26-h200/ holds one run).
#
#   OUT=gpu_results bash scripts/gpu_benchmark_suite.sh            # full suite, about 8 minutes on an H100
#   QUICK=1 OUT=gpu_results bash scripts/gpu_benchmark_suite.sh    # a few steps each: checks the script itself
#
# Writes $OUT/suite.log (everything) and $OUT/results.jsonl (one JSON line per benchmark).
# Each item has its own time limit, so one failure or hang never stops the rest.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"
RESULTS="$OUT/results.jsonl"
TMP=$(mktemp -d)
: > "$RESULTS"
CFG=configs/tokenizer/audio_simple_bsq_b18.yaml
if [ "${QUICK:-0}" = 1 ]; then
  STEPS="--steps 2 --warmup 1"; BATCH=${BATCH:-2}; EXTRA="data.target_length=64"
  MEM_STEPS="--steps 1 --warmup 1"; LIMIT=120; KERNEL_ARGS="--quick"
else
  STEPS="--steps 15 --warmup 4"; BATCH=${BATCH:-64}; EXTRA=""; MEM_STEPS="--steps 3 --warmup 1"; LIMIT=200; KERNEL_ARGS=""
fi

log() { echo "$*" | tee -a "$LOG"; }

bench() {  # bench NAME [benchmark_train.py args...]
  local name=$1; shift
  log "=== $name: $*"
  timeout "$LIMIT" python scripts/benchmark_train.py "$@" --json "$TMP/$name.json" >> "$LOG" 2>&1
  local rc=$?
  log "--- $name rc=$rc"
  if [ -f "$TMP/$name.json" ]; then
    python -c "import json,sys; d=json.load(open(sys.argv[1])); d['name']=sys.argv[2]; print(json.dumps(d))" \
      "$TMP/$name.json" "$name" >> "$RESULTS"
    grep -E "samples_per_second|mfu|peak_memory|share_" "$LOG" | tail -n 8
  fi
}

log "### $(date -u) $(nvidia-smi -L 2>/dev/null | head -n 1)"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

log "=== 1. depthwise kernel: correctness on CUDA (the cuda-marked tests), then timing"
timeout "$LIMIT" python -m pytest -m cuda -rs -q tests/test_depthwise_conv.py >> "$LOG" 2>&1
log "--- kernel tests rc=$?"; grep -E "passed|failed|skipped|SKIPPED|FAILED" "$LOG" | tail -n 12
timeout "$LIMIT" python scripts/benchmark_depthwise_conv.py $KERNEL_ARGS --json "$OUT/benchmark_depthwise_conv.json" >> "$LOG" 2>&1
log "--- kernel benchmark rc=$?"; grep -E "ms|GB/s" "$LOG" | tail -n 40

log "=== 2. the trainer on CUDA (bf16 autocast, fused AdamW, validation, images, Griffin-Lim audio)"
timeout "$LIMIT" python scripts/main_audio_tokenizer.py configs/tokenizer/audio_demo_librivox_mini.yaml \
  --output-dir "$TMP/demo" training.max_steps=60 training.image_every=30 data.num_workers=2 >> "$LOG" 2>&1
log "--- trainer rc=$?"; grep -E "INFO (step|finished|model)" "$LOG" | tail -n 6

log "=== 3. throughput, standard config (1024x128, 16x16, width 768, 12+12 layers, 18 bits), batch $BATCH"
# shellcheck disable=SC2086
{
bench noconv_eager $CFG --batch-size "$BATCH" --conv-module off $STEPS $EXTRA
bench conv_triton_eager $CFG --batch-size "$BATCH" $STEPS $EXTRA
bench conv_reference_eager $CFG --batch-size "$BATCH" --reference-conv $STEPS $EXTRA
bench noconv_compile $CFG --batch-size "$BATCH" --conv-module off --compile $STEPS $EXTRA
bench conv_triton_compile $CFG --batch-size "$BATCH" --compile $STEPS $EXTRA
}

log "=== 4. real data: FLAC files from a folder, default workers, against the same synthetic run"
python - "$TMP/flac" <<'PY' >> "$LOG" 2>&1
import sys, glob, numpy as np, soundfile as sf, os
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
speech = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(glob.glob("data/librivox-mini/**/*.flac", recursive=True))])
rng = np.random.default_rng(0)
for i in range(512):
    clip = np.roll(speech, int(rng.integers(len(speech))))[: 16000 * 12]
    sf.write(f"{out}/clip_{i:04d}.flac", clip, 16000)
print("wrote", len(os.listdir(out)), "FLAC files of 12 s")
PY
# shellcheck disable=SC2086
bench conv_triton_eager_realdata $CFG --batch-size "$BATCH" --data-dir "$TMP/flac" $STEPS $EXTRA

log "=== 5. peak memory of each variant (large: gradient checkpointing, batch 32)"
# shellcheck disable=SC2086
{
bench small_b9_mem configs/tokenizer/audio_librispeech_bsq_b9_small.yaml --batch-size "$BATCH" $MEM_STEPS $EXTRA
bench large_b36_ckpt_b32_mem configs/tokenizer/audio_librispeech_bsq_b36_large.yaml --batch-size 32 --grad-checkpointing $MEM_STEPS $EXTRA
}
cp "$TMP"/demo/train.log "$OUT/demo_train.log" 2>/dev/null
log "### done $(date -u)"
