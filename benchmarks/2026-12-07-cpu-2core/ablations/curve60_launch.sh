#!/usr/bin/env bash
# The 60-minute learning curves (queued for the next sitting; not run yet): one recipe per call, each ALONE on
# the 2-core machine (nothing else running), the CPU route's settings (two torch threads, one loader worker),
# a numbered checkpoint every 1,000 steps, the cosine ending at the 60-minute budget; then the curve, scored
# beside the anchors, with the previous recipe's curve in the same plot (x axis: minutes).
#
#   bash curve60_launch.sh previous   # the recipe before this wave: input_norm none, lr 5e-4 with 50 warm-up steps
#   bash curve60_launch.sh adopted    # the shipped audio_simple_cpu_b18.yaml
#   bash curve60_launch.sh curves     # score both runs' checkpoints, plot them together
#
# Run with the venv of the README active. CORPUS (default /work/corpus): the 2-hour corpus of build_speech_corpus.sh; the voice asterisk_it_IT_m_Carlo is
# held out of training (symlinks to the three other sources). RUNS (default /work/runs/curve60): run folders.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
CORPUS=${CORPUS:-/work/corpus}; RUNS=${RUNS:-/work/runs/curve60}; OUT=$REPO/benchmarks/$(date +%F)-cpu-2core/curve60
cd "$REPO"
mkdir -p "$RUNS/train_seen"
for source in asterisk_fr_CA_f_June asterisk_ru_RU_f_IvrvoiceRU klettres; do
  ln -sfn "$CORPUS/train/$source" "$RUNS/train_seen/$source"
done
train() {  # NAME [overrides...]
  local name=$1; shift
  python scripts/main_audio_tokenizer.py configs/tokenizer/audio_simple_cpu_b18.yaml --output-dir "$RUNS/$name" \
    --device cpu --train-dir "$RUNS/train_seen" data.val=null training.image_every=0 training.ckpt_every=1000 \
    training.latest_every=1000000 training.max_steps=1000000000 training.budget_seconds=3600 \
    optimizer.schedule=budget "$@" 2>&1 | tee "$RUNS/$name.log"
}
curve() {  # NAME [--compare LABEL=JSON]
  local name=$1; shift
  python scripts/quality_curve.py --run "$RUNS/$name" --heldout "$CORPUS/val/asterisk_it_IT_m_Carlo" \
    --english data/librivox-mini --perceptual --audio-steps 1000,3000,6000,10000,14000,18000 \
    --output "$OUT/$name" "$@"
}
case "${1:?previous | adopted | curves}" in
  previous) train previous model.params.audioconfig.input_norm=none optimizer.lr=0.0005 optimizer.warmup_steps=50 ;;
  adopted) train adopted ;;
  curves) curve previous; curve adopted --compare "previous recipe=$OUT/previous/results.json" ;;
  *) echo "usage: $0 previous | adopted | curves" >&2; exit 2 ;;
esac
