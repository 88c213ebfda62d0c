"""The CausalSTDiT family as the engine sees it: how to turn a model, its sampling settings and a caption
into a denoiser, a sampler and guidance for the shared AR loop (`engine.loop.sample_chunks`).

`sample_video` is the whole latent-space generation for this family; the pipeline adds text encoding,
the VAE and video frames around it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import Tensor

from ca2vdm_cli.engine.loop import StepCallback, chunk_lengths, sample_chunks
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import CacheDenoiser, ForwardFn, RecomputeDenoiser, StepFn
from ca2vdm_cli.models.stdit.denoisers import make_denoiser as _make_denoiser
from ca2vdm_cli.models.stdit.flops import RunFlops
from ca2vdm_cli.models.stdit.flops import run_flops as _run_flops
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.models.stdit.spec import (
    ENGINES,
    WHOLE_BLOCKS,
    cache_bytes,
    caption_shape,
    check_card,
    check_frames,
    memory_parts,
    model_rows,
)
from ca2vdm_cli.sampling.ddpm import DDPMSampler
from ca2vdm_cli.sampling.guidance import guide

__all__ = [
    "ENGINES",
    "WHOLE_BLOCKS",
    "build_model",
    "cache_bytes",
    "caption_shape",
    "check_card",
    "check_frames",
    "make_denoiser",
    "memory_parts",
    "model_rows",
    "run_flops",
    "sample_video",
]

Engine = str | CacheDenoiser | RecomputeDenoiser


def build_model(config: ModelConfig) -> CausalSTDiT:
    """The family's transformer for `config` (on the current default device, e.g. meta)."""
    return CausalSTDiT(config)


def run_flops(
    model: ModelConfig,
    engine: str,
    *,
    rows: int,
    prefix_frames: int,
    chunks: list[int],
    sampling: SamplingConfig,
    latent_size: tuple[int, int] | None = None,
) -> RunFlops:
    """Analytic FLOPs of one run (`flops.run_flops`) with this run's queue."""
    return _run_flops(
        model,
        engine,
        rows=rows,
        prefix_frames=prefix_frames,
        chunks=chunks,
        steps=sampling.steps,
        cache_frames=sampling.cache_frames,
    )


def make_denoiser(
    name: str,
    model: CausalSTDiT,
    rows: int,
    sampling: SamplingConfig,
    latent_size: tuple[int, int] | None = None,
    *,
    step: StepFn | None = None,
    forward: ForwardFn | None = None,
) -> CacheDenoiser | RecomputeDenoiser:
    """A denoiser by engine name for `rows` model rows, sized by the sampling settings (cache frames,
    chunk); `step` / `forward` are the accelerated step (`engine.accel`)."""
    return _make_denoiser(
        name,
        model,
        rows,
        sampling.cache_frames,
        chunk_frames=sampling.chunk,
        step=step,
        forward=forward,
        write_t=prefix_write_t(sampling),
        attention=sampling.attention,
    )


def prefix_write_t(sampling: SamplingConfig) -> int:
    """The timestep the written (cached) frames run at: 0, or the cache's perturbation level when the card
    says `prefix_timestep = "perturb"` (a model trained with noise-augmented context)."""
    return sampling.prefix_perturb_t if sampling.prefix_timestep == "perturb" else 0


@torch.inference_mode()
def sample_video(
    model: CausalSTDiT,
    config: SamplingConfig,
    *,
    num_frames: int,
    seeds: Sequence[int],
    prefix: Tensor | None = None,
    y: Tensor | None = None,
    y_mask: Tensor | None = None,
    engine: Engine = "cache",
    replay: Sequence[Tensor] = (),
    on_step: StepCallback | None = None,
    latent_size: tuple[int, int] | None = None,
) -> Iterator[Tensor]:
    """Generate `num_frames` new latent frames after `prefix` (B, c, P, H, W), yielding each chunk
    (B, c, l, H, W) in float32 as soon as it is denoised.

    `y` (B, N, C_text) / `y_mask` (B, N) is the caption (None: unconditional / null caption). `replay`
    holds chunks generated earlier (a resumed render). One seed per sample. `engine` is a name from
    `ENGINES` or a denoiser made by `make_denoiser` with `model_rows` rows (to inspect its cache, or to
    run an accelerated step)."""
    cfg = model.config
    config.validate(cfg)
    if latent_size is not None and tuple(latent_size) != tuple(cfg.latent_size):
        raise ConfigError(f"latent frames {tuple(latent_size)} != the model's {tuple(cfg.latent_size)}")
    B = len(seeds)
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames}: at least one new frame must be generated")
    device = next(model.parameters()).device
    num_prefix = 0 if prefix is None else prefix.shape[2]
    if cfg.tpe_mode == "fixed" and num_prefix + num_frames > cfg.max_tpe_len and engine == "cache":
        raise ConfigError(
            f"this model has fixed temporal positions and can generate at most {cfg.max_tpe_len} frames "
            f"with the cache; {num_prefix + num_frames} were asked for"
        )
    use_cfg = config.cfg_scale != 1.0
    rows = model_rows(config, B)
    y_rows, mask_rows = caption_rows(model, y, y_mask, B, use_cfg, device)
    text = model.prepare_text(y_rows, mask_rows, rows)  # once per generation, its mask inside
    denoiser = make_denoiser(engine, model, rows, config) if isinstance(engine, str) else engine
    return sample_chunks(
        denoiser,
        DDPMSampler.from_config(config),
        lengths=chunk_lengths(num_frames, config.chunk),
        latent_shape=(cfg.in_channels, *cfg.latent_size),
        seeds=seeds,
        device=device,
        condition=text,
        prefix=prefix,
        guidance=partial(guide, scale=config.cfg_scale, channels=cfg.in_channels) if use_cfg else None,
        replay=replay,
        on_step=on_step,
    )


def caption_rows(
    model: CausalSTDiT, y: Tensor | None, y_mask: Tensor | None, B: int, use_cfg: bool, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Caption rows for the model batch: [null; cond] with CFG (the null caption keeps the cond mask)."""
    if not model.config.has_text:
        if y is not None:
            raise ConfigError("this model has no text conditioning; do not pass a caption")
        return None, None
    if y is None:
        y = model.null_caption(B)
    y = y.to(device)
    mask = None if y_mask is None else y_mask.to(device)
    if not use_cfg:
        return y, mask
    null = model.null_caption(B).to(device, y.dtype)
    return torch.cat([null, y]), None if mask is None else torch.cat([mask, mask])
