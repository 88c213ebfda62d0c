"""Diagnosis (a) detail: eps-MSE and the implied x0-MSE of the model on q_sample(clip, t)
(on-distribution)."""

import sys

import numpy as np
import torch

from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import encode_frames
from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir

torch.set_num_threads(1)
c = load_model_dir(sys.argv[1])
m = c.model.eval()
card = c.card
sc = [sprites.sample_scene(int(sys.argv[2]) if len(sys.argv) > 2 else 0)]
v = np.stack([sprites.render(sc[0], 13)])
with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(v), card.vae_scaling_factor, seeds=[0])
    y, ym = encode_text(c.tokenizer, c.text_encoder, [sc[0].prompt], card.text_max_length)
    full = Diffusion(1000)
    pre = full.q_sample(z[:, :, :1], 50, torch.randn_like(z[:, :, :1]))
    target = z[:, :, 1:5]
    pm = torch.tensor([[1.0, 0, 0, 0, 0]])
    for t in (999, 900, 700, 526, 300, 100, 20):
        n = torch.randn_like(target)
        xt = full.q_sample(target, t, n)
        out = m(torch.cat([pre, xt], 2), t * (1 - pm), y, ym, prefix_mask=pm)[:, :4, 1:]
        ac = float(full.base_alphas_cumprod[t])
        x0 = (xt - (1 - ac) ** 0.5 * out) / ac**0.5
        print(
            t,
            f"eps mse {((out - n) ** 2).mean():.4f}",
            f"x0 mse {((x0 - target) ** 2).mean():.3f}",
            f"eps-pred std {out.std():.3f}",
        )
