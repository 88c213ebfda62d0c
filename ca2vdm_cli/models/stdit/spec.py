"""The CausalSTDiT family as a model card sees it, in pure Python (no torch): its config and sampling
classes, the checks a card and a request need before anything loads, and the memory of a run."""

from __future__ import annotations

from typing import Any

from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.models.stdit.sizes import (
    count_buffers,
    count_parameters,
    kv_cache_bytes,
    tempcache_meta_bytes,
)

CONFIG = ModelConfig
SAMPLING = SamplingConfig
ENGINES = ("cache", "recompute", "recompute-full")
WHOLE_BLOCKS = False  # the last AR step may be shorter than --chunk
PROMPT_SWITCHES = False  # no prompt timeline: the cached frames keep the prompt they were made under


def model_rows(sampling: SamplingConfig, batch: int) -> int:
    """Rows the model runs for `batch` videos: [uncond; cond] under classifier-free guidance."""
    return 2 * batch if sampling.cfg_scale != 1.0 else batch


def check_card(card: Any) -> None:
    """The pixel size maps onto the model's latent, the caption length matches, sampling is valid."""
    m: ModelConfig = card.model
    lat = (card.height // card.vae_downsample, card.width // card.vae_downsample)
    if lat != tuple(m.latent_size) or card.height % card.vae_downsample:
        raise ConfigError(
            f"card {card.name!r}: {card.height}x{card.width} pixels with VAE factor {card.vae_downsample} "
            f"gives latents {lat}, but the model expects {tuple(m.latent_size)}"
        )
    if m.has_text and card.text_max_length != m.model_max_length:
        raise ConfigError(
            f"card {card.name!r}: text_max_length {card.text_max_length} != model_max_length "
            f"{m.model_max_length}"
        )
    card.sampling.validate(m)


def check_frames(card: Any, sampling: SamplingConfig, given: int, latent_frames: int, engine: str) -> None:
    """A model with fixed temporal positions cannot go past its table with the cache."""
    m: ModelConfig = card.model
    if m.tpe_mode == "fixed" and engine == "cache" and latent_frames > m.max_tpe_len:
        raise InputError(
            f"--frames {latent_frames}: model {card.name!r} has fixed temporal positions and can make at "
            f"most {m.max_tpe_len} frames"
        )


def cache_bytes(
    model: ModelConfig, sampling: SamplingConfig, rows: int, latent_hw: tuple[int, int], b: int
) -> int:
    """Bytes of the KV-cache queue for `rows` model rows (with TempCache: plus its counts)."""
    queue = kv_cache_bytes(model, rows, sampling.cache_frames, b)
    if sampling.attention.kv_compress == "tempcache":
        queue += tempcache_meta_bytes(model, rows, sampling.cache_frames, b)
    return queue


def memory_parts(
    model: ModelConfig, sampling: SamplingConfig, rows: int, latent_hw: tuple[int, int], b: int
) -> dict[str, int]:
    """Transformer weights, KV cache and a rough activation peak (one chunk's forward) in bytes."""
    tokens = rows * sampling.chunk * model.tokens_per_frame
    act = tokens * (int(model.hidden_size * model.mlp_ratio) + 6 * model.hidden_size) * b
    act += rows * model.out_channels * sampling.chunk * latent_hw[0] * latent_hw[1] * 4  # fp32 prediction
    return {
        "transformer": (count_parameters(model) + count_buffers(model)) * b,
        "kv_cache": cache_bytes(model, sampling, rows, latent_hw, b),
        "activations": act,
    }


CACHE_KNOB = "lower --cache-frames or --chunk"


def cache_summary(sampling: SamplingConfig, rows: int) -> str:
    """How the cache is laid out, for the plan line."""
    opts = sampling.attention
    extra = "" if opts.dense else f", attention {opts.to_dict()}"
    return f"{sampling.cache_frames} frames{extra} x {rows} rows"


def caption_shape(model: ModelConfig) -> tuple[int, int]:
    """(tokens, channels) of the encoded caption the model takes."""
    return (model.model_max_length, model.caption_channels)


def param_count(model: ModelConfig) -> int:
    """Parameters of the architecture (no weights needed)."""
    return count_parameters(model)
