"""CausalSTDiT behind the loop's `Denoiser` protocol, three ways that differ only in how a denoising step
sees the clean frames:

  cache           Ca2-VDM: K|V of clean frames computed once (`write_cache`), shared by every denoising step
  recompute       no cache; the last ≤ L_max clean frames are re-run at every step (the OS-Ext baseline)
  recompute-full  no cache and no cap: the condition grows with the video (the quadratic case)

The caption is prepared once per video (`CausalSTDiT.prepare_text`, passed to `reset`) and the cache
denoiser plans each AR step once (`plan_step`), so a denoising step is a fixed, sync-free computation that
`engine.accel` can compile or capture in a CUDA graph (`step` / `forward` replace the model's own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.attention_opts import AttentionOptions
from ca2vdm_cli.models.stdit.block import CachedStep, PreparedText
from ca2vdm_cli.models.stdit.model import CausalSTDiT
from ca2vdm_cli.models.stdit.spec import ENGINES

__all__ = ["ENGINES", "CacheDenoiser", "RecomputeDenoiser", "make_denoiser"]

StepFn = Callable[[CachedStep, Tensor, Tensor, PreparedText | None], Tensor | None]
ForwardFn = Callable[..., Tensor]


class CacheDenoiser:
    """Clean frames enter the KV cache once; denoising steps only read it. The plan of an AR step is made
    at its first denoising step and dropped when frames are written."""

    def __init__(
        self,
        model: CausalSTDiT,
        rows: int,
        cache_frames: int,
        chunk_frames: int = 0,
        step: StepFn | None = None,
        write_t: float = 0.0,
        attention: AttentionOptions | None = None,
    ) -> None:
        self.model, self.rows = model, rows
        self.write_t = write_t  # timestep the written frames run at (sampling.prefix_timestep)
        self.cache = model.new_cache(rows, cache_frames, chunk_frames, attention=attention)
        self.step = step  # None: model.run_denoise
        self.text: PreparedText | None = None
        self._plan: CachedStep | None = None

    def reset(self, condition: PreparedText | None = None) -> None:
        """Start a new video with the same buffers (and the same compiled or captured steps)."""
        self.cache.reset()
        self.text, self._plan = condition, None

    def write(self, clean: Tensor) -> None:
        self.model.write_cache(self.cache, clean, self.text, t=self.write_t)
        self._plan = None

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        if self._plan is None or self._plan.n_new != x.shape[2]:
            self._plan = self.model.plan_step(self.cache, x.shape[2], write=False)
        step = self.step or self.model.run_denoise
        out = step(self._plan, x, t, self.text)
        assert out is not None
        return out


class RecomputeDenoiser:
    """No cache: [clean condition frames ; noisy chunk] through the full causal forward at every step, the
    condition capped to the newest `max_condition` frames (None: never)."""

    def __init__(
        self,
        model: CausalSTDiT,
        max_condition: int | None,
        forward: ForwardFn | None = None,
        write_t: float = 0.0,
    ) -> None:
        self.model, self.max_condition = model, max_condition
        self.write_t = write_t  # timestep of the condition frames (sampling.prefix_timestep)
        self.forward = forward or model
        self.text: PreparedText | None = None
        self.condition: Tensor | None = None  # (rows, c, P, H, W)
        self.first_index = 0  # absolute index of the first condition frame

    def reset(self, condition: PreparedText | None = None) -> None:
        self.text, self.condition, self.first_index = condition, None, 0

    def write(self, clean: Tensor) -> None:
        cond = clean if self.condition is None else torch.cat([self.condition, clean], dim=2)
        if self.max_condition is not None and cond.shape[2] > self.max_condition:
            self.first_index += cond.shape[2] - self.max_condition
            cond = cond[:, :, -self.max_condition :]
        self.condition = cond

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        if self.condition is None:
            return self.forward(x, t, self.text)
        P, n = self.condition.shape[2], x.shape[2]
        full = torch.cat([self.condition, x], dim=2)  # (rows, c, P + n, H, W)
        cond_t = torch.full((x.shape[0], P), float(self.write_t), device=x.device)
        frame_t = torch.cat([cond_t, t[:, None].expand(-1, n)], dim=1)
        start = self.first_index if self.model.config.tpe_mode != "fixed" else 0
        return self.forward(full, frame_t, self.text, tpe_start=start, num_prefix=P)[:, :, P:]


def make_denoiser(
    name: str,
    model: CausalSTDiT,
    rows: int,
    cache_frames: int,
    *,
    chunk_frames: int = 0,
    step: StepFn | None = None,
    forward: ForwardFn | None = None,
    write_t: float = 0.0,
    attention: AttentionOptions | None = None,
) -> CacheDenoiser | RecomputeDenoiser:
    """A denoiser by engine name. `chunk_frames` reserves scratch slots for chunks of that length next to
    the cache; `step` / `forward` replace the model's cached step / full forward (`engine.accel`);
    `write_t` is the timestep the clean (perturbed) frames are run at; `attention` (TempCache) applies
    to the cache engine only: the recompute baselines hold no cache and stay dense, as in the Wan family."""
    if name == "cache":
        return CacheDenoiser(model, rows, cache_frames, chunk_frames, step, write_t, attention)
    if name == "recompute":
        return RecomputeDenoiser(model, cache_frames, forward, write_t)
    if name == "recompute-full":
        return RecomputeDenoiser(model, None, forward, write_t)
    raise ConfigError(f"engine {name!r} is not one of {', '.join(ENGINES)}")
