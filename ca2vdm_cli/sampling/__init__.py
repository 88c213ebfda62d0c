"""Inference-time samplers: DDPM/IDDPM/DDIM maths, flow matching, guidance."""
