"""Stage 1 of the sprites recipe: a small diffusers `AutoencoderKL` trained on frames of the sprites world.

Reconstruction loss L1 + MSE on pixels in [-1, 1] plus a small KL term; the latent scaling factor is
1 / std of the latent means of random frames, so the diffusion model sees unit-variance latents. With
`vae.normalise_channels` the VAE instead gets every latent channel's mean and std folded into its weights
(`fold_channel_normalisation`): zero-mean, unit-variance latents per channel, scaling factor 1, the same
decoded pixels.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ca2vdm_cli.sprites import world as sprites

logger = logging.getLogger(__name__)

TRAIN_SEEDS = 10**6  # VAE frames come from seeds [0, TRAIN_SEEDS); `ca2vdm eval` uses seeds from 10^7
REPORT_SEED = 10**7  # the generator seed of the frames used for the scaling factor and the report
MAX_FRAME = 64  # frames are drawn from the first MAX_FRAME frames of each video


def build_vae(config: dict[str, Any]):
    from diffusers import AutoencoderKL

    kw = dict(config)
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return AutoencoderKL(**kw)


def to_pixels(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def sprite_frames(gen: torch.Generator, batch: int) -> np.ndarray:
    """`batch` random frames of random training videos: uint8 (B, 64, 64, 3)."""
    seeds = torch.randint(0, TRAIN_SEEDS, (batch,), generator=gen).tolist()
    index = torch.randint(0, MAX_FRAME, (batch,), generator=gen).tolist()
    return np.stack(
        [sprites.render(sprites.sample_scene(s), i + 1)[i] for s, i in zip(seeds, index, strict=True)]
    )


class VAEObjective(nn.Module):
    """Wraps the VAE so that DDP sees one forward: pixels -> reconstruction losses."""

    def __init__(self, vae: nn.Module, kl_weight: float) -> None:
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        # x (B, 3, H, W) in [-1, 1]; noise (B, c, h, w) for the reparameterised posterior sample
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * noise
        recon = self.vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        mse = ((recon - x) ** 2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        return {"loss": l1 + mse + self.kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


def vae_loss_fn(batch: int, latent_shape: tuple[int, int, int]):
    def loss_fn(
        module: nn.Module, step: int, gen: torch.Generator, device: torch.device
    ) -> dict[str, Tensor]:
        x = to_pixels(sprite_frames(gen, batch)).to(device)
        noise = torch.randn((batch, *latent_shape), generator=gen).to(device)
        return module(x, noise)

    return loss_fn


@torch.no_grad()
def latent_std(vae: nn.Module, device: torch.device, frames: int = 256) -> float:
    """Std of the latent means of `frames` random frames (the scaling factor is its inverse)."""
    gen = torch.Generator().manual_seed(REPORT_SEED)
    x = to_pixels(sprite_frames(gen, frames)).to(device)
    z = torch.cat([vae.encode(part).latent_dist.mean for part in x.split(64)])
    return float(z.std())


@torch.no_grad()
def channel_stats(vae: nn.Module, device: torch.device, frames: int = 256) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (c,) of the latent means of `frames` random frames (the same frames as
    `latent_std`)."""
    gen = torch.Generator().manual_seed(REPORT_SEED)
    x = to_pixels(sprite_frames(gen, frames)).to(device)
    z = torch.cat([vae.encode(part).latent_dist.mean for part in x.split(64)])  # (N, c, h, w)
    flat = z.transpose(0, 1).flatten(1)  # (c, N·h·w)
    return flat.mean(1).cpu(), flat.std(1).cpu()


@torch.no_grad()
def fold_channel_normalisation(vae: nn.Module, mean: Tensor, std: Tensor) -> None:
    """Make `vae` (a diffusers AutoencoderKL with quant convs) encode z' = (z − mean) / std per channel and
    decode z' as it decoded z: the mean rows of `quant_conv` are shifted and rescaled (its log-variance
    rows shifted by −2 log std), the inverse affine map is folded into `post_quant_conv`, and
    config.scaling_factor becomes 1. mean, std: (c,) in the VAE's raw latent units."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("fold_channel_normalisation needs a VAE with quant_conv and post_quant_conv")
    c = int(vae.config.latent_channels)
    if mean.shape != (c,) or std.shape != (c,) or not bool((std > 0).all()):
        raise ValueError(
            f"mean and std must be ({c},) with std > 0; got {tuple(mean.shape)}, {tuple(std.shape)}"
        )
    q, p = vae.quant_conv, vae.post_quant_conv  # 1×1 convs: q (2c → 2c) rows [mean | logvar], p (c → c)
    m, s = mean.to(q.weight), std.to(q.weight)
    q.weight[:c] /= s[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - m) / s
    q.bias[c:] -= 2 * torch.log(s)
    p.bias += (p.weight[:, :, 0, 0] * m.to(p.weight)[None, :]).sum(1)  # p(s z' + m) = p'(z')
    p.weight *= s.to(p.weight)[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)


@torch.no_grad()
def reconstruction_report(vae: nn.Module, scaling_factor: float, device: torch.device) -> dict[str, float]:
    """Mean abs pixel error (0–255) and the fraction of pixels off by more than 32 on 128 random frames."""
    gen = torch.Generator().manual_seed(REPORT_SEED + 1)
    frames = sprite_frames(gen, 128)
    x = to_pixels(frames).to(device)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    out = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy()
    err = np.abs(out.astype(np.float32) - frames.astype(np.float32))
    return {"mae": float(err.mean()), "bad_pixels": float((err.max(-1) > 32).mean())}


class DecoderObjective(nn.Module):
    """Phase 2: fine-tune only the decoder (the encoder, hence the latent space, stays fixed) with sprite
    pixels weighted `foreground_weight` times more than the black background, for exact colours."""

    def __init__(self, vae: nn.Module, foreground_weight: float) -> None:
        super().__init__()
        self.vae, self.foreground_weight = vae, foreground_weight
        for module in (vae.encoder, vae.quant_conv):
            if module is not None:
                module.requires_grad_(False)

    def forward(self, x: Tensor, noise: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            posterior = self.vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * noise
        recon = self.vae.decode(z).sample
        weight = 1 + (self.foreground_weight - 1) * (x > -1).any(dim=1, keepdim=True).float()  # (B, 1, H, W)
        l1 = ((recon - x).abs() * weight).mean()
        mse = (((recon - x) ** 2) * weight).mean()
        return {"loss": l1 + mse, "l1": l1, "mse": mse}
