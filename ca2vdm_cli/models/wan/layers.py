"""Layers of the causal Wan DiT: norms, self- and cross-attention, the modulated block.

Parameter names follow the official layout (`self_attn.q`, `norm3`, `ffn.0`, …) so state dicts load
as is. Self-attention gets its keys and values through a callable from the model, so the cache policy
(window, sink, position mode) stays out of the layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (q, k, v) of the block, each (B, heads, N, head_dim), un-rotated → attention output (B, heads, N, head_dim)
SelfAttend = Callable[[Tensor, Tensor, Tensor], Tensor]
# (q (B, heads, N, head_dim), prompt k, v (B, heads, rows, head_dim)) → (B, heads, N, head_dim)
CrossAttend = Callable[[Tensor, Tensor, Tensor], Tensor]


class RMSNorm(nn.Module):
    """RMSNorm over the full width, normalised in float32 then cast back before the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (affine only for `norm3`)."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, d) → (B, heads, N, head_dim)."""
    B, N, d = x.shape
    return x.view(B, N, num_heads, d // num_heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, heads, N, head_dim) → (B, N, d)."""
    B, h, N, hd = x.shape
    return x.transpose(1, 2).reshape(B, N, h * hd)


class SelfAttention(nn.Module):
    """q/k RMSNorm over the full width before the head split; RoPE and the K/V window come from `attend`."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: Tensor, attend: SelfAttend) -> Tensor:
        q = _heads(self.norm_q(self.q(x)), self.num_heads)  # (B, h, N, hd)
        k = _heads(self.norm_k(self.k(x)), self.num_heads)  # (B, h, N, hd)
        v = _heads(self.v(x), self.num_heads)  # (B, h, N, hd)
        return self.o(_merge(attend(q, k, v)))  # (B, N, d)


class CrossAttention(nn.Module):
    """Attention to all text_len prompt rows, no mask, no RoPE; K/V precomputed once per prompt."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def context_kv(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """text (B, text_len, d) → k, v (B, h, text_len, hd)."""
        return _heads(self.norm_k(self.k(text)), self.num_heads), _heads(self.v(text), self.num_heads)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, attend: CrossAttend | None = None) -> Tensor:
        """x (B, N, d); `attend` replaces plain SDPA (AnnCA)."""
        q = _heads(self.norm_q(self.q(x)), self.num_heads)  # (B, h, N, hd)
        out = F.scaled_dot_product_attention(q, k, v) if attend is None else attend(q, k, v)  # (B, h, N, hd)
        return self.o(_merge(out))  # (B, N, d)


class WanBlock(nn.Module):
    """x += gate·SelfAttn(mod LN1 x); x += CrossAttn(LN3 x); x += gate·FFN(mod LN2 x), modulated per frame."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )

    def forward(
        self,
        x: Tensor,
        e0: Tensor,
        attend: SelfAttend,
        ctx_k: Tensor,
        ctx_v: Tensor,
        cross_attend: CrossAttend | None = None,
    ) -> Tensor:
        """x (B, F·S, d) tokens of F frames; e0 (B, F, 6, d) per-frame modulation."""
        B, N, d = x.shape
        nf = e0.shape[1]
        mod = (self.modulation.unsqueeze(0) + e0).unsqueeze(3)  # (B, F, 6, 1, d)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)  # (B, F, 1, d) each
        x = x.view(B, nf, N // nf, d)  # (B, F, S, d)
        h = (self.norm1(x) * (1 + scale_sa) + shift_sa).view(B, N, d)  # (B, N, d)
        x = x + gate_sa * self.self_attn(h, attend).view_as(x)  # (B, F, S, d)
        x = x + self.cross_attn(self.norm3(x).view(B, N, d), ctx_k, ctx_v, cross_attend).view_as(x)
        h = (self.norm2(x) * (1 + scale_ff) + shift_ff).view(B, N, d)  # (B, N, d)
        x = x + gate_ff * self.ffn(h).view_as(x)  # (B, F, S, d)
        return x.view(B, N, d)
