"""The causal Wan2.1 family (Self-Forcing, CausVid, Causal-Forcing, LongLive): one DiT, one cache."""

from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.model import CausalWan

__all__ = ["CausalWan", "WanConfig"]
