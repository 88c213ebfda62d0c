"""A strip of frames (PNG) from a sprites model for a few prompts: one row per prompt, every STRIDE-th frame
of a text-only video (seed 0 of the held-out range), upscaled 2x. Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sprites/strip.py [MODEL_DIR] [OUT.png] [FRAMES] [STRIDE]
"""

import sys

import numpy as np
import torch
from PIL import Image

from ca2vdm_cli.sprites import evaluate
from ca2vdm_cli.store.modeldir import load_model_dir

PROMPTS = [
    "a red circle moving right",
    "a blue square moving up",
    "a green triangle moving left",
    "a yellow circle moving down-right and a cyan square moving left",
]

torch.set_num_threads(1)
model_dir = sys.argv[1] if len(sys.argv) > 1 else "weights/sprites"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/sprites-strip.png"
frames = int(sys.argv[3]) if len(sys.argv) > 3 else 48
stride = int(sys.argv[4]) if len(sys.argv) > 4 else 6
comps = load_model_dir(model_dir)
comps.model.eval()
seeds = [10**7] * len(PROMPTS)
with torch.inference_mode():
    videos = evaluate.generate_batch(comps, PROMPTS, seeds, frames, comps.card.sampling, None)  # (B,T,H,W,3)
picked = videos[:, ::stride]  # (B, K, H, W, 3)
B, K, H, W, _ = picked.shape
pad = 2
canvas = np.full((B * (H + pad) - pad, K * (W + pad) - pad, 3), 64, dtype=np.uint8)  # grey gaps
for b in range(B):
    for k in range(K):
        canvas[b * (H + pad) : b * (H + pad) + H, k * (W + pad) : k * (W + pad) + W] = picked[b, k]
Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.NEAREST).save(out)
print(f"{out}: {B} prompts x {K} frames (every {stride}th of {frames})")
for p in PROMPTS:
    print(" ", p)
