"""Training: turn a CausalSTDiT into a causal Ca2-VDM with the clean-prefix objective.

recipe.py     what to train (a TOML/JSON file or a built-in recipe such as `sprites`)
data.py       clips of VAE latents + captions: the procedural sprites world or a folder of videos
vae.py        the small sprites VAE (stage 1 of the sprites recipe) and latent encoding
objective.py  the clean-prefix loss: prefix lengths, perturbation, cyclic TPE start, text dropout
loop.py       the optimisation loop: DDP (torchrun), AdamW, EMA, grad clip, autocast, progress
checkpoint.py resumable checkpoints in safetensors (weights, EMA, optimizer state, step)
run.py        the stages of `ca2vdm train`: VAE → latent cache → transformer → model directory
"""
