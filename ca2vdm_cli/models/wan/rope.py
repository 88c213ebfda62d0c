"""3-axis rotary positions of the causal Wan DiT: time, height, width over adjacent pairs.

The head_dim/2 complex pairs split into time (head_dim/2 − 2·(head_dim//6) pairs), height and width
(head_dim//6 pairs each); each axis has its own table angle(p, j) = p·θ^(−2j/D_axis). Tables and the
rotation run in float64 and the result is cast back, as upstream does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width): (22, 21, 21) for head_dim 128."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def _axis_table(positions: int, pairs: int, theta: float, device: torch.device | str | None) -> Tensor:
    """Unit complex numbers e^{i·p·θ^(−2j/D)}: (positions, pairs) complex128, D = 2·pairs."""
    j = torch.arange(pairs, dtype=torch.float64, device=device)
    inv = theta ** (-2.0 * j / (2 * pairs))  # (pairs,)
    angle = torch.arange(positions, dtype=torch.float64, device=device)[:, None] * inv  # (positions, pairs)
    return torch.polar(torch.ones_like(angle), angle)


def rope_tables(
    head_dim: int, positions: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The time, height and width tables: (positions, pairs_axis) complex128 each."""
    return tuple(_axis_table(positions, p, theta, device) for p in axis_pairs(head_dim))  # type: ignore[return-value]


def token_freqs(
    tables: tuple[Tensor, Tensor, Tensor], times: Sequence[int] | Tensor, grid: tuple[int, int]
) -> Tensor:
    """Rotations of the tokens of frames at time rows `times` on an (h, w) token grid, row-major (f, h, w):
    (len(times)·h·w, head_dim/2) complex128."""
    t_tab, h_tab, w_tab = tables
    h, w = grid
    idx = torch.as_tensor(times, dtype=torch.long, device=t_tab.device)
    f = idx.numel()
    parts = [
        t_tab[idx][:, None, None, :].expand(f, h, w, -1),  # (F, h, w, pt)
        h_tab[:h][None, :, None, :].expand(f, h, w, -1),  # (F, h, w, ph)
        w_tab[:w][None, None, :, :].expand(f, h, w, -1),  # (F, h, w, pw)
    ]
    return torch.cat(parts, dim=-1).reshape(f * h * w, -1)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate x (B, heads, N, head_dim) by freqs (N, head_dim/2) on adjacent pairs, in float64."""
    B, h, N, d = x.shape
    pairs = torch.view_as_complex(x.double().reshape(B, h, N, d // 2, 2))  # (B, h, N, d/2)
    return torch.view_as_real(pairs * freqs).reshape(B, h, N, d).to(x.dtype)  # (B, h, N, d)
