"""Model families, one subpackage each (`wan`: the causal Wan2.1 DiT)."""
