"""Diagnosis (a) detail: eps-MSE and the implied x0-MSE of the model on q_sample(clip, t) (on-distribution)."""
import sys, numpy as np, torch
from ca2vdm_cli import sprites
from ca2vdm_cli.diffusion import Diffusion
from ca2vdm_cli.modeldir import load_model_dir
from ca2vdm_cli.text import encode_text
from ca2vdm_cli.vae import encode_frames
torch.set_num_threads(1)
c = load_model_dir(sys.argv[1]); m = c.model.eval(); card = c.card
sc = [sprites.sample_scene(int(sys.argv[2]) if len(sys.argv)>2 else 0)]
v = np.stack([sprites.render(sc[0], 13)])
with torch.inference_mode():
    z = encode_frames(c.vae, torch.from_numpy(v), card.vae_scaling_factor, seeds=[0])
    y, ym = encode_text(c.tokenizer, c.text_encoder, [sc[0].prompt], card.text_max_length)
    full = Diffusion(1000)
    pre = full.q_sample(z[:, :, :1], 50, torch.randn_like(z[:, :, :1]))
    target = z[:, :, 1:5]
    pm = torch.tensor([[1., 0, 0, 0, 0]])
    for t in (999, 900, 700, 526, 300, 100, 20):
        n = torch.randn_like(target)
        xt = full.q_sample(target, t, n)
        out = m(torch.cat([pre, xt], 2), t * (1 - pm), y, ym, prefix_mask=pm)[:, :4, 1:]
        ac = float(full.base_alphas_cumprod[t])
        x0 = (xt - (1 - ac) ** .5 * out) / ac ** .5
        print(t, "eps mse %.4f" % ((out - n) ** 2).mean(), "x0 mse %.3f" % ((x0 - target) ** 2).mean(), "eps-pred std %.3f" % out.std())
