#!/bin/sh
# Export the newest DiT checkpoint of a running (or stopped) train_v3.sh run into SNAP/model without
# touching the run: copies the checkpoint, links the latents and re-runs only the export stage.
# Usage: RUN=runs/sprites-v3 SNAP=runs/snap PY=... [RECIPE=benchmarks/sprites/train_v4.sh] sh benchmarks/sprites/snapshot.sh
# RECIPE must be the script (with the same EXTRA) that trained RUN, so the exported card matches the weights.
set -e
RUN=${RUN:-runs/sprites-v3}
SNAP=${SNAP:-runs/snap}
rm -rf "$SNAP" && mkdir -p "$SNAP/checkpoints/dit"
last=$(ls "$RUN/checkpoints/dit/"step-*.safetensors | tail -1)
cp "$last" "$SNAP/checkpoints/dit/"
for f in "$RUN"/checkpoints/dit/*; do case "$f" in *step-*) ;; *) cp -r "$f" "$SNAP/checkpoints/dit/" ;; esac; done
ln -s "$(realpath "$RUN/latents.safetensors")" "$SNAP/latents.safetensors"
for f in "$RUN"/latents*.json; do [ -e "$f" ] && cp "$f" "$SNAP/"; done
echo "snapshot of $last"
OUT=$SNAP STAGES=vae,latents,export sh ${RECIPE:-benchmarks/sprites/train_v3.sh}
