"""The causal Wan2.1 family (Self-Forcing, CausVid, Causal-Forcing, LongLive): one DiT, one cache, and its
I/O: checkpoint conversion (convert.py), the umT5 text encoder (text.py) and the streaming VAE (vae.py)."""

from ca2vdm_cli.models.wan.config import WanConfig
from ca2vdm_cli.models.wan.convert import ConversionReport, convert_checkpoint, load_converted
from ca2vdm_cli.models.wan.model import CausalWan
from ca2vdm_cli.models.wan.text import UMT5TextEncoder, clean_prompt
from ca2vdm_cli.models.wan.vae import FramePlan, StreamingDecoder, WanVAE, plan_frames

__all__ = [
    "CausalWan",
    "ConversionReport",
    "FramePlan",
    "StreamingDecoder",
    "UMT5TextEncoder",
    "WanConfig",
    "WanVAE",
    "clean_prompt",
    "convert_checkpoint",
    "load_converted",
    "plan_frames",
]
