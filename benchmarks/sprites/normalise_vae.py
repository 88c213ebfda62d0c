"""Per-channel latent normalisation folded into a VAE's weights (no engine change).

The sprites VAE's latent channels have very different spreads (one global scaling factor makes the whole
latent unit-variance, not each channel). This writes a copy of the VAE whose encoder emits
z' = (z − μ_c) / σ_c per channel — μ, σ measured on the training latents — with
`ca2vdm_cli.train.vae.fold_channel_normalisation` (what `vae.normalise_channels` does to a VAE the recipe
trains, there with statistics of random frames).
Decoding is unchanged: decode'(encode'(x)) = decode(encode(x)).
Usage: python benchmarks/sprites/normalise_vae.py VAE_DIR LATENTS.safetensors OUT_DIR
"""

import json
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open

from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.train.vae import fold_channel_normalisation

src, latents_path, dst = sys.argv[1:4]
vae = AutoencoderKL.from_pretrained(src).eval()
scale = float(vae.config.scaling_factor)
with safe_open(latents_path, framework="pt") as f:
    z = f.get_tensor("latents").float() / scale  # (N, L, c, h, w) raw posterior means
c = z.shape[2]
mu = z.transpose(0, 2).reshape(c, -1).mean(1)  # (c,)
sigma = z.transpose(0, 2).reshape(c, -1).std(1)
print("per-channel mean", mu.tolist(), "std", sigma.tolist())

new = AutoencoderKL.from_config(vae.config).eval()
new.load_state_dict(vae.state_dict())
fold_channel_normalisation(new, mu, sigma)
new.save_pretrained(dst)

scenes = [sprites.sample_scene(10**7 + i) for i in range(8)]
video = torch.from_numpy(np.stack([sprites.render(s, 4) for s in scenes]))
with torch.inference_mode():
    a = decode_latents(vae, encode_frames(vae, video, scale), scale).float()
    zn = encode_frames(new, video, 1.0)
    b = decode_latents(new, zn, 1.0).float()
report = {
    "mean": mu.tolist(),
    "std": sigma.tolist(),
    "decode_max_abs_diff_255": float((a - b).abs().max()),
    "new_latent_channel_std": zn.transpose(0, 1).reshape(c, -1).std(1).tolist(),
}
print(json.dumps(report, indent=1))
(__import__("pathlib").Path(dst) / "normalisation.json").write_text(json.dumps(report, indent=1) + "\n")
