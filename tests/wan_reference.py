"""Oracle for the causal Wan tests: one masked forward over a whole sequence, no cache.

Query frames of the block starting at s see key frames per spec §4.2: their own block, and either every
earlier frame (global) or the first min(K, s) frames plus the newest W − K − n earlier ones (window).
Positions are absolute. It reuses the model's weights and layers but none of its cache or RoPE code paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ca2vdm_cli.models.wan import CausalWan
from ca2vdm_cli.models.wan.model import sinusoid


def frame_mask(frames: int, n: int, window: int = -1, sink: int = 0) -> Tensor:
    """vis[q, k]: whether key frame k is visible to query frame q: (frames, frames) bool."""
    vis = torch.zeros(frames, frames, dtype=torch.bool)
    for q in range(frames):
        s = (q // n) * n
        for k in range(frames):
            own = s <= k < s + n
            if window == -1:
                vis[q, k] = own or k < s
            else:
                vis[q, k] = own or k < min(sink, s) or s - (window - sink - n) <= k < s
    return vis


def _rope_freqs(head_dim: int, frames: int, grid: tuple[int, int], theta: float = 10000.0) -> Tensor:
    """Per-token complex rotations, built independently: (frames·h·w, head_dim/2) complex128."""
    hw = head_dim // 6
    t_pairs = head_dim // 2 - 2 * hw

    def axis(pos: Tensor, pairs: int) -> Tensor:
        inv = theta ** (-torch.arange(pairs, dtype=torch.float64) * 2 / (2 * pairs))
        ang = pos.double()[:, None] * inv
        return torch.complex(torch.cos(ang), torch.sin(ang))

    f, h, w = torch.meshgrid(
        torch.arange(frames), torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij"
    )
    return torch.cat([axis(f.flatten(), t_pairs), axis(h.flatten(), hw), axis(w.flatten(), hw)], dim=-1)


def _rotate(x: Tensor, freqs: Tensor) -> Tensor:
    B, h, N, d = x.shape
    xc = torch.view_as_complex(x.double().reshape(B, h, N, d // 2, 2).contiguous())
    return torch.view_as_real(xc * freqs).reshape(B, h, N, d).to(x.dtype)


@torch.no_grad()
def masked_forward(
    model: CausalWan, x: Tensor, t: Tensor, context: Tensor, window: int = -1, sink: int = 0
) -> Tensor:
    """Flow for every frame of x (B, C, T, H, W) at per-frame t (B, T), block-causal per the mask."""
    cfg = model.cfg
    B, _, T, H, W = x.shape
    e = model.time_embedding(sinusoid(t, cfg.freq_dim).float())  # (B, T, d)
    e0 = model.time_projection(e).unflatten(-1, (6, cfg.dim))  # (B, T, 6, d)
    h = model.patch_embedding(x)  # (B, d, T, h, w)
    grid = (h.shape[3], h.shape[4])
    S = grid[0] * grid[1]
    h = h.flatten(2).transpose(1, 2)  # (B, T·S, d)
    text = model.text_embedding(F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1])))
    freqs = _rope_freqs(cfg.head_dim, T, grid)
    mask = (
        frame_mask(T, cfg.num_frame_per_block, window, sink).repeat_interleave(S, 0).repeat_interleave(S, 1)
    )

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(_rotate(q, freqs), _rotate(k, freqs), v, attn_mask=mask)

    for block in model.blocks:
        ck, cv = block.cross_attn.context_kv(text)
        h = block(h, e0, attend, ck, cv)
    return model._unpatchify(model.head(h, e), T, grid)
