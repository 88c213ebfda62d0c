"""Frames <-> latents for the pipeline, one interface per VAE kind (`card.vae_kind`):

- `ImageVAE`: a diffusers `AutoencoderKL` applied frame by frame (no temporal compression: one video
  frame per latent frame), micro-batched so memory stays bounded for any clip length;
- `VideoVAE`: the causal Wan VAE (`models.wan.vae.WanVAE`): 1 + 4·(L − 1) video frames for L latent
  frames, decoded as a stream with the causal state carried from chunk to chunk.

Both say how many video frames a latent frame covers (`frames_per_latent`) and decode through `stream()`,
one stream per batch of videos, fed the chunks in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.engine.noise import seeded_noise


def _vae_params(vae: Any) -> tuple[torch.device, torch.dtype]:
    p = next(vae.parameters())
    return p.device, p.dtype


@torch.inference_mode()
def encode_frames(
    vae: Any,
    frames: Tensor,
    scaling_factor: float,
    *,
    seeds: Sequence[int] | None = None,
    micro_batch: int = 16,
) -> Tensor:
    """uint8 frames (B, T, H, W, 3) -> scaled latents (B, c, T, h, w) float32 on the VAE's device.

    With `seeds` (one per sample) the posterior is sampled with seeded CPU noise, as in training and in
    the official sampler; without, its mean is used."""
    device, dtype = _vae_params(vae)
    B, T, H, W, _ = frames.shape
    x = frames.reshape(B * T, H, W, 3).permute(0, 3, 1, 2)  # (B·T, 3, H, W)
    means, stds = [], []
    for i in range(0, B * T, micro_batch):
        batch = x[i : i + micro_batch].to(device=device, dtype=torch.float32) / 127.5 - 1.0
        dist = vae.encode(batch.to(dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    mean = torch.cat(means).unflatten(0, (B, T)).transpose(1, 2)  # (B, c, T, h, w)
    if seeds is not None:
        std = torch.cat(stds).unflatten(0, (B, T)).transpose(1, 2)
        mean = mean + std * seeded_noise(seeds, "vae", 0, mean.shape[1:]).to(device)
    return mean * scaling_factor


@torch.inference_mode()
def decode_latents(vae: Any, latents: Tensor, scaling_factor: float, micro_batch: int = 16) -> Tensor:
    """Scaled latents (B, c, T, h, w) -> uint8 frames (B, T, H, W, 3) on the CPU."""
    device, dtype = _vae_params(vae)
    B, c, T, h, w = latents.shape
    z = (latents / scaling_factor).transpose(1, 2).reshape(B * T, c, h, w)  # (B·T, c, h, w)
    out = []
    for i in range(0, B * T, micro_batch):
        img = vae.decode(z[i : i + micro_batch].to(device=device, dtype=dtype)).sample.float()  # (b, 3, H, W)
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(img.permute(0, 2, 3, 1).cpu())
    frames = torch.cat(out)  # (B·T, H, W, 3)
    return frames.unflatten(0, (B, T))


class ImageVAE:
    """The pipeline's view of a frame-by-frame VAE with its scaling factor: frames in, latents out (one
    latent frame per video frame)."""

    frames_per_latent = 1

    def __init__(self, vae: Any, scaling_factor: float) -> None:
        self.vae, self.scaling_factor = vae, scaling_factor

    def stream(self) -> ImageVAE:
        """Frame-by-frame decoding keeps no state: the stream is the VAE itself."""
        return self

    def encode(self, frames: Tensor, seeds: Sequence[int] | None = None) -> Tensor:
        """uint8 (B, T, H, W, 3) -> scaled latents (B, c, T, h, w); a seeded posterior sample with `seeds`."""
        return encode_frames(self.vae, frames, self.scaling_factor, seeds=seeds)

    def decode(self, latents: Tensor, micro_batch: int = 16) -> Tensor:
        """Scaled latents (B, c, T, h, w) -> uint8 frames (B, T, H, W, 3) on the CPU."""
        return decode_latents(self.vae, latents, self.scaling_factor, micro_batch)


class VideoVAE:
    """The pipeline's view of the causal Wan VAE: the given image(s) → normalised posterior means, and a
    streaming decoder per batch (each chunk's frames as soon as it is denoised)."""

    def __init__(self, vae: Any) -> None:
        from ca2vdm_cli.models.wan.vae import WanVAE

        self.wan = vae if isinstance(vae, WanVAE) else WanVAE(vae)
        self.frames_per_latent = self.wan.temporal

    def encode(self, frames: Tensor, seeds: Sequence[int] | None = None) -> Tensor:
        """uint8 (B, P, H, W, 3) → (B, C, P, h, w): each given image is one latent frame (the posterior
        mean: an image prefix is deterministic, so `seeds` are not used)."""
        latents = [self.wan.encode_image(frames[:, p]) for p in range(frames.shape[1])]  # (B, C, 1, h, w)
        return torch.cat(latents, dim=2)

    def stream(self) -> _VideoStream:
        return _VideoStream(self.wan.stream())


class _VideoStream:
    """One batch's streaming decode: latents (B, C, n, h, w) → uint8 frames (B, T, H, W, 3) on the CPU."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def decode(self, latents: Tensor, micro_batch: int = 16) -> Tensor:
        from ca2vdm_cli.models.wan.vae import to_uint8

        return to_uint8(self.decoder.decode(latents))  # (B, 3, T, H, W) -> (B, T, H, W, 3)


def pipeline_vae(kind: str, vae: Any, scaling_factor: float) -> ImageVAE | VideoVAE:
    """The pipeline's VAE for a card's `vae.kind`."""
    return VideoVAE(vae) if kind == "wan" else ImageVAE(vae, scaling_factor)
