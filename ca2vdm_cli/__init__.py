"""ca2vdm: long video generation with a causal autoregressive video diffusion transformer (Ca2-VDM)."""

__version__ = "0.1.0"
