"""How the sprites VAE decodes latents with i.i.d. Gaussian noise added (std 0 … 0.3 in scaled latent units,
where the latents have std ~1): the eval's presence/absence on frame 0 of 64 held-out scenes. Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sprites/vae_noise.py [MODEL_DIR]
"""

import sys

import numpy as np
import torch

from ca2vdm_cli.sprites import evaluate, world
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
torch.manual_seed(0)
comps = load_model_dir(sys.argv[1] if len(sys.argv) > 1 else "weights/sprites")
vae, scale = comps.vae, comps.card.vae_scaling_factor
n = 64
scenes = [world.sample_scene(s) for s in range(10**7, 10**7 + n)]
frames = np.stack([world.render(s, 1)[0] for s in scenes])  # (n, 64, 64, 3) uint8
x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
with torch.no_grad():
    z = vae.encode(x).latent_dist.mean * scale  # (n, 4, 16, 16)
    print(f"latent std {z.std().item():.3f}")
    for std in (0.0, 0.05, 0.1, 0.2, 0.3):
        y = vae.decode((z + std * torch.randn_like(z)) / scale).sample
        images = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        rates = evaluate.aggregate(
            [evaluate.score_video(images[i : i + 1], scenes[i].prompt, {0}) for i in range(n)]
        )
        print(f"noise std {std}: presence {rates['presence']:.3f} absence {rates['absence']:.3f}")
