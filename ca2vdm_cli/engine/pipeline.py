"""Text + first image(s) → video frames, chunk by chunk, for a batch of one or more videos.

`Pipeline.generate_batch` is the whole job as a short sequence of named steps; `generate` (one video),
`batch`, `eval` and `bench` all go through it:
  1. check_inputs    each request against the card (`request.py`) → CheckedInputs (once, at the edge)
  2. encode_prompts  tokenizer + text encoder → caption (B, N, C_text) and mask; "" → the null caption
  3. encode_images   VAE posterior sample of the conditioning frames → prefix latents (B, c, P, h, w)
  4. sample_video    the family's AR loop: one KV cache, shared by every denoising step, written per chunk
  5. decode          each finished chunk through the VAE (micro-batched) → uint8 frames, yielded at once
Nothing accumulates across chunks, so memory is bounded for any video length.

Resumed chunks (`replay`) are written to the cache exactly as the first time and decoded again
(`FrameChunk.replayed`), so the consumer receives the whole video once, whatever the point it resumed
from. The pipeline keeps its denoisers (cache buffers, compiled steps, captured CUDA graphs) across
videos: a batch of renders pays for compilation once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ca2vdm_cli.engine.accel import Acceleration, accelerate
from ca2vdm_cli.engine.request import (
    BatchChunk,
    CheckedInputs,
    FrameChunk,
    GenerateRequest,
    ProgressEvent,
    check_inputs,
    check_replay,
    video_frames,
)
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import pipeline_vae
from ca2vdm_cli.models import family
from ca2vdm_cli.store.card import ModelCard
from ca2vdm_cli.store.modeldir import Components, load_model_dir

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent], None]
EAGER = Acceleration()
CaptionFn = Callable[[list[str]], tuple[Tensor | None, Tensor | None]]


def module_bytes(module: Any) -> int:
    """Bytes held by a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    if not isinstance(module, torch.nn.Module):  # a UMT5TextEncoder holds its model
        module = module.encoder
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class Pipeline:
    """Runs requests on loaded components (`store.modeldir.Components`); one model load serves many."""

    def __init__(
        self,
        components: Components,
        *,
        free_text_encoder: bool = False,
        accel: Acceleration = EAGER,
        encode_caption: CaptionFn | None = None,
    ) -> None:
        """`free_text_encoder`: drop the text encoder after the first prompts are encoded (one-shot runs on a
        device too small to hold it next to the transformer). `accel`: compile / CUDA-graph the denoising
        step (`engine.accel`). `encode_caption` replaces the text encoder (bench runs with random weights)."""
        self.components = components
        self.free_text_encoder = free_text_encoder
        self.card: ModelCard = components.card
        self.model = components.model
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.accel = accel
        self._step, self._forward = accelerate(self.model, accel, self.device)
        self._encode_caption = encode_caption
        self.vae = (
            None
            if components.vae is None
            else pipeline_vae(self.card.vae_kind, components.vae, self.card.vae_scaling_factor)
        )
        self._denoisers: dict[tuple[Any, ...], Any] = {}
        self.family = family(self.card.family)  # the model family's denoisers, loop and sizes

    @classmethod
    def from_model_dir(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        accel: Acceleration = EAGER,
    ) -> Pipeline:
        return cls(load_model_dir(path, device, dtype), accel=accel)

    def weight_bytes(self) -> dict[str, int]:
        c = self.components
        return {
            "transformer": module_bytes(c.model),
            "vae": module_bytes(c.vae),
            "text_encoder": module_bytes(c.text_encoder),
        }

    def cache_bytes(self, sampling: Any, batch: int = 1) -> int:
        """Bytes of the family's KV cache for `batch` videos with these sampling settings."""
        nbytes = torch.empty((), dtype=self.dtype).element_size()
        rows = self.family.model_rows(sampling, batch)
        return self.family.cache_bytes(self.card.model, sampling, rows, self.card.latent_size, nbytes)

    def denoiser(self, engine: str, sampling: Any, batch: int) -> Any:
        """The pipeline's denoiser for `engine` at this batch and these cache settings, made once and kept."""
        rows = self.family.model_rows(sampling, batch)
        key = (engine, rows, sampling)
        if key not in self._denoisers:
            self._denoisers[key] = self.family.make_denoiser(
                engine,
                self.model,
                rows,
                sampling,
                self.card.latent_size,
                step=self._step,
                forward=self._forward,
            )
        return self._denoisers[key]

    # ------------------------------------------------------------------ steps
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor | None, Tensor | None]:
        """Captions (B, N, C_text) and masks (B, N); (None, None) means the null caption / no text. An
        empty prompt in a batch with others gets the null caption."""
        null = getattr(self.model, "null_caption", None)  # a learned null caption (CausalSTDiT)
        if not self.card.model.has_text or (null is not None and not any(prompts)):
            return None, None
        if self._encode_caption is not None:
            return self._encode_caption(prompts)
        c = self.components
        for prompt in prompts:
            tokens = len(c.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if tokens > self.card.text_max_length:
                logger.warning(
                    "the prompt is %d tokens; only the first %d are used", tokens, self.card.text_max_length
                )
        if c.text_encoder is None:
            raise RuntimeError("the text encoder was freed after the first prompt (free_text_encoder=True)")
        if self.card.text_encoder == "umt5":  # Wan's cleaning, padding rows zeroed
            y, lengths = c.text_encoder.encode(prompts, device=self.device, dtype=torch.float32)
            mask = (torch.arange(y.shape[1], device=y.device) < lengths[:, None].to(y.device)).long()
        else:
            y, mask = encode_text(
                c.tokenizer, c.text_encoder, prompts, self.card.text_max_length, self.device
            )
        if null is not None and not all(prompts):  # the null caption for empty prompts, with a full mask
            empty = torch.tensor([not p for p in prompts], device=y.device)
            null_rows = null(len(prompts)).to(y.device, y.dtype)
            y = torch.where(empty[:, None, None], null_rows, y)
            mask = torch.where(empty[:, None], torch.ones_like(mask), mask)
        if self.free_text_encoder:
            c.text_encoder = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return y, mask

    def encode_images(self, images: np.ndarray, seeds: Sequence[int]) -> Tensor:
        """uint8 (B, P, H, W, 3) → scaled latents (B, c, P, h, w), a seeded posterior sample per video."""
        if self.vae is None:
            raise ConfigError("this pipeline has no VAE, so it cannot encode images; pass prefix latents")
        return self.vae.encode(torch.from_numpy(images), seeds=list(seeds))  # images (B, P, H, W, 3)

    def decode(self, latents: Tensor, micro_batch: int = 16) -> np.ndarray | None:
        """A whole clip's latents (B, c, T, h, w) → uint8 frames (B, T', H, W, 3); None without a VAE."""
        if self.vae is None:
            return None
        return self.vae.stream().decode(latents, micro_batch).numpy()

    # ------------------------------------------------------------------ the job
    def generate(
        self,
        request: GenerateRequest,
        on_progress: ProgressCallback | None = None,
        *,
        inputs: CheckedInputs | None = None,
        replay: Sequence[Tensor] = (),
    ) -> Iterator[FrameChunk]:
        """Yield one video's frames chunk by chunk. `inputs` (from `check_inputs`) skips re-validation;
        `replay` holds the latents (1, c, l, h, w) of chunks an interrupted render already made."""
        chunks = self.generate_batch(
            [request],
            on_progress,
            inputs=None if inputs is None else [inputs],
            replay=[list(replay)] if replay else None,
        )
        for chunk in chunks:
            yield chunk.video(0)

    def generate_batch(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: ProgressCallback | None = None,
        *,
        inputs: Sequence[CheckedInputs] | None = None,
        replay: Sequence[Sequence[Tensor]] | None = None,
        prefix: Tensor | None = None,
        denoiser: Any = None,
        decode: bool = True,
    ) -> Iterator[BatchChunk]:
        """Yield the chunks of a batch of videos that share their length, sampling settings and number of
        given frames (each has its own prompt, images and seed). `prefix` (B, c, P, h, w) gives the
        conditioning frames as latents instead of images; `denoiser` replaces the pipeline's own (the
        bench's baselines); `decode=False` yields latents only."""
        if inputs is None:
            inputs = [check_inputs(self.card, r) for r in requests]
            for notice in {n for i in inputs for n in i.notices}:
                logger.info("%s", notice)
        first, request = inputs[0], requests[0]
        for other in inputs[1:]:
            if (other.sampling, other.chunks, other.num_given) != (
                first.sampling,
                first.chunks,
                first.num_given,
            ):
                raise ConfigError("a batch needs the same frames, sampling settings and number of images")
        sampling, chunks = first.sampling, first.chunks
        seeds = [r.seed for r in requests]
        saved = [torch.cat(list(parts), dim=0) for parts in zip(*replay, strict=True)] if replay else []
        if replay:
            for checked, parts in zip(inputs, replay, strict=True):
                check_replay(self.card, checked, parts)
        keep = first.frames or request.frames  # output frames; the rest of a whole last block is trimmed
        r = self.vae.frames_per_latent if self.vae is not None else self.card.frames_per_latent
        num_given = prefix.shape[2] if prefix is not None else first.num_given  # latent frames
        given_frames, chunk_frames = video_frames(r, num_given, chunks)
        emit = _Emitter(on_progress, chunks, sampling.steps, keep, chunk_frames)

        y, y_mask = self.encode_prompts([r.prompt for r in requests])
        extra: dict[str, Any] = {}
        if first.switches:  # a prompt timeline: each switch's prompts, encoded once (B, N, C)
            steps = [k for k, _ in first.switches]
            if any([k for k, _ in other.switches] != steps for other in inputs[1:]):
                raise ConfigError("a batch needs the same prompt-switch frames in every video")
            extra["switches"] = {
                k: self.encode_prompts([i.switches[j][1] for i in inputs]) for j, k in enumerate(steps)
            }
        emit("text", 0, 0, 0)
        if prefix is None and first.images is not None:
            prefix = self.encode_images(np.stack([i.images for i in inputs]), seeds)
        emit("images", 0, 0, 0)
        micro = request.decode_batch
        vae_stream = self.vae.stream() if decode and self.vae is not None else None  # fed in chunk order

        def piece(k: int, z: Tensor, start: int, replayed: bool) -> BatchChunk:
            """Chunk k (z (B, c, l, h, w)); the first one starts with the given frames."""
            with_prefix = prefix is not None and k <= 0
            latents = z if not with_prefix else (prefix if k < 0 else torch.cat([prefix, z], dim=2))
            frames = None if vae_stream is None else vae_stream.decode(latents, micro).numpy()
            if frames is not None and start + frames.shape[1] > keep:
                frames = frames[:, : max(0, keep - start)]
            given = given_frames if with_prefix else 0
            return BatchChunk(k, frames, z.float().cpu(), start, given, replayed)

        if not chunks:  # the given frames are the whole video
            assert prefix is not None
            empty = torch.zeros(len(requests), self.card.latent_channels, 0, *self.card.latent_size)
            yield piece(-1, empty, 0, False)
            return
        starts = [0] + [given_frames + sum(chunk_frames[:k]) for k in range(1, len(chunks))]
        for k, z in enumerate(saved):  # decoded again (no progress events): the output holds every frame once
            yield piece(k, z, starts[k], True)
        done = min(keep, given_frames + sum(chunk_frames[: len(saved)]))
        stream = self.family.sample_video(
            self.model,
            sampling,
            num_frames=sum(chunks),
            seeds=seeds,
            prefix=prefix,
            y=y,
            y_mask=y_mask,
            engine=denoiser
            if denoiser is not None
            else self.denoiser(request.engine, sampling, len(requests)),
            replay=saved,
            on_step=lambda k, n, _: emit("denoise", k, n, done),
            latent_size=self.card.latent_size,
            **extra,
        )
        for k, z in enumerate(stream, start=len(saved)):  # z (B, c, l, h, w)
            emit("denoised", k, sampling.steps, done)
            yield piece(k, z, starts[k], False)
            done = min(done + chunk_frames[k], keep)
            emit("chunk", k, sampling.steps, done)  # the consumer has taken (written) the chunk


class _Emitter:
    """ProgressEvents for one batch (a no-op without a callback)."""

    def __init__(
        self, callback: ProgressCallback | None, chunks: list[int], steps: int, total: int, frames: list[int]
    ) -> None:
        self.callback, self.chunks, self.steps, self.total = callback, chunks, steps, total
        self.frames = frames  # new video frames of each chunk

    def __call__(self, stage: str, k: int, step: int, done: int) -> None:
        if self.callback is not None:
            n = self.frames[k] if self.frames else 0
            self.callback(ProgressEvent(stage, k, len(self.chunks), step, self.steps, n, done, self.total))
