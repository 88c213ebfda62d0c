"""Seeded noise streams: every random draw is keyed by (seed, purpose, index) and made on the CPU, so a
sample's frames depend only on its seed — not on the batch it shares, the device, or where a render resumed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def stream_seed(seed: int, purpose: str, index: int) -> int:
    """A 63-bit generator seed derived from (seed, purpose, index)."""
    digest = hashlib.sha256(f"ca2vdm/{seed}/{purpose}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_noise(seeds: Sequence[int], purpose: str, index: int, shape: Sequence[int]) -> Tensor:
    """Standard normal noise (B, *shape) float32 on the CPU; one stream per (seed, purpose, index)."""
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(stream_seed(int(seed), purpose, index))
        out.append(torch.randn(tuple(shape), generator=gen))
    return torch.stack(out)
