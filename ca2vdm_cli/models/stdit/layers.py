"""Building blocks of CausalSTDiT: embedders, sin-cos tables, RoPE, attention helpers and the final layer.

Module and parameter names follow the official CausalSTDiT2 state dict, so that
`blocks.i.attn.qkv.weight` and friends load without any renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- position tables
def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """[sin(p·ω_i), cos(p·ω_i)] with ω_i = 10000^(−i/(dim/2)); float64, shape (len(positions), dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.to(torch.float64)[:, None] * omega[None]  # (P, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, scale: float = 1.0) -> Tensor:
    """MAE 2-D table (grid_h·grid_w, dim): first half encodes the column, second half the row."""
    rows = torch.arange(grid_h, dtype=torch.float32) / scale
    cols = torch.arange(grid_w, dtype=torch.float32) / scale
    r, c = torch.meshgrid(rows, cols, indexing="ij")  # token index = r·grid_w + c
    return torch.cat([sincos_1d(dim // 2, c.reshape(-1)), sincos_1d(dim // 2, r.reshape(-1))], dim=1)


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """DiT sinusoidal timestep features, cos first, computed in fp32: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(positions: Tensor, head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos, sin (L, d/2) float32 of LLaMA-style rotary angles for `positions` (L,), on positions' device."""
    freqs = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim
    )  # (d/2,)
    angles = positions.to(torch.float64)[:, None] * freqs[None]  # (L, d/2)
    return angles.cos().float(), angles.sin().float()


def rope_apply(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs of the last dim of x (..., L, d) by precomputed tables (L, d/2), in fp32."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]  # (..., L, d/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., L, d/2, 2)
    return out.flatten(-2).to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(..., L, C) -> (..., h, L, d)."""
    *lead, length, channels = x.shape
    return x.view(*lead, length, num_heads, channels // num_heads).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    """(..., h, L, d) -> (..., L, C)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


# ----------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Parameter holder for a self-attention: qkv Linear(C→3C) laid out [q | k | v], proj Linear(C→C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def self_attention(self, x: Tensor) -> Tensor:
        """Full attention over the second-to-last axis: x (N, L, C) -> (N, L, C)."""
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=-3)  # each (N, h, L, d)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Text cross-attention (PixArt style): each sample attends only to its own valid caption tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def text_kv(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the caption y (B, N, C): (B, h, N, d) each. They depend only on the caption,
        so a generation computes them once instead of at every denoising step."""
        k, v = split_heads(self.kv_linear(y), 2 * self.num_heads).chunk(2, dim=-3)
        return k, v

    def forward(self, x: Tensor, y: Tensor | tuple[Tensor, Tensor], y_mask: Tensor | None) -> Tensor:
        # x (B, L, C); y (B, N, C) projected caption, or its precomputed `text_kv`; y_mask (B, N) bool
        q = split_heads(self.q_linear(x), self.num_heads)  # (B, h, L, d)
        k, v = y if isinstance(y, tuple) else self.text_kv(y)  # (B, h, N, d)
        mask = None if y_mask is None else y_mask[:, None, None, :]  # (B, 1, 1, N)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed3D(nn.Module):
    """Conv3d patchify with kernel = stride = patch: (B, c, T, H, W) -> (B, T, S, C)."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, C, T, H/2, W/2)
        # contiguous once here, not in every block's first reshape (16 % of the small model's denoise time)
        return x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, T, S, C)


class TimestepEmbedder(nn.Module):
    """Per-sample (B,) or per-frame (B, T) timesteps -> (…, C); fp32 features cast to the weight dtype."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class CaptionEmbedder(nn.Module):
    """Projects T5 features to the model width; `y_embedding` is the null caption used for CFG."""

    def __init__(self, in_channels: int, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.y_proj = Mlp(in_channels, dim, dim)
        self.register_buffer("y_embedding", torch.randn(num_tokens, in_channels) / in_channels**0.5)

    def forward(self, y: Tensor) -> Tensor:
        return self.y_proj(y.to(self.y_proj.fc1.weight.dtype))  # (B, N, C)


class FinalLayer(nn.Module):
    """adaLN (from the C-dim timestep embedding, per frame) then Linear(C -> patch volume · out channels)."""

    def __init__(self, dim: int, patch_volume: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(dim, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        # x (B, T, S, C); t_emb (B, T', C) with T' in {1, T}
        shift, scale = (self.scale_shift_table + t_emb[:, :, None, :]).unsqueeze(3).unbind(2)  # (B, T', 1, C)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, S, p·c_out)
