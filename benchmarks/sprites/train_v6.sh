#!/bin/sh
# The v6 run (issue 12, RESULTS.md §19): the v4 recipe (train_v4.sh, which this calls; 4×4 patches) plus
# joint image-video training — 40 % of the steps train text-to-image on 48 single frames (T = 1, P = 0, the
# task of frame 0 of a text-to-video start; train.image_fraction / train.image_batch_size) — and 16,000
# steps instead of 9,000 (an image step costs ~2/3 of a video step, so the video steps, ~9,600, stay at
# v4's count). The previous release's VAE is reused (latent space unchanged).
# Takes train_v4.sh's variables (PY, THREADS, STAGES, RESUME, EXTRA, …).
set -e
OUT=${OUT:-runs/sprites-v6} STEPS=${STEPS:-16000} \
  EXTRA="--set train.image_fraction=${IMGF:-0.4} --set train.image_batch_size=${IMGB:-48} ${EXTRA}" \
  sh "$(dirname "$0")/train_v4.sh"
