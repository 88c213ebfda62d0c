"""Classifier-free guidance on a batch laid out as [unconditional rows ; conditional rows]."""

from __future__ import annotations

import torch
from torch import Tensor


def guide(model_out: Tensor, scale: float, channels: int) -> Tensor:
    """ε = ε_u + s(ε_c − ε_u) on rows [uncond; cond]; a learned variance (channels c..2c) comes from cond.
    `channels` is the latent channel count c (model_out has c or 2c channels)."""
    uncond, cond = model_out.chunk(2)
    c = channels
    eps = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([eps, cond[:, c:]], dim=1)
