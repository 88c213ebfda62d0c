#!/bin/sh
# The redesigned recipe tried in this session: the built-in `sprites` recipe plus
#  - the shipped VAE reused (latent space unchanged: vae.path = weights/sprites/vae),
#  - a word-level tokenizer over the grammar's closed vocabulary (16 tokens instead of 80 bytes),
#  - standard (xavier) init of the temporal / prefix / cross-attention output projections and the
#    mask-channel merge instead of zero-init (train.zero_init_new = false; --init fine-tuning unaffected),
#  - 300 videos (faster latents), EMA 0.99 (short run), checkpoints every 100 steps.
set -e
OMP_NUM_THREADS=1 .venv/bin/ca2vdm train --config sprites --out "${OUT:-runs/sprites-v2}" --threads 1 ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' \
  --set text_encoder.tokenizer=words --set card.text.tokenizer=files \
  --set card.text.max_length=16 --set card.model.model_max_length=16 \
  --set train.zero_init_new=false --set data.videos=300 \
  --set train.steps=${STEPS:-1500} --set train.warmup_steps=100 --set train.ema_decay=0.99 \
  --set train.checkpoint_every=100 --set train.keep_checkpoints=3 --set train.log_every=25
