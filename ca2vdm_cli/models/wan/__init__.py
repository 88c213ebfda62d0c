"""The causal Wan2.1 family (Self-Forcing, CausVid, Causal-Forcing, LongLive): one DiT, one cache.

`from ca2vdm_cli.models.wan import CausalWan, WanConfig` works; the model (and torch) is imported only
when `CausalWan` is asked for, so cards and listings stay light.
"""

from __future__ import annotations

from typing import Any

from ca2vdm_cli.models.wan.config import WanConfig

__all__ = ["CausalWan", "WanConfig"]


def __getattr__(name: str) -> Any:
    if name == "CausalWan":
        from ca2vdm_cli.models.wan.model import CausalWan

        return CausalWan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
