"""CausalSTDiT, the Ca2-VDM transformer: config, layers, blocks, model, its KV-cache layout, conversion
and cost formulas.

`from ca2vdm_cli.models.stdit import CausalSTDiT, ModelConfig` works; the model (and torch) is imported
only when `CausalSTDiT` is asked for, so the config and the cards stay light for `--help` and listings.
"""

from __future__ import annotations

from typing import Any

from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig

__all__ = ["CausalSTDiT", "ModelConfig", "SamplingConfig"]


def __getattr__(name: str) -> Any:
    if name == "CausalSTDiT":
        from ca2vdm_cli.models.stdit.model import CausalSTDiT

        return CausalSTDiT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
