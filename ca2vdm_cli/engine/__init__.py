"""Shared by every model family: request and chunk types, the frame ring, the AR loop over the denoiser and
sampler protocols, the one pipeline, acceleration, resume.
"""
