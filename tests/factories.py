"""Builders for tiny but real components (diffusers AutoencoderKL, transformers T5EncoderModel with the
file-free ByT5Tokenizer, CausalSTDiT) and a complete model directory on disk, for fast CPU tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.store.card import ModelCard
from tests.conftest import tiny_config, tiny_model


def tiny_vae(seed: int = 0, latent_channels: int = 4):
    """A 3-level AutoencoderKL: spatial factor 4, `latent_channels` (32×32 frames -> 8×8 latents)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
    ).eval()


def tiny_text_encoder(d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=384,
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    return T5EncoderModel(config).eval()


def tiny_card(
    name: str = "tiny", card_overrides: dict[str, Any] | None = None, **model_overrides
) -> ModelCard:
    """The tiny model's card (frames are 4× the latent size); `card_overrides` replaces card fields."""
    cfg = tiny_config(**model_overrides)
    fields: dict[str, Any] = dict(
        name=name,
        model=cfg,
        sampling=SamplingConfig(steps=3, sampler="ddim", chunk=4, cache_frames=8, prefix_perturb_t=50),
        fps=8,
        height=4 * cfg.latent_size[0],
        width=4 * cfg.latent_size[1],
        vae_scaling_factor=0.5,
        vae_downsample=4,
        text_max_length=cfg.model_max_length,
        tokenizer="byt5",
        text_to_video=True,
        description="random tiny test model",
    )
    return ModelCard(**{**fields, **(card_overrides or {})})


def write_tiny_model_dir(path: Path, card_overrides: dict[str, Any] | None = None, **model_overrides) -> Path:
    """A complete, loadable model directory with random weights."""
    from ca2vdm_cli.store.modeldir import save_model_dir

    card = tiny_card(card_overrides=card_overrides, **model_overrides)
    model = tiny_model(**model_overrides)
    text = tiny_text_encoder(card.model.caption_channels) if card.model.has_text else None
    return save_model_dir(path, card, model, tiny_vae(), text)


# ----------------------------------------------------------------------------- the causal Wan family
def tiny_wan_config(**overrides):
    """A 2-layer causal Wan DiT for 8×8 latents (16 tokens per frame), blocks of 2 latent frames, T5
    captions of 16 tokens × 32 channels."""
    from ca2vdm_cli.models.wan import WanConfig

    base: dict[str, Any] = dict(
        num_layers=2, dim=48, ffn_dim=96, num_heads=2, freq_dim=32, text_dim=32, text_len=16,
        num_frame_per_block=2,
    )  # fmt: skip
    return WanConfig.tiny(**{**base, **overrides})


def tiny_wan_model(seed: int = 0, **overrides):
    """Random weights everywhere (the official init zeroes some projections)."""
    from ca2vdm_cli.models.wan import CausalWan

    torch.manual_seed(seed)
    model = CausalWan(tiny_wan_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def tiny_wan_vae(seed: int = 0):
    """The stand-in image VAE of a tiny Wan directory: factor 4, 16 latent channels (Wan's)."""
    return tiny_vae(seed, latent_channels=16)


def tiny_wan_card(
    name: str = "tiny-wan", sampling: dict[str, Any] | None = None, **card_overrides
) -> ModelCard:
    from ca2vdm_cli.models.wan.spec import WanSampling

    defaults = dict(timesteps=(1000, 750, 500, 250), shift=5.0, warp=True, chunk=2, max_frames=16)
    fields: dict[str, Any] = dict(
        name=name,
        family="wan",
        model=tiny_wan_config(),
        sampling=WanSampling(**{**defaults, **(sampling or {})}),
        fps=8,
        height=32,
        width=32,
        vae_scaling_factor=0.5,
        vae_downsample=4,
        text_max_length=16,
        tokenizer="byt5",
        text_to_video=True,
        accepts_images=False,
        description="random tiny causal Wan test model (stand-in image VAE)",
    )
    return ModelCard(**{**fields, **card_overrides})


def write_tiny_wan_dir(path: Path, sampling: dict[str, Any] | None = None, **card_overrides) -> Path:
    """A complete, loadable causal Wan model directory with random weights and a stand-in VAE."""
    from ca2vdm_cli.store.modeldir import save_model_dir

    card = tiny_wan_card(sampling=sampling, **card_overrides)
    model = tiny_wan_model(**{})
    return save_model_dir(path, card, model, tiny_wan_vae(), tiny_text_encoder(32))


def tiny_umt5_parts(d_model: int = 32, seed: int = 0):
    """A tiny UMT5EncoderModel and a T5-like word tokenizer (`<pad>` 0, `</s>` appended), saveable."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["a", "red", "blue", "green", "circle", "square", "moving", "left", "right", "sky", "cat"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=32, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    return UMT5EncoderModel(config).eval(), tokenizer


def tiny_wan_video_vae(seed: int = 0):
    """Wan2.1's VAE structure (16 latent channels, 8x spatial, 4x temporal) at base width 8."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)
    with torch.no_grad():  # random weights give a near-constant output; widen it so errors show
        for p in vae.parameters():
            p.mul_(1.5)
    return vae.eval()


def write_tiny_wan_video_dir(path: Path, frame_wise: bool = True, **card_overrides) -> Path:
    """A causal Wan directory with the real component classes: tiny AutoencoderKLWan (`vae.kind = "wan"`)
    and tiny umT5; frame-wise (blocks of 1, takes --image) or chunk-wise (blocks of 2, text only)."""
    from ca2vdm_cli.models.wan.spec import WanSampling
    from ca2vdm_cli.store.modeldir import save_model_dir

    n = 1 if frame_wise else 2
    cfg = tiny_wan_config(num_frame_per_block=n)
    fields: dict[str, Any] = dict(
        name="tiny-wan-video",
        family="wan",
        model=cfg,
        sampling=WanSampling(chunk=n, max_frames=16),
        fps=16,
        height=64,
        width=64,
        vae_scaling_factor=1.0,
        vae_downsample=8,
        vae_kind="wan",
        text_max_length=16,
        tokenizer="files",
        text_encoder="umt5",
        text_to_video=True,
        accepts_images=frame_wise,
        description="random tiny causal Wan with the Wan VAE and umT5 classes",
    )
    card = ModelCard(**{**fields, **card_overrides})
    encoder, tokenizer = tiny_umt5_parts(cfg.text_dim)
    model = tiny_wan_model(num_frame_per_block=n)
    return save_model_dir(path, card, model, tiny_wan_video_vae(), encoder, tokenizer)
