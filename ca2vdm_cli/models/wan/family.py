"""The causal Wan2.1 family as the engine sees it: a `Denoiser` over `CausalWan`'s rolling + sink cache (or
a no-cache baseline), the few-step flow-matching `Sampler`, and `sample_video` over the shared AR loop
(`engine.loop.sample_chunks`) — the same loop that runs CausalSTDiT.

Blocks are `num_frame_per_block` latent frames; each is denoised in a few flow steps against the cached
past, then written once at t = 0. There is no classifier-free guidance (the released models are
distilled without it) and no perturbation of the written frames (they are the clean x0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.engine.loop import StepCallback, chunk_lengths, sample_chunks
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.costs import RunFlops
from ca2vdm_cli.models.wan import flops
from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.model import CausalWan
from ca2vdm_cli.models.wan.spec import (
    ENGINES,
    WHOLE_BLOCKS,
    WanSampling,
    cache_bytes,
    caption_shape,
    check_card,
    check_frames,
    memory_parts,
    model_rows,
)
from ca2vdm_cli.sampling.flow import FlowSchedule, flow_to_x0, renoise

__all__ = [
    "ENGINES",
    "WHOLE_BLOCKS",
    "FlowSampler",
    "WanSampling",
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
    "schedule",
]


def build_model(config: WanConfig) -> CausalWan:
    """The family's transformer for `config` (on the current default device, e.g. meta)."""
    return CausalWan(config)


def run_flops(
    model: WanConfig,
    engine: str,
    *,
    rows: int,
    prefix_frames: int,
    chunks: list[int],
    sampling: WanSampling,
    latent_size: tuple[int, int],
) -> RunFlops:
    """Analytic FLOPs of one run (`flops.run_flops`) with this run's window."""
    return flops.run_flops(
        model,
        engine,
        rows=rows,
        prefix_frames=prefix_frames,
        chunks=chunks,
        steps=sampling.steps,
        window=sampling.window,
        latent_hw=latent_size,
    )


def schedule(config: WanSampling) -> FlowSchedule:
    """The card's few-step list as the sampler's schedule."""
    return FlowSchedule(steps=tuple(config.timesteps), shift=config.shift, warp=config.warp)


class FlowSampler:
    """The loop's `Sampler` for flow matching: x0 = x_t − σ·v after every step, re-noised to the next σ
    with fresh noise; the last step returns x0."""

    perturbs = False

    def __init__(self, schedule: FlowSchedule) -> None:
        self.schedule = schedule
        self._t = schedule.timesteps()
        self._sigma = [torch.tensor(s) for s in schedule.sigmas()]  # 0-d, made once (not per step)
        self.num_steps = len(self._t)
        self.stochastic = self.num_steps > 1

    def timesteps(self) -> list[float]:
        return self._t

    def step(self, out: Tensor, x: Tensor, n: int, noise: Tensor | None) -> Tensor:
        x0 = flow_to_x0(x, out, self._sigma[n])  # (B, C, F, H, W)
        if n + 1 == self.num_steps:
            return x0
        assert noise is not None
        return renoise(x0, noise, self._sigma[n + 1])

    def perturb(self, clean: Tensor, noise: Tensor) -> Tensor:
        raise NotImplementedError("the causal Wan family writes clean blocks")


class WanCacheDenoiser:
    """Clean blocks enter the rolling + sink KV cache once (`write_cache` at t = 0); every flow step of the
    next block only reads it. The prompt's cross K/V are computed once per video."""

    def __init__(
        self,
        model: CausalWan,
        rows: int,
        sampling: WanSampling,
        frame_shape: tuple[int, int],
        step: Callable[..., Tensor] | None = None,
    ) -> None:
        self.model = model
        self.step = step or model.denoise  # `engine.accel`: the compiled denoise call with --compile
        self.cache = model.new_cache(
            batch_size=rows,
            max_frames=sampling.max_frames,
            frame_shape=frame_shape,
            position_mode=sampling.position_mode,
            local_attn_size=sampling.window,
            sink_size=sampling.sink_frames,
            attention=sampling.attention,
        )
        self.context: Tensor | None = None
        self.history: list[tuple[int, Tensor]] = []  # (first frame, clean latents) a switch may re-encode

    def reset(self, condition: Tensor | None = None) -> None:
        self.cache.reset()
        self.history = []
        self.context = condition
        if condition is not None:
            self.model.prepare_context(self.cache, condition)

    def write(self, clean: Tensor) -> None:
        start = self.cache.written
        self.model.write_cache(self.cache, clean, self._context(), start)
        self.history.append((start, clean))
        keep_from = self.cache.written - self.cache.past_frames  # older non-sink frames are gone anyway
        sink = self.cache.ring.sink
        self.history = [(f, z) for f, z in self.history if f + z.shape[2] > keep_from or f < sink]

    def switch(self, condition: Tensor) -> None:
        """A new prompt from the next block on (LongLive's KV re-cache): the prompt's cross K/V are
        replaced, then the newest past frames are written again at t = 0 under the new prompt, at their
        absolute positions, block by block as they were first written, against the sinks (which keep the
        first prompt's K/V). A block only partly inside the window is rewritten whole (its older frames are
        evicted again by the writes after it). When the rewrite would reach into the sinks (a switch early
        in the video) everything is rewritten, sinks included."""
        cache = self.cache
        self.context = condition
        self.model.prepare_context(cache, condition)
        sink = cache.ring.sink
        needed = cache.written - (cache.past_frames - sink)  # the oldest non-sink frame still held
        starts = [f for f, _ in self.history]
        first = max((i for i, f in enumerate(starts) if f <= needed), default=0)
        if starts[first] < sink or needed <= sink:
            first = 0
        cache.restart(starts[first])  # drops TempCache groups and AnnSA indexes of the forgotten frames
        for f, z in self.history[first:]:
            self.model.write_cache(cache, z, condition, f)

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        return self.step(self.cache, x, t, self._context(), self.cache.written)

    def _context(self) -> Tensor:
        if self.context is None:
            raise ConfigError("a causal Wan model needs a prompt context; reset(condition=...) first")
        return self.context


class WanRecomputeDenoiser:
    """The no-cache baseline: every flow step re-runs every clean block seen so far (through a scratch
    cache, so windows and sinks apply exactly as in the cached path) before predicting."""

    def __init__(
        self, model: CausalWan, rows: int, sampling: WanSampling, frame_shape: tuple[int, int]
    ) -> None:
        self.inner = WanCacheDenoiser(model, rows, sampling, frame_shape)
        self.blocks: list[Tensor] = []

    def reset(self, condition: Tensor | None = None) -> None:
        self.inner.reset(condition)
        self.blocks = []

    def write(self, clean: Tensor) -> None:
        self.blocks.append(clean)

    def switch(self, condition: Tensor) -> None:
        raise ConfigError(
            "prompt switches run with the cache engine (the no-cache baseline replays one prompt)"
        )

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        self.inner.cache.ring.reset()  # forget the past; the prompt's cross K/V stay (they never change)
        for block in self.blocks:
            self.inner.write(block)
        return self.inner.predict(x, t)


def make_denoiser(
    name: str,
    model: CausalWan,
    rows: int,
    sampling: WanSampling,
    latent_size: tuple[int, int],
    step: Callable[..., Tensor] | None = None,
    **_: Any,
) -> WanCacheDenoiser | WanRecomputeDenoiser:
    """A denoiser by engine name (`ENGINES`) for `rows` videos of latent frames `latent_size`; `step` is
    the (compiled) denoise call of `engine.accel`. Other keywords (CausalSTDiT's full forward) are unused."""
    if name == "cache":
        return WanCacheDenoiser(model, rows, sampling, latent_size, step)
    if name == "recompute":
        return WanRecomputeDenoiser(model, rows, sampling, latent_size)
    raise ConfigError(f"engine {name!r} is not one of {', '.join(ENGINES)}")


def sample_video(
    model: CausalWan,
    config: WanSampling,
    *,
    num_frames: int,
    seeds: Sequence[int],
    latent_size: tuple[int, int],
    y: Tensor | None,
    y_mask: Tensor | None = None,
    prefix: Tensor | None = None,
    engine: str | WanCacheDenoiser | WanRecomputeDenoiser = "cache",
    replay: Sequence[Tensor] = (),
    on_step: StepCallback | None = None,
    switches: dict[int, tuple[Tensor, Tensor | None]] | None = None,
) -> Iterator[Tensor]:
    """Generate `num_frames` new latent frames (a multiple of the model's block) after `prefix`
    (B, C, P, H, W), yielding each block (B, C, n, H, W) as soon as it is denoised. `y` (B, L, text_dim) is
    the encoded prompt; rows where `y_mask` (B, L) is 0 are zeroed (the official padding). `switches`
    maps a block index to the encoded prompt (y, y_mask) from that block on (a prompt timeline)."""
    config.validate(model.cfg)
    n = model.cfg.num_frame_per_block
    if num_frames < 1 or num_frames % n:
        up = max(n, -(-num_frames // n) * n)
        raise ConfigError(
            f"num_frames={num_frames}: this model generates blocks of {n} latent frames; use {up}"
        )
    if y is None:
        raise ConfigError("a causal Wan model needs an encoded prompt (y)")
    device = next(model.parameters()).device

    def masked(y: Tensor, y_mask: Tensor | None) -> Tensor:
        context = y.to(device)
        if y_mask is not None:
            context = context * y_mask.to(device, context.dtype)[..., None]  # (B, L, text_dim)
        return context

    context = masked(y, y_mask)
    denoiser = (
        make_denoiser(engine, model, len(seeds), config, latent_size) if isinstance(engine, str) else engine
    )
    return sample_chunks(
        denoiser,
        FlowSampler(schedule(config)),
        lengths=chunk_lengths(num_frames, n),
        latent_shape=(model.cfg.in_dim, *latent_size),
        seeds=seeds,
        device=device,
        condition=context,
        prefix=prefix,
        replay=replay,
        on_step=on_step,
        switches={k: masked(*yk) for k, yk in (switches or {}).items()},
    )
