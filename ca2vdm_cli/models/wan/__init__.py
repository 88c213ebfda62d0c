"""CausalWan: the causal Wan2.1 family (Self-Forcing, CausVid, Causal-Forcing, LongLive)."""
