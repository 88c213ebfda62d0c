"""Diagnosis (a) detail: one chunk of DDIM from the true first frame of training clip 0 (full forward,
no cache), printing per step the x std, the x0 error and the eps error vs the eps that would land on
the clip."""

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
sc = [sprites.sample_scene(0)]
v = np.stack([sprites.render(sc[0], 13)])
with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(v), card.vae_scaling_factor, seeds=[0])
    y, ym = encode_text(c.tokenizer, c.text_encoder, [sc[0].prompt], card.text_max_length)
    print("z std", z.std().item(), "z0 abs max", z.abs().max().item())
    d = Diffusion(20)
    full = Diffusion(1000)
    pre = full.q_sample(z[:, :, :1], 50, torch.randn_like(z[:, :, :1]))
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 16, 16)
    target = z[:, :, 1:5]
    for i in reversed(range(20)):
        t = d.timestep_map[i]
        xin = torch.cat([pre, x], 2)
        pm = torch.tensor([[1.0, 0, 0, 0, 0]])
        out = m(xin, t * (1 - pm), y, ym, prefix_mask=pm)[:, :, 1:]
        eps = out[:, :4]
        true_eps = (x - d._f["ac"][i] ** 0.5 * target) / (1 - d._f["ac"][i]) ** 0.5
        x0 = d.predict_x0(x, eps, i)
        print(
            i,
            t,
            f"x std {x.std():.3f}",
            f"x0 err {((x0 - target) ** 2).mean():.3f}",
            f"eps err vs true {((eps - true_eps) ** 2).mean():.3f}",
            f"v range {out[:, 4:].min():.2f} {out[:, 4:].max():.2f}",
        )
        x = d.ddim_sample(out, x, i, None)
    print("final latent mse", ((x - target) ** 2).mean().item())
