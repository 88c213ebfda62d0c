"""The eval's colour scores on the VAE reconstruction of held-out world videos: the ceiling any DiT on
this VAE can reach (frame 0 and all frames). Usage:
    PYTHONPATH=. python benchmarks/sprites/vae_scores.py MODEL [N] [FRAMES]
"""

import json
import sys

import numpy as np
import torch

from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.sprites import evaluate
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
c = load_model_dir(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
T = int(sys.argv[3]) if len(sys.argv) > 3 else 13
seeds = list(range(10**7, 10**7 + n))
scenes = [sprites.sample_scene(s) for s in seeds]
video = np.stack([sprites.render(s, T) for s in scenes])
with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(video), c.card.vae_scaling_factor, seeds=seeds)
    rec = decode_latents(c.vae, z, c.card.vae_scaling_factor).numpy()
out = {"model": sys.argv[1], "scenes": n, "frames": T}
for name, frames in (("world", video), ("vae_recon", rec)):
    f0 = evaluate.aggregate(
        [evaluate.score_video(v[:1], s.prompt, set()) for v, s in zip(frames, scenes, strict=True)]
    )
    allf = evaluate.aggregate(
        [evaluate.score_video(v, s.prompt, set()) for v, s in zip(frames, scenes, strict=True)]
    )
    found = evaluate.colour_masks(frames[:, 0]).sum(axis=(2, 3)) >= 20
    out[name] = {
        "presence_frame0": f0["presence"],
        "absence_frame0": f0["absence"],
        "presence_all": allf["presence"],
        "absence_all": allf["absence"],
        "mean_colours_found_frame0": float(found.sum(1).mean()),
    }
print(json.dumps(out, indent=2))
