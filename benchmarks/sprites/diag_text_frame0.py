"""Diagnosis (b): text alone, one frame (P = 0). Does frame 0 show the prompted colours?

Generates only the first chunk from the prompt (no image) for held-out scenes (seeds from 10^7) and scores
frame 0 with the eval's presence/absence, per sampler. Usage:
    OMP_NUM_THREADS=1 python benchmarks/sprites/diag_text_frame0.py [MODEL_DIR] [PROMPTS] [CFG_SCALE] [STEPS]
(CFG_SCALE / STEPS default to the card's.)
"""

import json
import sys

import numpy as np
import torch

from ca2vdm_cli.sprites import evaluate as evaluate
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
model_dir = sys.argv[1] if len(sys.argv) > 1 else "weights/sprites"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
comps = load_model_dir(model_dir)
comps.model.eval()
seeds = list(range(10**7, 10**7 + n))
scenes = [sprites.sample_scene(s) for s in seeds]
prompts = [s.prompt for s in scenes]
base = comps.card.sampling
cfg_scale = float(sys.argv[3]) if len(sys.argv) > 3 else base.cfg_scale
steps = int(sys.argv[4]) if len(sys.argv) > 4 else base.steps
out = {"model": model_dir, "prompts": n, "cfg_scale": cfg_scale, "steps": steps}
for sampler in ("iddpm", "ddim"):
    sampling = base.replace(sampler=sampler, cfg_scale=cfg_scale, steps=steps)
    with torch.inference_mode():
        videos = evaluate.generate_batch(comps, prompts, seeds, 1, sampling, None)
    scores = [evaluate.score_video(v, p, {0}) for v, p in zip(videos, prompts, strict=True)]
    agg = evaluate.aggregate(scores)
    # the colours found vs prompted on frame 0 (20-pixel threshold like the eval)
    found = evaluate.colour_masks(videos[:, 0]).sum(axis=(2, 3)) >= 20  # (n, 8)
    out[sampler] = {
        "presence_frame0": agg["presence"],
        "absence_frame0": agg["absence"],
        "mean_colours_found": float(found.sum(1).mean()),
        "world_colours_prompted": float(np.mean([len(s.sprites) for s in scenes])),
    }
print(json.dumps(out, indent=2))
