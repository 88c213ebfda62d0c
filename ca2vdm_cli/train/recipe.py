"""Training recipes: everything `ca2vdm train` needs besides the command-line switches.

A recipe is a TOML or JSON file (or the name of a built-in recipe, e.g. `sprites`) with the tables

    name, seed
    card          the model card of the result (model architecture, sampling defaults, video, text)
    text_encoder  {config = T5Config kwargs} to build one, or {path = DIR} to load one; train = true|false
    vae           {config = AutoencoderKL kwargs, steps, batch, lr, kl_weight} to train one on the sprites
                  world (normalise_channels = true: per-channel zero-mean, unit-std latents folded into
                  its weights, scaling factor 1), or {path = DIR} to load one
    data          {kind = "sprites", videos, frames} or {kind = "videos", dir, captions, clip_frames,
                  stride, size}; the latents are cached on disk
    train         the optimisation settings (`TrainSettings`)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca2vdm_cli.errors import ConfigError


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8  # clips per process and step
    lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 1.0  # cosine decay to lr·min_lr_ratio after warm-up (1.0: constant)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    p_zero_prefix: float = 0.1  # probability of P = 0 (start without an image); needs text_to_video
    t2v_prefixes: bool = True  # also P = l, 2l, …: the cache lengths of a video started from text
    prefix_perturb_t: int = 50  # clean prefix replaced by q_sample(z0, t_p); 0 = off
    # > 0: noise-augmented context: each clip's prefix at its own t_p ~ U{0..prefix_noise_max}, given to
    # the model as the prefix frames' timestep (replaces prefix_perturb_t in training); pair it with the
    # card's sampling.prefix_timestep = "perturb". 0 = off (prefix at prefix_perturb_t, timestep 0).
    prefix_noise_max: int = 0
    tpe_random_start: str = "full"  # "full": only clips of max_tpe_len frames; "all"; "none"
    text_dropout: float = 0.1  # caption → null caption, for classifier-free guidance
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | no
    gradient_checkpointing: bool = False
    zero_init_new: bool = True  # from scratch: False = standard init of the temporal/prefix/text branches
    # > 1: the MSE on latent pixels touching foreground (pixels away from their frame's median colour, see
    # data.foreground_masks) counts this many times more; 1 = off
    foreground_weight: float = 1.0
    # > 0: this fraction of the steps trains text-to-image on single frames (T = 1, P = 0: exactly what
    # frame 0 of a text-to-video start is) with `image_batch_size` frames drawn from anywhere in the clips
    # (joint image-video training: a single frame costs 1/(P + chunk) of a clip, so the spatial and text
    # pathways see many more examples per second); needs text_to_video. 0 = off.
    image_fraction: float = 0.0
    image_batch_size: int = 64

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.p_zero_prefix <= 1, "p_zero_prefix must be in [0, 1]"),
            (0 <= self.text_dropout <= 1, "text_dropout must be in [0, 1]"),
            (0 <= self.prefix_perturb_t < 1000, "prefix_perturb_t must be in 0..999"),
            (0 <= self.prefix_noise_max < 1000, "prefix_noise_max must be in 0..999"),
            (self.foreground_weight >= 1, "foreground_weight must be >= 1 (1 = off)"),
            (0 <= self.image_fraction <= 1, "image_fraction must be in [0, 1]"),
            (self.image_batch_size >= 1, "image_batch_size must be >= 1"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.tpe_random_start in ("full", "all", "none"), "tpe_random_start must be full|all|none"),
            (
                self.mixed_precision in ("auto", "bf16", "fp16", "no"),
                "mixed_precision must be auto|bf16|fp16|no",
            ),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every/log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train settings: {message} (got {dataclasses.asdict(self)})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown [train] keys {unknown}; valid keys: {sorted(names)}")
        kw = dict(d)
        if "betas" in kw:
            kw["betas"] = tuple(float(b) for b in kw["betas"])
        return cls(**kw)


# The embedded default model (weights/sprites): 64×64 frames, a 4× VAE (16×16×4 latents), 4×4 patches
# (16 tokens per frame), chunks of 4 frames, a queue of 9 clean frames (M = 9 + 4 = 13). v6 (issue 12):
# v-prediction on the zero-terminal-SNR schedule, a word-level tokenizer over the grammar, the pooled caption
# in the timestep embedding, standard init of the new branches, noise-augmented context (prefix at
# t_p ~ U{0..300}, the cache written at 150), joint image-video training (40 % of the steps are 48 single
# frames from text), 16,000 steps with cosine decay, CFG 2. The shipped weights reused the previous
# release's VAE: `--set vae='{"path": "weights/sprites/vae"}'` (docs/sprites-model.md).
SPRITES: dict[str, Any] = {
    "name": "sprites",
    "seed": 0,
    "card": {
        "name": "sprites",
        "description": "A small causal Ca2-VDM trained from scratch on the procedural sprites world "
        "(64x64, 1-2 coloured shapes moving and bouncing on black).",
        "intended_use": "Offline demo and smoke test: prompts 'a {colour} {shape} moving {direction}' "
        "(two sprites joined by ' and '); optional first frame from the same world.",
        "license": "Apache-2.0",
        "model": {
            "latent_size": [16, 16],
            "in_channels": 4,
            "patch_size": [1, 4, 4],
            "hidden_size": 128,
            "depth": 6,
            "num_heads": 4,
            "caption_channels": 128,
            "model_max_length": 16,
            "max_tpe_len": 13,
            "tpe_mode": "cyclic",
            "mask_channel": True,
            "pe_mode": "prev_frames",
            "pe_frames": 2,
            "class_dropout_prob": 0.1,
            "pooled_caption": True,
        },
        "sampling": {
            "steps": 10,
            "sampler": "iddpm",
            "chunk": 4,
            "cache_frames": 9,
            "cfg_scale": 2.0,  # same cost as 20 steps without CFG; chosen on 48 frames (RESULTS.md §19)
            "prediction": "v",
            "schedule": "linear_zsnr",
            "prefix_perturb_t": 150,
            "prefix_timestep": "perturb",
        },
        "video": {"fps": 12, "height": 64, "width": 64},
        "vae": {"downsample": 4},
        "text": {"max_length": 16, "tokenizer": "files"},
        "text_to_video": True,
    },
    "text_encoder": {
        "train": True,
        "tokenizer": "words",
        "config": {
            "vocab_size": 384,
            "d_model": 128,
            "d_kv": 32,
            "d_ff": 256,
            "num_layers": 2,
            "num_heads": 4,
            "dropout_rate": 0.0,
            "feed_forward_proj": "gated-gelu",
        },
    },
    "vae": {
        "config": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 16,
            "sample_size": 64,
            "mid_block_add_attention": False,
        },
        "steps": 800,
        "batch_size": 8,
        "lr": 1e-3,
        "kl_weight": 1e-6,
        "decoder_steps": 1500,
        "decoder_lr": 3e-4,
        "foreground_weight": 10.0,
    },
    "data": {"kind": "sprites", "videos": 1000, "frames": 32},
    "train": {
        "steps": 16000,
        "batch_size": 8,  # per process: the shipped model ran 1 process × 1 thread
        "lr": 3e-4,
        "warmup_steps": 200,
        "min_lr_ratio": 0.1,
        "ema_decay": 0.999,
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "log_every": 50,
        "p_zero_prefix": 0.15,
        "prefix_perturb_t": 50,  # unused with prefix_noise_max > 0
        "prefix_noise_max": 300,
        "tpe_random_start": "all",
        "text_dropout": 0.1,
        "zero_init_new": False,
        "image_fraction": 0.4,
        "image_batch_size": 48,
    },
}

BUILTIN = {"sprites": SPRITES}
SECTIONS = ("name", "seed", "card", "text_encoder", "vae", "data", "train", "export")


def load_recipe(source: str | Path) -> dict[str, Any]:
    """A built-in recipe name or a .toml/.json file -> a validated recipe dict (a fresh copy)."""
    if str(source) in BUILTIN:
        recipe = copy.deepcopy(BUILTIN[str(source)])
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"--config {source}: no such file and not a built-in recipe ({', '.join(BUILTIN)})"
            )
        try:
            text = path.read_text()
            recipe = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--config {source}: cannot parse ({exc}); give a TOML or JSON file") from None
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"recipe {source}: unknown sections {unknown}; valid: {list(SECTIONS)}")
    for key in ("card", "data"):
        if key not in recipe:
            raise ConfigError(f"recipe {source}: the [{key}] table is required")
    recipe.setdefault("name", recipe["card"].get("name", "model"))
    recipe.setdefault("seed", 0)
    recipe.setdefault("text_encoder", {})
    recipe.setdefault("vae", {})
    TrainSettings.from_dict(recipe.get("train", {}))  # validate early
    return recipe


def override(recipe: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set train.steps=100` style overrides (values parsed as JSON, else kept as strings)."""
    out = copy.deepcopy(recipe)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a table of the recipe")
            node = node[part]
        node[leaf] = value
    return out
