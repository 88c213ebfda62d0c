"""Diagnosis (c): teacher forcing vs free running, cache vs recompute, DDIM vs IDDPM.

For held-out scenes (seeds from 10^7), with the scene's true first frame given:
  * free run: 2 chunks (frames 1..8) with the card's sampler and the KV cache, and the same with the
    uncached `recompute` engine (max |diff|: must be ~0 if the cache path matches the recompute path);
  * PSNR of the generated frames 1..4 vs the true frames, per sampler (iddpm / ddim, same 20 steps);
  * ε-MSE (and x0-MSE) of the true frames 9..12 at t in {100, 300, 600}, given a 9-frame prefix that is
    (i) the true clean frames 0..8 (teacher forcing), (ii) true frame 0 + the model's own frames 1..8
    (free running), (iii) another scene's frames 0..8 (the prefix is wrong), (iv) no prefix (P = 0).
Usage: OMP_NUM_THREADS=1 python benchmarks/sprites/diag_teacher_forcing.py [MODEL_DIR] [SCENES]
"""

import json
import sys

import numpy as np
import torch

from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.models.stdit.family import prefix_write_t, sample_video
from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
model_dir = sys.argv[1] if len(sys.argv) > 1 else "weights/sprites"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
c = load_model_dir(model_dir)
model, card = c.model.eval(), c.card
seeds = list(range(10**7, 10**7 + n))
scenes = [sprites.sample_scene(s) for s in seeds]
prompts = [s.prompt for s in scenes]
video = np.stack([sprites.render(s, 13) for s in scenes])  # (n, 13, H, W, 3)
out = {"model": model_dir, "scenes": n}


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(video), card.vae_scaling_factor, seeds=seeds)  # (n,c,13,h,w)
    y, ymask = encode_text(c.tokenizer, c.text_encoder, prompts, card.text_max_length)
    out["vae_psnr_13_frames"] = psnr(decode_latents(c.vae, z, card.vae_scaling_factor).numpy(), video)
    runs = {}
    for sampler in ("iddpm", "ddim"):
        cfg = card.sampling.replace(sampler=sampler)
        for engine in ("cache", "recompute"):
            if sampler == "ddim" and engine == "recompute":
                continue
            chunks = list(
                sample_video(
                    model,
                    cfg,
                    num_frames=8,
                    seeds=seeds,
                    prefix=z[:, :, :1],
                    y=y,
                    y_mask=ymask,
                    engine=engine,
                )
            )
            runs[sampler, engine] = torch.cat(chunks, dim=2)
        frames = decode_latents(c.vae, runs[sampler, "cache"], card.vae_scaling_factor).numpy()
        out[f"{sampler}_psnr_frames_1_4"] = psnr(frames[:, :4], video[:, 1:5])
        out[f"{sampler}_psnr_frames_5_8"] = psnr(frames[:, 4:8], video[:, 5:9])
    out["cache_vs_recompute_max_abs"] = float(
        (runs["iddpm", "cache"] - runs["iddpm", "recompute"]).abs().max()
    )

    sp = card.sampling
    diff = Diffusion(1000, schedule=sp.schedule, prediction=sp.prediction)  # the card's training diffusion
    gen = torch.Generator().manual_seed(0)
    target = z[:, :, 9:13]
    prefixes = {
        "teacher_forced": z[:, :, :9],
        "free_running": torch.cat([z[:, :, :1], runs["iddpm", "cache"]], dim=2),
        "wrong_scene": z[:, :, :9].roll(1, dims=0),
        "no_prefix": None,
    }
    for t in (100, 300, 600):
        noise = torch.randn(target.shape, generator=gen)
        tt = torch.full((n,), t, dtype=torch.long)
        x_t = diff.q_sample(target, tt, noise)
        pert_noise = torch.randn(z[:, :, :9].shape, generator=gen)
        for name, pre in prefixes.items():
            if pre is None:
                x, P = x_t, 0
            else:
                pre = diff.q_sample(pre, card.sampling.prefix_perturb_t, pert_noise)
                x, P = torch.cat([pre, x_t], dim=2), 9
            T = x.shape[2]
            pm = torch.zeros(n, T)
            pm[:, :P] = 1
            ft = t * (1 - pm) + prefix_write_t(sp) * pm  # the prefix runs at the sampler's cache timestep
            pred = model(x, ft, y, ymask, prefix_mask=pm)[:, : target.shape[1], P:]
            x0_hat, eps = diff.x0_and_eps(x_t, pred, t)  # 1000 steps: index == t; ε̂ from v̂ for v-models
            out[f"eps_mse_t{t}_{name}"] = float(((eps - noise) ** 2).mean())
            out[f"x0_mse_t{t}_{name}"] = float(((x0_hat - target) ** 2).mean())
print(json.dumps(out, indent=2))
