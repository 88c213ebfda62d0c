#!/bin/sh
# The v3 recipe (train_v3.sh) plus noise-augmented context (issue 12, RESULTS.md §12): every clip's prefix is
# noised to its own level t_p ~ U{0..PNMAX} and the model is told t_p as the prefix frames' timestep
# (train.prefix_noise_max); the card writes the cache at prefix_perturb_t = PPT and runs the written frames at
# that timestep (card.sampling.prefix_timestep = "perturb"), so training and inference agree.
# PY: the Python with ca2vdm installed. THREADS: torch threads (default 2). EXTRA: more --set overrides.
set -e
PY=${PY:-.venv/bin/python}
TH=${THREADS:-2}
OMP_NUM_THREADS=$TH $PY -m ca2vdm_cli train --config sprites --out "${OUT:-runs/sprites-nac}" --threads $TH ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' \
  --set card.sampling.prediction=v --set card.sampling.schedule=linear_zsnr \
  --set card.sampling.prefix_timestep=perturb --set card.sampling.prefix_perturb_t=${PPT:-150} \
  --set train.prefix_noise_max=${PNMAX:-300} \
  --set text_encoder.tokenizer=words --set card.text.tokenizer=files \
  --set card.text.max_length=16 --set card.model.model_max_length=16 \
  --set train.zero_init_new=false --set data.videos=${VIDEOS:-1000} \
  --set train.steps=${STEPS:-3000} --set train.warmup_steps=200 --set train.ema_decay=0.999 \
  --set train.checkpoint_every=250 --set train.keep_checkpoints=3 --set train.log_every=50 ${EXTRA}
