"""What a render is asked for and what it yields, checked against a model card before any weights load.

`GenerateRequest.frames` is the total number of frames in the output video, the given frame(s) included:
`--frames 49 --image a.png` yields 1 given + 48 generated frames. A request holds no tensors; the latents of
an interrupted render's chunks (`FrameChunk.latents`, saved by `resume.Sidecar`) are passed to the pipeline
beside it. `check_inputs` validates a request once, at the edge: everything after it trusts the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ca2vdm_cli.engine.loop import chunk_lengths
from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.media.video import read_image
from ca2vdm_cli.store.card import ModelCard

DEFAULT_FRAMES = 49  # 1 given frame + 6 chunks of 8: the Ca2-VDM paper's SkyTimelapse sampling length
SAMPLING_FIELDS = (
    "steps",
    "sampler",
    "cfg_scale",
    "chunk",
    "cache_frames",
    "prefix_perturb_t",
    "ddim_eta",
    "window",
    "sink_frames",
    "position_mode",
    "attention",
)


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
    window: int | None = None  # causal Wan: attention window in latent frames (-1 = global)
    sink_frames: int | None = None  # causal Wan: frames pinned at the front of the window
    position_mode: str | None = None  # causal Wan: "absolute" | "relative" RoPE time positions
    attention: Any = None  # causal Wan: `models.attention_opts.AttentionOptions` (TempCache, AnnCA, AnnSA)
    engine: str = "cache"
    decode_batch: int = 16  # frames per VAE decode call
    timeline: tuple[tuple[int, str], ...] = ()  # (video frame, prompt) switches after the first prompt

    def sampling_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}


@dataclass
class FrameChunk:
    """One video's frames, ready to be written. The first chunk of a fresh render starts with the given
    frame(s)."""

    index: int  # AR step that produced the new frames (0-based; -1: the given frames alone)
    frames: np.ndarray | None  # (T, H, W, 3) uint8; None when the pipeline has no VAE (latents only)
    latents: Tensor  # (1, c, l, h, w) float32 on the CPU: the new frames only (what `replay` takes)
    start: int  # position of frames[0] in the output video
    num_given: int = 0  # leading conditioning frames in `frames`
    replayed: bool = False  # decoded from the `replay` chunks, not generated in this call


@dataclass
class BatchChunk:
    """The same chunk of every video of a batch: frames (B, T, H, W, 3) uint8 (None without a VAE) and the
    new frames' latents (B, c, l, h, w) float32 on the CPU."""

    index: int
    frames: np.ndarray | None
    latents: Tensor
    start: int
    num_given: int = 0
    replayed: bool = False

    def video(self, b: int) -> FrameChunk:
        frames = None if self.frames is None else self.frames[b]
        return FrameChunk(
            self.index, frames, self.latents[b : b + 1], self.start, self.num_given, self.replayed
        )


@dataclass(frozen=True)
class ProgressEvent:
    """`stage` is "text" once the prompts are encoded, "images" once the given frames are, "denoise" after
    each denoising step, "denoised" when a chunk's latents are ready (before decoding), and "chunk" once
    the consumer has taken a chunk (the generator resumes only after the caller is done with it, e.g. has
    written it to the video)."""

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

    sampling: Any  # the family's sampling config, with the request's overrides
    images: np.ndarray | None  # (P, H, W, 3) uint8, already at the model's resolution
    chunks: list[int]  # new latent frames per AR step (replayed chunks included)
    notices: list[str] = field(default_factory=list)
    frames: int = 0  # output video frames to keep (the rest of the last block is trimmed)
    switches: list[tuple[int, str]] = field(default_factory=list)  # (AR step, prompt from that step on)

    @property
    def num_given(self) -> int:
        return 0 if self.images is None else len(self.images)


def sampling_config(card: ModelCard, request: GenerateRequest) -> Any:
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
    fam = card.spec
    if request.engine not in fam.ENGINES:
        raise ConfigError(f"engine {request.engine!r} is not one of {', '.join(fam.ENGINES)}")
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
    chunks, note = latent_chunks(card, sampling, request.frames, num_given)
    if note:
        notices.append(note)
    fam.check_frames(card, sampling, num_given, num_given + sum(chunks), request.engine)
    switches = prompt_switches(card, request, num_given, chunks, notices)
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
    return CheckedInputs(sampling, images, chunks, notices, request.frames, switches)


def prompt_switches(
    card: ModelCard, request: GenerateRequest, num_given: int, chunks: list[int], notices: list[str]
) -> list[tuple[int, str]]:
    """AR steps where the prompt changes: a switch at video frame f applies from the first AR step that
    starts at or after f's latent frame (LongLive's rule); a notice says where each one lands."""
    if not request.timeline:
        return []
    if not card.spec.PROMPT_SWITCHES:
        raise InputError(
            f"model {card.name!r} cannot switch prompts mid-video (its cached frames keep their prompt); "
            "pass one --prompt, or use a causal Wan model"
        )
    if request.engine != "cache":
        raise InputError(f"prompt switches run with the cache engine, not {request.engine!r}")
    r = card.frames_per_latent
    given, per_chunk = video_frames(r, num_given, chunks)
    starts = [given + sum(per_chunk[:k]) for k in range(len(chunks))]  # first video frame of each step
    out: list[tuple[int, str]] = []
    previous = 0
    for at, prompt in request.timeline:
        if not previous < at < request.frames:
            raise InputError(
                f"--at {at}: switch frames must increase and lie in 1..{request.frames - 1} (--frames "
                f"{request.frames})"
            )
        previous = at
        k = next((k for k, s in enumerate(starts) if s >= at), None)
        if k is None or k == 0:
            raise InputError(f"--at {at}: no AR step starts at or after frame {at}; move the switch earlier")
        if out and out[-1][0] == k:
            raise InputError(
                f"--at {at}: two switches land on the AR step at frame {starts[k]}; space them out"
            )
        if starts[k] != at:
            notices.append(
                f"--at {at}: the prompt switches at frame {starts[k]}, where the next block starts"
            )
        out.append((k, prompt))
    return out


def latent_chunks(card: ModelCard, sampling: Any, frames: int, num_given: int) -> tuple[list[int], str]:
    """New latent frames per AR step for `frames` output frames after `num_given` given (latent) frames,
    and a notice when the family's whole blocks or the VAE's frame grid round the video up (the output is
    trimmed back to `frames`)."""
    r = card.frames_per_latent
    latent = 1 + -(-(frames - 1) // r) if frames else 0  # video 1 + r·(L − 1) frames ⊇ frames
    new = max(0, latent - num_given)
    if not new:
        return [], ""
    if not card.spec.WHOLE_BLOCKS:
        return chunk_lengths(new, sampling.chunk), ""
    n = sampling.chunk
    blocks = -(-new // n)
    made = 1 + r * (num_given + blocks * n - 1)
    if made == frames:
        return [n] * blocks, ""
    return [n] * blocks, (
        f"--frames {frames}: this model makes whole blocks of {n} latent frames, so {blocks} blocks "
        f"({made} frames) are generated and the video keeps the first {frames}"
    )


def video_frames(frames_per_latent: int, num_given: int, chunks: Sequence[int]) -> tuple[int, list[int]]:
    """Video frames of the given latent frames and of each chunk's new latent frames, before trimming: the
    first latent frame of a video decodes to 1 frame, every later one to `frames_per_latent`."""
    r, out = frames_per_latent, []
    seen = num_given
    given = 1 + r * (num_given - 1) if num_given else 0
    for n in chunks:
        out.append(r * n - (r - 1 if seen == 0 else 0))
        seen += n
    return given, out


def check_replay(card: ModelCard, inputs: CheckedInputs, replay: Sequence[Tensor]) -> None:
    """Saved chunks (1, c, l, h, w) of an interrupted render must match this request's chunks."""
    chunks = inputs.chunks
    if len(replay) > len(chunks):
        raise InputError(
            f"{len(replay)} chunks to resume from, but this request has only {len(chunks)} chunks"
        )
    c, (h, w) = card.latent_channels, card.latent_size
    for k, z in enumerate(replay):
        needed = (1, c, chunks[k], h, w)
        if tuple(z.shape) != needed:
            raise InputError(
                f"resumed chunk {k} has shape {tuple(z.shape)} but this request needs {needed} "
                "(different --chunk, --frames or model?)"
            )
