"""Training vs held-out loss of an exported sprites model (is it short of data or of fitting?).

The same objective and random draws as training (`dit_loss_fn`, video steps only, P drawn as in training,
text dropout off) on (i) the run's training latents and (ii) freshly rendered held-out videos (seeds from
10^6, encoded with the model's VAE). A large gap says more videos help; none says the model is underfit.
Usage: OMP_NUM_THREADS=1 python benchmarks/sprites/val_loss.py MODEL_DIR TRAIN_LATENTS [BATCHES] [VIDEOS]
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ca2vdm_cli.media.vae import encode_frames
from ca2vdm_cli.sprites import world as sprites
from ca2vdm_cli.store.modeldir import load_model_dir
from ca2vdm_cli.train import data
from ca2vdm_cli.train.objective import TextToVideoObjective
from ca2vdm_cli.train.recipe import SPRITES, TrainSettings
from ca2vdm_cli.train.run import dit_loss_fn, training_diffusion

torch.set_num_threads(1)
model_dir, latents = sys.argv[1], sys.argv[2]
batches = int(sys.argv[3]) if len(sys.argv) > 3 else 40
videos = int(sys.argv[4]) if len(sys.argv) > 4 else 200
c = load_model_dir(model_dir)
card = c.card
module = TextToVideoObjective(c.model.eval(), c.text_encoder, False, training_diffusion(card)).eval()
train_clips = data.load_clips(Path(latents))
frames = train_clips.clip_frames
with torch.inference_mode():
    scenes = [sprites.sample_scene(10**6 + i) for i in range(videos)]
    zs = []
    for i in range(0, videos, 25):
        px = np.stack([sprites.render(s, frames) for s in scenes[i : i + 25]])
        zs.append(encode_frames(c.vae, torch.from_numpy(px), card.vae_scaling_factor).permute(0, 2, 1, 3, 4))
held = data.LatentClips(torch.cat(zs).half(), [s.prompt for s in scenes], True)
settings = dataclasses.replace(
    TrainSettings.from_dict(SPRITES["train"]), image_fraction=0.0, text_dropout=0.0
)
out = {"model": model_dir, "batches": batches, "batch_size": settings.batch_size, "held_out_videos": videos}
for name, clips in (("train", train_clips), ("held_out", held)):
    loss_fn, _ = dit_loss_fn(clips, c.tokenizer, settings, card)
    gen = torch.Generator().manual_seed(123)
    vals, by_p = [], {}
    with torch.inference_mode():
        for step in range(batches):
            o = loss_fn(module, step, gen, torch.device("cpu"))
            vals.append(float(o["loss"]))
            by_p.setdefault(int(o["prefix_len"]), []).append(float(o["loss"]))
    out[name] = {"loss": float(np.mean(vals)), "sem": float(np.std(vals) / np.sqrt(len(vals)))}
    out[name]["by_prefix"] = {str(k): round(float(np.mean(v)), 4) for k, v in sorted(by_p.items())}
print(json.dumps(out, indent=1))
