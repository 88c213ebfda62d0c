"""The two small interfaces the AR loop is written against, so that a model family adds a denoiser and a
sampler and never edits the loop.

A **denoiser** is one model's view of the video so far: `reset` starts a video (the caption, prepared once,
comes with it), `write` runs a clean chunk once at t = 0 so it becomes the past (Ca2-VDM's cache write;
evicting per the family's window), and `predict` gives the model output for a noisy chunk while only
*reading* the past (every denoising step of a chunk sees the same past). A cache, a recompute baseline or
a mock that records its calls all fit.

A **sampler** turns model outputs into the next latents: its model timesteps, one update per step, and
the perturbation of what a denoiser is shown as the clean past (Ca2-VDM's `prefix_perturb_t`).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class Denoiser(Protocol):
    """Predictions for noisy chunks against the clean past it was shown."""

    def reset(self, condition: Any) -> None:
        """Forget the past and condition the next video on `condition` (the family's prepared caption)."""

    def write(self, clean: Tensor) -> None:
        """Clean latents (rows, c, n, h, w) of the next n frames become the past (once per chunk)."""

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        """Model output for the noisy next frames x (rows, c, n, h, w) at timesteps t (rows,) — never
        changes what a later call sees."""


class Sampler(Protocol):
    """The update rule of one denoising schedule."""

    num_steps: int
    stochastic: bool  # whether `step` takes fresh noise (then the loop draws it, keyed by seed and chunk)
    perturbs: bool  # whether the denoiser is shown `perturb(clean)` instead of the clean latents

    def timesteps(self) -> list[float]:
        """Model timestep of each step, in the order the steps run (noisiest first)."""

    def step(self, out: Tensor, x: Tensor, n: int, noise: Tensor | None) -> Tensor:
        """Latents after step n (0 = the first, noisiest) from the model output `out` at x."""

    def perturb(self, clean: Tensor, noise: Tensor) -> Tensor:
        """What the denoiser is shown of clean latents (only called when `perturbs`)."""
