#!/bin/sh
# The v3 recipe (issue 12): train_v2.sh's settings plus the objective the diagnosis pointed at:
#  - v-prediction on the zero-terminal-SNR rescaled linear schedule (card.sampling.prediction = "v",
#    schedule = "linear_zsnr"; training reads both from the card, so the sampler inverts what was trained),
#  - the shipped VAE reused (latent space unchanged), the word-level tokenizer, standard init of the new branches,
#  - 1000 videos, batch 8, 5000 steps, constant lr 3e-4 after 200 warm-up steps, EMA 0.999 (v3b: 37.7 min).
# PY: the Python with ca2vdm installed (default .venv/bin/python). EXTRA: more --set overrides.
set -e
PY=${PY:-.venv/bin/python}
OMP_NUM_THREADS=1 $PY -m ca2vdm_cli train --config sprites --out "${OUT:-runs/sprites-v3}" --threads 1 ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' \
  --set card.sampling.prediction=v --set card.sampling.schedule=linear_zsnr \
  --set text_encoder.tokenizer=words --set card.text.tokenizer=files \
  --set card.text.max_length=16 --set card.model.model_max_length=16 \
  --set train.zero_init_new=false --set data.videos=${VIDEOS:-1000} \
  --set train.steps=${STEPS:-5000} --set train.warmup_steps=200 --set train.ema_decay=0.999 \
  --set train.checkpoint_every=250 --set train.keep_checkpoints=3 --set train.log_every=50 ${EXTRA}
