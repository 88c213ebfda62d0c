"""The clean-prefix objective of Ca2-VDM.

A clip of P + l latent frames: the first P (the prefix) are clean — or perturbed to `prefix_perturb_t` —
and labelled t = 0 with mask channel 1 (with `prefix_noise_max` > 0, noise-augmented context: each clip's
prefix noised to its own t_p ~ U{0..prefix_noise_max} and labelled t_p); the last l carry x_t at one
sampled t per clip. The loss (masked MSE on ε or v + the VB term of the learned variance) covers the l
noisy frames only. P is one draw per batch from {1, 1+l, 1+2l, … ≤ L_max}, plus 0 (text-to-video start)
with probability `p_zero_prefix` and, when `t2v_prefixes`, l, 2l, … (the cache lengths of a video that
started from text). Clips of max_tpe_len frames (or every clip, with tpe_random_start = "all") start at a
random cyclic temporal position.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.train.losses import training_losses


def allowed_prefix_lengths(chunk: int, cache_frames: int, p_zero: float, t2v: bool) -> list[int]:
    """Sorted prefix lengths P the objective may draw (all ≤ cache_frames, the inference queue size)."""
    if chunk < 1 or cache_frames < 1:
        raise ConfigError(f"chunk={chunk} and cache_frames={cache_frames} must be >= 1")
    lengths = set(range(1, cache_frames + 1, chunk))
    if p_zero > 0:
        lengths.add(0)
        if t2v:
            lengths |= set(range(chunk, cache_frames + 1, chunk))
    return sorted(lengths)


def sample_prefix_length(gen: torch.Generator, allowed: list[int], p_zero: float) -> int:
    """P = 0 with probability p_zero, otherwise uniform over the other allowed lengths."""
    if 0 in allowed and float(torch.rand((), generator=gen)) < p_zero:
        return 0
    others = [p for p in allowed if p > 0]
    return others[int(torch.randint(0, len(others), (), generator=gen))]


@dataclass
class PrefixBatch:
    x_in: Tensor  # (B, c, T, h, w) model input: prefix (clean or perturbed) then x_t
    frame_t: Tensor  # (B, T) 0 on the prefix (t_p with prefix_noise_max), t on the noisy frames
    prefix_mask: Tensor  # (B, T) 1 on the prefix
    x0: Tensor  # (B, c, T, h, w)
    x_t: Tensor
    noise: Tensor
    t: Tensor  # (B,) long
    tpe_start: int
    weight: Tensor | None = None  # (B, 1, T, h, w) per-latent-pixel loss weight (foreground weighting)


def make_prefix_batch(
    x0: Tensor,
    num_prefix: int,
    gen: torch.Generator,
    diffusion: Diffusion,
    perturb_t: int,
    tpe_start: int,
    prefix_noise_max: int = 0,
) -> PrefixBatch:
    """Noise a clip x0 (B, c, T, h, w) for the clean-prefix objective with its first `num_prefix` frames.

    `prefix_noise_max` > 0 (noise-augmented context): each clip's prefix is noised to its own level
    t_p ~ U{0..prefix_noise_max} instead of the fixed `perturb_t`, and t_p is the prefix frames' timestep
    (the model is told how noisy its context is). 0: the fixed `perturb_t` and timestep 0, as before."""
    B, _, T = x0.shape[:3]
    if not 0 <= num_prefix < T:
        raise ConfigError(f"prefix length {num_prefix} must leave noisy frames in a clip of {T}")
    device = x0.device
    t = torch.randint(0, diffusion.num_train_steps, (B,), generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    x_t = diffusion.q_sample(x0, t, noise)
    prefix = x0[:, :, :num_prefix]
    prefix_t = None
    if prefix_noise_max > 0:
        if not 0 < prefix_noise_max < diffusion.num_train_steps:
            top = diffusion.num_train_steps - 1
            raise ConfigError(f"prefix_noise_max={prefix_noise_max} must be in 0..{top}")
        prefix_t = torch.randint(0, prefix_noise_max + 1, (B,), generator=gen).to(device)
        prefix = diffusion.q_sample(prefix, prefix_t, torch.randn(prefix.shape, generator=gen).to(device))
    elif perturb_t > 0:  # the cache holds perturbed frames at inference; train on the same
        prefix = diffusion.q_sample(prefix, perturb_t, torch.randn(prefix.shape, generator=gen).to(device))
    x_in = torch.cat([prefix, x_t[:, :, num_prefix:]], dim=2)
    prefix_mask = torch.zeros(B, T, device=device)
    prefix_mask[:, :num_prefix] = 1
    frame_t = t[:, None].float() * (1 - prefix_mask)
    if prefix_t is not None:
        frame_t = frame_t + prefix_t[:, None].float() * prefix_mask
    return PrefixBatch(x_in, frame_t, prefix_mask, x0, x_t, noise, t, tpe_start)


def prefix_loss(diffusion: Diffusion, model_out: Tensor, batch: PrefixBatch) -> dict[str, Tensor]:
    """Hybrid loss averaged over the batch; the prefix frames carry no loss (frame mask = 1 - prefix)."""
    losses = training_losses(
        diffusion,
        model_out,
        batch.x0,
        batch.x_t,
        batch.t,
        batch.noise,
        frame_mask=1 - batch.prefix_mask,
        weight=batch.weight,
    )
    return {k: v.mean() for k, v in losses.items()}


def foreground_weight(fg: Tensor | None, weight: float, shape: torch.Size) -> Tensor:
    """Per-latent-pixel loss weights (B, 1, T, h, w): `weight` on foreground (fg (B, T, h, w) = 1), 1
    elsewhere. Raises ConfigError when the clips carry no foreground masks (latents made by an older
    version: delete OUT/latents.safetensors to rebuild them)."""
    if fg is None:
        raise ConfigError(
            "train.foreground_weight needs the clips' foreground masks, which this latent cache lacks; "
            "delete OUT/latents.safetensors (the latents stage rebuilds it) or set train.foreground_weight=1"
        )
    if tuple(fg.shape) != (shape[0], shape[2], shape[3], shape[4]):
        raise ValueError(f"foreground masks {tuple(fg.shape)} do not match latents {tuple(shape)}")
    return (1.0 + (weight - 1.0) * fg)[:, None]


class TextToVideoObjective(nn.Module):
    """The modules trained together (DiT and, optionally, the text encoder), so DDP syncs both."""

    def __init__(
        self,
        model: CausalSTDiT,
        text_encoder: nn.Module | None,
        train_text: bool,
        diffusion: Diffusion | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder
        if text_encoder is not None and not train_text:
            text_encoder.requires_grad_(False)
        self.train_text = train_text
        self.diffusion = Diffusion(1000) if diffusion is None else diffusion  # the 1000-step training one

    def encode_text(self, ids: Tensor, mask: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids (B, N) -> caption features (B, N, C_text); rows where `drop` get the null caption."""
        assert self.text_encoder is not None
        with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):
            y = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, N, C_text)
        null = self.model.null_caption(ids.shape[0]).to(y.dtype)
        return torch.where(drop[:, None, None], null, y), mask

    def forward(
        self, batch: PrefixBatch, ids: Tensor | None, mask: Tensor | None, drop: Tensor | None
    ) -> dict[str, Tensor]:
        y = y_mask = None
        if self.model.config.has_text:
            if ids is None or self.text_encoder is None:
                y = self.model.null_caption(batch.x0.shape[0])
            else:
                y, y_mask = self.encode_text(ids, mask, drop)
        out = self.model(
            batch.x_in,
            batch.frame_t,
            y,
            y_mask,
            prefix_mask=batch.prefix_mask,
            tpe_start=batch.tpe_start,
        )  # (B, 2c, T, h, w)
        return prefix_loss(self.diffusion, out, batch)


def enable_gradient_checkpointing(model: CausalSTDiT) -> None:
    """Recompute each block's activations in the backward pass (saves memory, costs one more forward).
    Done per instance so the state-dict keys stay the official ones."""
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)


def draw_tpe_start(gen: torch.Generator, length: int, max_tpe_len: int, mode: str) -> int:
    if mode == "all" or (mode == "full" and length == max_tpe_len):
        return int(torch.randint(0, max_tpe_len, (), generator=gen))
    return 0
