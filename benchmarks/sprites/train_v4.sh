#!/bin/sh
# The v4 recipe (issue 12, RESULTS.md §13–§14) is the built-in `sprites` recipe: the noise-augmented-context
# recipe of train_nac.sh plus the pooled caption in the timestep embedding and cosine lr decay, 9,000 steps,
# 4×4 patches (pinned here, so the script stays the v4 run whatever train_v5.sh tries). It reuses the
# previous release's VAE (latent space unchanged) and exposes the knobs of the experiments: STEPS, FGW
# (train.foreground_weight, default 1 = off; the 1,250-step pilot with 5 found it biases the optimum towards
# drawing sprites everywhere, §13), PPT / PNMAX (cache level / prefix noise).
# PY: the Python with ca2vdm installed. THREADS: torch threads (default 2). EXTRA: more --set overrides.
set -e
PY=${PY:-.venv/bin/python}
TH=${THREADS:-2}
OMP_NUM_THREADS=$TH $PY -m ca2vdm_cli train --config sprites --out "${OUT:-runs/sprites-v4}" --threads $TH ${RESUME} \
  --stages ${STAGES:-vae,latents,dit,export} \
  --set vae='{"path": "weights/sprites/vae"}' --set card.model.patch_size='[1, 4, 4]' \
  --set train.steps=${STEPS:-9000} --set train.foreground_weight=${FGW:-1} \
  --set card.sampling.prefix_perturb_t=${PPT:-150} --set train.prefix_noise_max=${PNMAX:-300} ${EXTRA}
