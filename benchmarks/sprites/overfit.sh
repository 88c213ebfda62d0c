#!/bin/sh
# Diagnosis (a): overfit VIDEOS clips of 13 frames (seeds 0..VIDEOS-1) with the v2 recipe's settings,
# then generate each from its first frame with the card's sampler and cache (benchmarks/sprites/overfit_eval.py).
# EXTRA: more --set overrides, e.g. the v-prediction objective (see train_v3.sh); OUT: the run folder.
# PY: the Python with ca2vdm installed (default .venv/bin/python).
set -e
V=${VIDEOS:-1}
PY=${PY:-.venv/bin/python}
O=${OUT:-runs/overfit-$V}
OMP_NUM_THREADS=1 $PY -m ca2vdm_cli train --config sprites --out $O --threads 1 ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' \
  --set text_encoder.tokenizer=words --set card.text.tokenizer=files \
  --set card.text.max_length=16 --set card.model.model_max_length=16 \
  --set train.zero_init_new=false --set data.videos=$V --set data.frames=13 \
  --set train.steps=${STEPS:-800} --set train.warmup_steps=50 --set train.ema_decay=0.95 --set train.lr=1e-3 \
  --set train.text_dropout=0 --set train.checkpoint_every=400 --set train.log_every=50 ${EXTRA}
OMP_NUM_THREADS=1 PYTHONPATH=. $PY benchmarks/sprites/overfit_eval.py $O/model $V
