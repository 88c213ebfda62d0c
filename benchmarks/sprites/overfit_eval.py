"""PSNR of 12 frames generated from the first frame of training clips 0..N-1 (card sampler, KV cache)
vs the true frames and vs their VAE reconstruction (the ceiling of the diffusion part)."""

import json
import sys

import numpy as np
import torch

from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.models.stdit.family import sample_video
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
c = load_model_dir(sys.argv[1])
n = int(sys.argv[2])
seeds = list(range(n))
scenes = [sprites.sample_scene(s) for s in seeds]
video = np.stack([sprites.render(s, 13) for s in scenes])


def psnr(a, b):
    return float(10 * np.log10(255**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-10)))


with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(video), c.card.vae_scaling_factor, seeds=seeds)
    y, m = encode_text(c.tokenizer, c.text_encoder, [s.prompt for s in scenes], c.card.text_max_length)
    out = {"model": sys.argv[1], "clips": n}
    rec = decode_latents(c.vae, z, c.card.vae_scaling_factor).numpy()
    for sampler in ("iddpm", "ddim"):
        cfg = c.card.sampling.replace(sampler=sampler)
        gen = torch.cat(
            list(sample_video(c.model, cfg, num_frames=12, seeds=seeds, prefix=z[:, :, :1], y=y, y_mask=m)),
            dim=2,
        )
        frames = decode_latents(c.vae, gen, c.card.vae_scaling_factor).numpy()
        out[f"{sampler}_psnr_vs_clip"] = psnr(frames, video[:, 1:])
        out[f"{sampler}_psnr_vs_vae_recon"] = psnr(frames, rec[:, 1:])
        out[f"{sampler}_latent_mse"] = float(((gen - z[:, :, 1:]) ** 2).mean())
    out["vae_recon_psnr"] = psnr(rec, video)
print(json.dumps(out, indent=2))
