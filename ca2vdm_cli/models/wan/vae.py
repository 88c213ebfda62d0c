"""The Wan2.1 video VAE (diffusers `AutoencoderKLWan`) as the causal Wan family uses it (spec §6).

* Latent normalisation: the DiT works on z_n = (μ − mean) / std per channel, with the VAE config's
  `latents_mean` / `latents_std`; decoding undoes it.
* Frame arithmetic: L latent frames decode to 1 + 4·(L − 1) video frames (the first latent is one frame,
  each later one four). `plan_frames` rounds a requested frame count up to whole blocks and says so.
* Encoding (`encode`): uint8 frames, 1 + 4k of them (1 for an image), to normalised posterior means.
* Streaming decode (`StreamingDecoder`): each block of latents is decoded as it arrives, one latent frame
  at a time, carrying the causal-convolution feature cache across blocks, so the concatenated output equals
  a whole-clip `vae.decode` (tests/test_wan_vae.py pins this).

diffusers' public `decode()` clears its feature cache at its start and end, so calling it per block would
restart the causal state (a visible seam, and a 1-frame first latent in every block). The streamer instead
drives `vae.post_quant_conv` and `vae.decoder(x, feat_cache=..., feat_idx=..., first_chunk=...)` itself,
with its own cache list sized by the decoder's `WanCausalConv3d` count. Those are diffusers 0.42 internals
(`diffusers.models.autoencoders.autoencoder_kl_wan`): the version is pinned in pyproject.toml and the test
compares streaming with the whole-clip decode, so an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- frame arithmetic
def video_frames(latent_frames: int, temporal: int = 4) -> int:
    """Video frames that `latent_frames` latents decode to: 1 + temporal·(L − 1)."""
    return 1 + temporal * (latent_frames - 1) if latent_frames > 0 else 0


def latent_frames(frames: int, temporal: int = 4) -> int:
    """Latent frames needed for at least `frames` video frames: 1 + ⌈(N − 1) / temporal⌉."""
    return 1 + math.ceil((frames - 1) / temporal)


@dataclass(frozen=True)
class FramePlan:
    """A requested frame count on the VAE's grid and the DiT's blocks."""

    requested: int  # video frames asked for
    latent_frames: int  # latents generated (whole blocks)
    block_frames: int  # latents per block
    decoded_frames: int  # video frames the latents decode to (>= requested; the rest is trimmed)

    @property
    def blocks(self) -> int:
        return self.latent_frames // self.block_frames

    @property
    def trimmed(self) -> int:
        return self.decoded_frames - self.requested

    def describe(self) -> str:
        """E.g. `240 frames: 63 latent frames (21 blocks of 3) decode to 249 frames, trimmed to 240`."""
        text = (
            f"{self.requested} frames: {self.latent_frames} latent frames ({self.blocks} blocks of "
            f"{self.block_frames}) decode to {self.decoded_frames} frames"
        )
        return text + (f", trimmed to {self.requested}" if self.trimmed else "")


def plan_frames(frames: int, block_frames: int, temporal: int = 4) -> FramePlan:
    """Round `frames` up to the 1 + temporal·(L − 1) grid and L up to whole blocks of `block_frames`.

    E.g. 240 frames in blocks of 3: 61 latents → 63 → 249 decoded frames, trimmed to 240 (spec §6)."""
    if frames < 1:
        raise InputError(f"--frames must be >= 1, got {frames}")
    if block_frames < 1:
        raise ConfigError(f"block_frames must be >= 1, got {block_frames}")
    needed = latent_frames(frames, temporal)
    latents = block_frames * math.ceil(needed / block_frames)
    return FramePlan(frames, latents, block_frames, video_frames(latents, temporal))


def to_uint8(video: Tensor) -> Tensor:
    """Decoder output in [−1, 1] (B, 3, T, H, W) → uint8 frames (B, T, H, W, 3) on the CPU."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()


# ----------------------------------------------------------------------------- the VAE
class WanVAE:
    """An `AutoencoderKLWan` plus its latent normalisation: normalised latents in and out."""

    def __init__(self, vae: Any) -> None:
        cfg = vae.config
        if getattr(cfg, "patch_size", None) is not None or getattr(cfg, "is_residual", False):
            raise ConfigError(
                "this is a Wan2.2-style VAE (patchified/residual); the causal Wan family uses Wan2.1's"
            )
        if (
            cfg.latents_mean is None
            or len(cfg.latents_mean) != cfg.z_dim
            or len(cfg.latents_std) != cfg.z_dim
        ):
            raise ConfigError(
                f"the VAE config needs latents_mean and latents_std with {cfg.z_dim} values each"
            )
        self.vae = vae.eval()
        self.temporal = int(cfg.scale_factor_temporal or 4)
        self.spatial = int(cfg.scale_factor_spatial or 8)
        p = next(vae.parameters())
        shape = (1, cfg.z_dim, 1, 1, 1)
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=p.device).view(shape)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=p.device).view(shape)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def normalize(self, mu: Tensor) -> Tensor:
        """VAE latents (B, C, L, h, w) → the DiT's z_n = (μ − mean) / std, float32."""
        return (mu.float() - self._mean.to(mu.device)) / self._std.to(mu.device)

    def denormalize(self, z: Tensor) -> Tensor:
        """z_n (B, C, L, h, w) → VAE latents z_n·std + mean, in the VAE's dtype and on its device."""
        z = z.to(self.device, torch.float32)
        return (z * self._std.to(z.device) + self._mean.to(z.device)).to(self.dtype)  # f32, then cast

    @torch.inference_mode()
    def encode(self, frames: Tensor) -> Tensor:
        """uint8 frames (B, T, H, W, 3), T = 1 + 4k (1 for an image) → normalised posterior means
        (B, C, 1 + k, H/8, W/8) float32. The mean, not a sample: an image prefix is deterministic."""
        B, T, H, W, _ = frames.shape
        if (T - 1) % self.temporal:
            raise InputError(
                f"{T} frames cannot be encoded: the Wan VAE takes 1 + {self.temporal}·k frames "
                f"(e.g. {1 + self.temporal * ((T - 1) // self.temporal)})"
            )
        if H % self.spatial or W % self.spatial:
            raise InputError(f"a {H}x{W} frame is not a multiple of {self.spatial}; resize it first")
        x = frames.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, 3, T, H, W) in [−1, 1]
        mu = self.vae.encode(x.to(self.dtype)).latent_dist.mean  # (B, C, 1 + k, h, w)
        return self.normalize(mu)

    def encode_image(self, image: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) → the first latent frame (B, C, 1, h, w), normalised (spec §6 image input)."""
        return self.encode(image.unsqueeze(1))

    @torch.inference_mode()
    def decode(self, z: Tensor) -> Tensor:
        """Whole-clip decode (diffusers): z_n (B, C, L, h, w) → (B, 3, 1 + 4(L − 1), H, W) in [−1, 1]."""
        return self.vae.decode(self.denormalize(z)).sample

    def stream(self) -> StreamingDecoder:
        """A decoder for one video, fed block by block."""
        return StreamingDecoder(self)


class StreamingDecoder:
    """Decodes one video's latents block by block with the causal state carried across blocks.

    `decode(block)` returns the block's frames: 1 + 4(n − 1) for the video's first block of n latents,
    4n for every later one; their concatenation equals `WanVAE.decode` of the whole clip."""

    def __init__(self, wan_vae: WanVAE) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.wan_vae = wan_vae
        self._convs = sum(isinstance(m, WanCausalConv3d) for m in wan_vae.vae.decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Forget the causal state: the next block starts a new video."""
        self._feat_cache: list[Any] = [None] * self._convs  # per causal conv: its last input frames
        self.latents_seen = 0

    def frames_for(self, n: int) -> int:
        """Video frames the next block of n latents will give."""
        t = self.wan_vae.temporal
        return t * n - (t - 1 if self.latents_seen == 0 else 0)

    @torch.inference_mode()
    def decode(self, z: Tensor) -> Tensor:
        """z_n (B, C, n, h, w) of the next block → (B, 3, frames_for(n), H, W) in [−1, 1], VAE dtype."""
        vae = self.wan_vae.vae
        x = vae.post_quant_conv(self.wan_vae.denormalize(z))  # 1×1×1 conv: stateless, per block is exact
        out = []
        for i in range(x.shape[2]):
            feat_idx = [0]  # the decoder walks its causal convs in order, counting through this list
            first = self.latents_seen == 0
            out.append(
                vae.decoder(
                    x[:, :, i : i + 1], feat_cache=self._feat_cache, feat_idx=feat_idx, first_chunk=first
                )
            )  # (B, 3, 1 or 4, H, W)
            self.latents_seen += 1
        return torch.cat(out, dim=2).clamp(-1.0, 1.0)
