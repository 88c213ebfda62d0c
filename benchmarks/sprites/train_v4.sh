#!/bin/sh
# The v4 recipe (issue 12, RESULTS.md §13): the noise-augmented-context recipe (train_nac.sh) plus
#  - the pooled caption in the timestep embedding (card.model.pooled_caption = true: every block's adaLN sees
#    the prompt, as DiT's class label; cross-attention stays),
#  - optionally the foreground-weighted loss (train.foreground_weight = FGW, default 1 = off; the 1,250-step
#    pilot with 5 found it biases the optimum towards drawing sprites everywhere, RESULTS.md §13),
#  - cosine decay of the lr to 10 % after the warm-up.
# PY: the Python with ca2vdm installed. THREADS: torch threads (default 2). EXTRA: more --set overrides.
set -e
PY=${PY:-.venv/bin/python}
TH=${THREADS:-2}
OMP_NUM_THREADS=$TH $PY -m ca2vdm_cli train --config sprites --out "${OUT:-runs/sprites-v4}" --threads $TH ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' \
  --set card.sampling.prediction=v --set card.sampling.schedule=linear_zsnr \
  --set card.sampling.prefix_timestep=perturb --set card.sampling.prefix_perturb_t=${PPT:-150} \
  --set train.prefix_noise_max=${PNMAX:-300} \
  --set card.model.pooled_caption=true --set train.foreground_weight=${FGW:-1} \
  --set text_encoder.tokenizer=words --set card.text.tokenizer=files \
  --set card.text.max_length=16 --set card.model.model_max_length=16 \
  --set train.zero_init_new=false --set data.videos=${VIDEOS:-1000} \
  --set train.steps=${STEPS:-12000} --set train.warmup_steps=200 --set train.ema_decay=0.999 \
  --set train.min_lr_ratio=${MINLR:-0.1} \
  --set train.checkpoint_every=500 --set train.keep_checkpoints=2 --set train.log_every=50 ${EXTRA}
