"""Text + first image(s) → video frames, chunk by chunk.

`Pipeline.generate` is the whole job as a short sequence of named steps:
  1. check_inputs    frame count, images (resized/converted with notices), sampling settings → CheckedInputs
  2. encode_prompt   tokenizer + T5 → caption (B, N, C_text) and mask; an empty prompt uses the null caption
  3. encode_images   VAE posterior sample of the conditioning frames → prefix latents (1, c, P, h, w)
  4. sample_video    the AR loop (`autoregressive.py`): the KV cache is shared by every denoising step
  5. decode          each finished chunk through the VAE (micro-batched) → uint8 frames, yielded at once
Nothing accumulates across chunks, so memory is bounded for any video length.

`GenerateRequest.frames` is the total number of frames in the output video, the given frame(s) included:
`--frames 49 --image a.png` yields 1 given + 48 generated frames. Each `FrameChunk` carries the latents
of its new frames, which is what `GenerateRequest.replay` takes to resume an interrupted render: replayed
chunks are written to the cache exactly as the first time and decoded again (`FrameChunk.replayed`), so
the consumer receives the whole video once, whatever the point it resumed from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ca2vdm_cli.engine.loop import ENGINES, chunk_lengths, sample_video
from ca2vdm_cli.store.card import ModelCard
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.store.modeldir import Components, load_model_dir
from ca2vdm_cli.media.text import encode_text
from ca2vdm_cli.media.vae import decode_latents, encode_frames
from ca2vdm_cli.media.video import read_image

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = 49  # 1 given frame + 6 chunks of 8: the spec's SkyTimelapse sampling length
SAMPLING_FIELDS = ("steps", "sampler", "cfg_scale", "chunk", "cache_frames", "prefix_perturb_t", "ddim_eta")


@dataclass(frozen=True)
class GenerateRequest:
    """One video to generate. Sampling fields left as None take the model card's defaults."""

    prompt: str = ""
    images: tuple[Path, ...] = ()  # conditioning frames, in order; empty = text-to-video (if the model can)
    frames: int = DEFAULT_FRAMES  # total output frames, including the given image(s)
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    chunk: int | None = None
    cache_frames: int | None = None
    prefix_perturb_t: int | None = None
    ddim_eta: float | None = None
    engine: str = "cache"
    replay: tuple[Tensor, ...] = ()  # latents of chunks already rendered (resume): re-cached and re-decoded
    decode_batch: int = 16  # frames per VAE decode call

    def sampling_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}


@dataclass
class FrameChunk:
    """Frames ready to be written. The first chunk of a fresh render starts with the given frame(s)."""

    index: int  # AR step that produced the new frames (0-based; -1: the given frames alone)
    frames: np.ndarray  # (T, H, W, 3) uint8
    latents: Tensor  # (1, c, l, h, w) float32 on the CPU: the new frames only (what `replay` takes)
    start: int  # position of frames[0] in the output video
    num_given: int = 0  # leading conditioning frames in `frames`
    replayed: bool = False  # decoded from `GenerateRequest.replay`, not generated in this call


@dataclass(frozen=True)
class ProgressEvent:
    """`stage` is "denoise" after each denoising step, and "chunk" once the consumer has taken a chunk (the
    generator resumes only after the caller is done with it, e.g. has written it to the video)."""

    stage: str
    chunk: int  # 0-based AR step
    num_chunks: int
    step: int  # denoising steps finished in this chunk
    num_steps: int
    chunk_frames: int  # new frames in this chunk
    frames_done: int  # output frames handed to the caller so far (the given frames count)
    frames_total: int


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class CheckedInputs:
    """A validated request: effective sampling settings, the prepared image pixels and what was adjusted."""

    sampling: SamplingConfig
    images: np.ndarray | None  # (P, H, W, 3) uint8, already at the model's resolution
    chunks: list[int]  # new frames per AR step (replayed chunks included)
    notices: list[str] = field(default_factory=list)

    @property
    def num_given(self) -> int:
        return 0 if self.images is None else len(self.images)


def sampling_config(card: ModelCard, request: GenerateRequest) -> SamplingConfig:
    """The card's sampling defaults with the request's overrides; ConfigError names the first bad value."""
    config = card.sampling.replace(**request.sampling_overrides())
    config.validate(card.model)
    return config


def check_inputs(card: ModelCard, request: GenerateRequest) -> CheckedInputs:
    """Validate a request against a model card (no weights needed) and load the conditioning images.
    InputError/ConfigError name the value and the fix; harmless adjustments become notices."""
    if request.frames < 1:
        raise InputError(
            f"--frames {request.frames}: a video needs at least 1 frame (the count includes --image)"
        )
    if not 0 <= request.seed < 2**63:
        raise InputError(f"--seed {request.seed} must be in 0..2^63-1")
    if request.engine not in ENGINES:
        raise ConfigError(f"engine {request.engine!r} is not one of {ENGINES}")
    sampling = sampling_config(card, request)
    notices: list[str] = []
    num_given = len(request.images)
    if num_given == 0 and not card.text_to_video:
        raise InputError(
            f"model {card.name!r} cannot start from text alone; pass a first frame with --image PATH"
        )
    if request.frames < num_given:
        raise InputError(
            f"--frames {request.frames} is fewer than the {num_given} given images; --frames counts the "
            f"given frames too, so use --frames {num_given} or more"
        )
    limit = card.model.max_tpe_len
    if card.model.tpe_mode == "fixed" and request.engine == "cache" and request.frames > limit:
        raise InputError(
            f"--frames {request.frames}: model {card.name!r} has fixed temporal positions and can make at "
            f"most {limit} frames"
        )
    if request.prompt and not card.model.has_text:
        notices.append(f"model {card.name!r} is not text-conditioned: the prompt is ignored")
    elif not request.prompt and card.model.has_text:
        notices.append("no prompt given: generating with the null caption (unconditional)")
    images = None
    if num_given:
        pixels = []
        for path in request.images:
            image, image_notices = read_image(path, card.width, card.height)
            pixels.append(image)
            notices.extend(image_notices)
        images = np.stack(pixels)  # (P, H, W, 3)
    new_frames = request.frames - num_given
    chunks = chunk_lengths(new_frames, sampling.chunk) if new_frames else []
    if len(request.replay) > len(chunks):
        raise InputError(
            f"{len(request.replay)} chunks to resume from, but this request has only {len(chunks)} chunks"
        )
    c, (h, w) = card.model.in_channels, card.model.latent_size
    for k, z in enumerate(request.replay):
        if tuple(z.shape) != (1, c, chunks[k], h, w):
            needed = (1, c, chunks[k], h, w)
            raise InputError(
                f"resumed chunk {k} has shape {tuple(z.shape)} but this request needs {needed} "
                "(different --chunk, --frames or model?)"
            )
    return CheckedInputs(sampling, images, chunks, notices)


def estimate_cache_bytes(config: ModelConfig, rows: int, cache_frames: int, dtype: torch.dtype) -> int:
    """KV-cache size without allocating it: D·rows·L·S·2C (temporal K|V) + D·rows·N·S·2C (PE context),
    times the element size. Equals `KVCache.nbytes` (spec §3.1; tested)."""
    per_frame = config.depth * rows * config.tokens_per_frame * 2 * config.hidden_size
    pe = config.pe_frames if config.has_pe else 0
    return per_frame * (cache_frames + pe) * torch.empty((), dtype=dtype).element_size()


def module_bytes(module: Any) -> int:
    """Bytes held by a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class Pipeline:
    """Runs requests on loaded components (`modeldir.Components`); one model load serves many requests."""

    def __init__(self, components: Components, *, free_text_encoder: bool = False) -> None:
        """`free_text_encoder`: drop the text encoder after the first prompt is encoded (one-shot runs on a
        device too small to hold it next to the transformer)."""
        self.components = components
        self.free_text_encoder = free_text_encoder
        self.card: ModelCard = components.card
        self.model = components.model
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @classmethod
    def from_model_dir(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Pipeline:
        return cls(load_model_dir(path, device, dtype))

    def weight_bytes(self) -> dict[str, int]:
        c = self.components
        return {
            "transformer": module_bytes(c.model),
            "vae": module_bytes(c.vae),
            "text_encoder": module_bytes(c.text_encoder),
        }

    def cache_bytes(self, sampling: SamplingConfig, batch: int = 1) -> int:
        rows = 2 * batch if sampling.cfg_scale != 1.0 else batch
        return estimate_cache_bytes(self.card.model, rows, sampling.cache_frames, self.dtype)

    # ------------------------------------------------------------------ steps
    def encode_prompt(self, prompt: str) -> tuple[Tensor | None, Tensor | None]:
        """Caption (1, N, C_text) and mask (1, N); (None, None) means the null caption / no text."""
        c = self.components
        if not self.card.model.has_text or not prompt:
            return None, None
        tokens = len(c.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if tokens > self.card.text_max_length:
            logger.warning(
                "the prompt is %d tokens; only the first %d are used", tokens, self.card.text_max_length
            )
        if c.text_encoder is None:
            raise RuntimeError("the text encoder was freed after the first prompt (free_text_encoder=True)")
        encoded = encode_text(
            c.tokenizer, c.text_encoder, [prompt], self.card.text_max_length, device=self.device
        )
        if self.free_text_encoder:
            c.text_encoder = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return encoded

    def encode_images(self, images: np.ndarray, seed: int) -> Tensor:
        """uint8 (P, H, W, 3) → scaled latents (1, c, P, h, w), a seeded posterior sample (spec §4.1)."""
        frames = torch.from_numpy(images)[None]  # (1, P, H, W, 3)
        return encode_frames(self.components.vae, frames, self.card.vae_scaling_factor, seeds=[seed])

    def decode(self, latents: Tensor, micro_batch: int = 16) -> np.ndarray:
        """Latents (1, c, T, h, w) → uint8 frames (T, H, W, 3)."""
        frames = decode_latents(self.components.vae, latents, self.card.vae_scaling_factor, micro_batch)
        return frames[0].numpy()

    # ------------------------------------------------------------------ the job
    def generate(
        self,
        request: GenerateRequest,
        on_progress: ProgressCallback | None = None,
        *,
        inputs: CheckedInputs | None = None,
    ) -> Iterator[FrameChunk]:
        """Yield the video's frames chunk by chunk. `inputs` (from `check_inputs`) skips re-validation."""
        if inputs is None:
            inputs = check_inputs(self.card, request)
            for notice in inputs.notices:
                logger.info("%s", notice)
        sampling, chunks, num_given = inputs.sampling, inputs.chunks, inputs.num_given
        y, y_mask = self.encode_prompt(request.prompt)
        prefix = self.encode_images(inputs.images, request.seed) if inputs.images is not None else None
        replayed = len(request.replay)
        empty = torch.zeros(1, self.card.model.in_channels, 0, *self.card.model.latent_size)
        if not chunks:  # the given frames are the whole video
            assert prefix is not None
            yield FrameChunk(-1, self.decode(prefix, request.decode_batch), empty, 0, num_given)
            return

        def chunk(k: int, z: Tensor, start: int, replay: bool) -> FrameChunk:
            """Chunk k's frames (z (1, c, l, h, w)); the first one starts with the given frames."""
            with_prefix = prefix is not None and k == 0
            latents = torch.cat([prefix, z], dim=2) if with_prefix else z
            frames = self.decode(latents, request.decode_batch)
            return FrameChunk(k, frames, z.float().cpu(), start, num_given if with_prefix else 0, replay)

        def event(stage: str, k: int, step: int, done: int) -> None:
            if on_progress is not None:
                on_progress(
                    ProgressEvent(
                        stage, k, len(chunks), step, sampling.steps, chunks[k], done, request.frames
                    )
                )

        def start_of(k: int) -> int:  # position in the video of chunk k's first frame
            return 0 if k == 0 else num_given + sum(chunks[:k])

        # Resumed chunks first: decoded again (no progress events), so the output holds every frame once.
        for k, z in enumerate(request.replay):
            yield chunk(k, z, start_of(k), True)
        frames_done = num_given + sum(chunks[:replayed])
        stream = sample_video(
            self.model,
            sampling,
            num_frames=sum(chunks),
            seeds=[request.seed],
            prefix=prefix,
            y=y,
            y_mask=y_mask,
            engine=request.engine,
            replay=request.replay,
            on_step=lambda k, n, _: event("denoise", k, n, frames_done),
        )
        for k, z in enumerate(stream, start=replayed):  # z (1, c, l, h, w)
            yield chunk(k, z, start_of(k), False)
            frames_done += chunks[k]
            event("chunk", k, sampling.steps, frames_done)  # the consumer has taken (written) the chunk
