"""The causal Wan2.1 family (Self-Forcing, CausVid, Causal-Forcing, LongLive): one DiT, one cache, and its
I/O: checkpoint conversion (convert.py), the umT5 text encoder (text.py) and the streaming VAE (vae.py).

`from ca2vdm_cli.models.wan import CausalWan, WanConfig` works; everything but the config (and with it
torch) is imported only when asked for, so cards and listings stay light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ca2vdm_cli.models.wan.config import WanConfig

_LAZY = {
    "CausalWan": "model",
    "ConversionReport": "convert",
    "convert_checkpoint": "convert",
    "load_converted": "convert",
    "UMT5TextEncoder": "text",
    "clean_prompt": "text",
    "FramePlan": "vae",
    "StreamingDecoder": "vae",
    "WanVAE": "vae",
    "plan_frames": "vae",
}

__all__ = ["WanConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
