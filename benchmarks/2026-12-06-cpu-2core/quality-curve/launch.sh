#!/usr/bin/env bash
# Learning-curve run: short recipe at the CPU preset of scripts/benchmark_quality.py, trained on three voices
# (asterisk_it_IT_m_Carlo held out), numbered checkpoint every 200 steps, 70-minute budget cosine.
cd /work/wt-quality
export PYTHONPATH=/work/wt-quality
exec /work/main/.venv/bin/python scripts/main_audio_tokenizer.py configs/tokenizer/audio_speech_short_b18.yaml \
  --output-dir /work/runs/curve/run --device cpu \
  model.params.audioconfig.width=192 model.params.audioconfig.layers=3 model.params.audioconfig.heads=4 \
  model.params.audioconfig.patch_size=16 data.batch_size=8 data.num_workers=1 training.precision=fp32 \
  data.train.target=transcoder.data.AudioFolderDataset "data.train.params={root: /work/runs/curve/train_seen}" \
  data.val=null training.image_every=0 training.log_every=50 training.ckpt_every=200 training.latest_every=1000000 \
  training.max_steps=1000000000 training.budget_seconds=4200 optimizer.schedule=budget
