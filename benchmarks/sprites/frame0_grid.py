"""Frame 0 from text alone for held-out scenes: the true frame 0s (top row) above the model's (bottom row),
upscaled 2x. Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sprites/frame0_grid.py MODEL_DIR OUT.png [PROMPTS] [CFG]
"""

import sys

import numpy as np
import torch
from PIL import Image

from ca2vdm_cli.sprites import evaluate, world
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
comps = load_model_dir(sys.argv[1])
comps.model.eval()
n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
seeds = list(range(10**7, 10**7 + n))
scenes = [world.sample_scene(s) for s in seeds]
prompts = [s.prompt for s in scenes]
sampling = comps.card.sampling
if len(sys.argv) > 4:
    sampling = sampling.replace(cfg_scale=float(sys.argv[4]))
with torch.inference_mode():
    made = evaluate.generate_batch(comps, prompts, seeds, 1, sampling, None)[:, 0]  # (n, H, W, 3)
truth = np.stack([world.render(s, 1)[0] for s in scenes])
grid = np.concatenate([np.concatenate(list(truth), 1), np.concatenate(list(made), 1)], 0)
Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(sys.argv[2])
for p in prompts:
    print(p)
