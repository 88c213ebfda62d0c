#!/bin/sh
# The v7 run (issue 12, RESULTS.md §19): v6 (train_v6.sh, which this calls: the v4 recipe + 40 % single-frame
# text-to-image steps) on the cosine noise schedule instead of linear_zsnr, 14,000 steps. On the 16×16
# latent, linear_zsnr spends 36 % of uniform training timesteps (and 4 of the 10 sampling steps) at
# log-SNR < −4, where the input is noise; cosine keeps 78 % of them in log-SNR (−4, 3), where a frame's
# layout is decided. The noise-augmented context keeps its noise levels in SNR terms: the cache is written
# at cosine t = 300 (= linear_zsnr's 150, log-SNR 1.29) and training prefixes take t_p ≤ 565 (= 300).
# Takes train_v4.sh's variables (PY, THREADS, STAGES, RESUME, EXTRA, …).
set -e
OUT=${OUT:-runs/sprites-v7} STEPS=${STEPS:-14000} PPT=${PPT:-300} PNMAX=${PNMAX:-565} \
  EXTRA="--set card.sampling.schedule=cosine ${EXTRA}" sh "$(dirname "$0")/train_v6.sh"
