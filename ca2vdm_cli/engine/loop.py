"""The autoregressive loop shared by every model family, written against `Denoiser` and `Sampler`.

  1. the given frames (if any) are written once: they become the clean past;
  2. per chunk, the sampler's steps run from seeded noise; every step asks the denoiser for a prediction,
     which only *reads* the past — one past shared by all the steps of a chunk (Ca2-VDM's cache sharing);
  3. the finished chunk is yielded, then written once (perturbed as the sampler says) and becomes the past.

Replayed chunks (a resumed render) are written exactly as they were the first time and not yielded.
`switches` change the condition before given chunks (a prompt timeline): the denoiser's `switch` re-encodes
what its past needs under the new condition, once, then every step of the chunk reads it as usual.
Noise comes from `noise.seeded_noise`, keyed by (seed, purpose, chunk index): a sample's video depends on
its seed only, not on its batch, its device or where a render resumed. The next chunk's noise is drawn on
the host while the device still works on the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.engine.noise import seeded_noise
from ca2vdm_cli.engine.protocols import Denoiser, Sampler
from ca2vdm_cli.errors import ConfigError

StepCallback = Callable[[int, int, int], None]  # (chunk index, finished step, total steps)
Guidance = Callable[[Tensor], Tensor]  # model output on rows [uncond; cond] -> guided output on B rows


def chunk_lengths(num_frames: int, chunk: int) -> list[int]:
    """Split num_frames new (latent) frames into AR chunks of `chunk` (the last one may be shorter)."""
    full, rest = divmod(num_frames, chunk)
    return [chunk] * full + ([rest] if rest else [])


@torch.inference_mode()
def sample_chunks(
    denoiser: Denoiser,
    sampler: Sampler,
    *,
    lengths: Sequence[int],
    latent_shape: tuple[int, int, int],
    seeds: Sequence[int],
    device: torch.device,
    condition: Any = None,
    prefix: Tensor | None = None,
    guidance: Guidance | None = None,
    replay: Sequence[Tensor] = (),
    on_step: StepCallback | None = None,
    switches: Mapping[int, Any] | None = None,
) -> Iterator[Tensor]:
    """Yield each new chunk's latents (B, c, l, h, w) float32, for chunks of `lengths` latent frames after
    `prefix` (B, c, P, h, w). `latent_shape` is (c, h, w). With `guidance` the denoiser holds 2B rows
    [uncond; cond] and `guidance` folds its output back to B rows. `condition` is what `reset` takes;
    `switches` maps a chunk index (>= 1) to the condition from that chunk on (`denoiser.switch`)."""
    B = len(seeds)
    if prefix is not None and prefix.shape[0] != B:
        raise ConfigError(f"prefix has batch {prefix.shape[0]} but {B} seeds were given")
    replay = list(replay)
    if len(replay) > len(lengths) or any(r.shape[2] != n for r, n in zip(replay, lengths, strict=False)):
        raise ConfigError(
            "replayed chunks do not match this run's chunk lengths (different --chunk or --frames?)"
        )
    denoiser.reset(condition)

    def to_rows(z: Tensor) -> Tensor:
        return torch.cat([z, z]) if guidance is not None else z

    def write(z: Tensor, index: int) -> None:
        if sampler.perturbs:  # what the past holds is perturbed, never the output
            z = sampler.perturb(z, to_device(seeded_noise(seeds, "perturb", index, z.shape[1:]), device))
        denoiser.write(to_rows(z))

    if prefix is not None:
        write(prefix.to(device, torch.float32), 0)
    # model timesteps on the device once per generation (a list -> device copy syncs)
    timesteps = to_device(torch.tensor(sampler.timesteps(), dtype=torch.float32), device)  # (N,)
    c, h, w = latent_shape

    def chunk_noise(k: int) -> tuple[Tensor, Tensor | None]:
        """Initial noise (B, c, l, h, w) and per-step noise (B, N, c, l, h, w) of chunk k."""
        shape = (c, lengths[k], h, w)
        x = seeded_noise(seeds, "init", k, shape)
        steps = seeded_noise(seeds, "step", k, (sampler.num_steps, *shape)) if sampler.stochastic else None
        return to_device(x, device), None if steps is None else to_device(steps, device)

    switches = dict(switches or {})
    if any(not 0 < k < len(lengths) for k in switches):
        raise ConfigError(
            f"prompt switches at chunks {sorted(switches)}: each must be in 1..{len(lengths) - 1}"
        )
    pending: tuple[Tensor, Tensor | None] | None = None  # the next chunk's noise, drawn ahead
    for k in range(len(lengths)):
        if k in switches:
            denoiser.switch(switches[k])  # type: ignore[attr-defined]
        if k < len(replay):
            z = replay[k].to(device, torch.float32)
        else:
            noise = pending if pending is not None else chunk_noise(k)
            z = denoise_chunk(denoiser, sampler, noise, timesteps, to_rows, guidance, k, on_step)
            # drawn on the host while the device still works on chunk k (asynchronous on CUDA)
            pending = chunk_noise(k + 1) if k + 1 < len(lengths) else None
            yield z
        if k + 1 < len(lengths):
            write(z, k + 1)


def denoise_chunk(
    denoiser: Denoiser,
    sampler: Sampler,
    noise: tuple[Tensor, Tensor | None],
    timesteps: Tensor,
    to_rows: Callable[[Tensor], Tensor],
    guidance: Guidance | None,
    k: int,
    on_step: StepCallback | None,
) -> Tensor:
    """Every denoising step of chunk k from its noise; the clean chunk (B, c, l, h, w) float32. The noise
    of step n is row N-1-n of the per-step noise (the step's index counting down, as the schedules do)."""
    N = sampler.num_steps
    x, step_noise = noise  # (B, c, l, h, w), (B, N, c, l, h, w) or None
    rows = x.shape[0] * (2 if guidance is not None else 1)
    for n in range(N):
        out = denoiser.predict(to_rows(x), timesteps[n].expand(rows))  # the past is only read
        if guidance is not None:
            out = guidance(out)
        x = sampler.step(out, x, n, None if step_noise is None else step_noise[:, N - 1 - n])
        if on_step is not None:
            on_step(k, n + 1, N)
    return x


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """Host tensor -> device; from pinned memory on CUDA, so the copy does not wait for queued work."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
