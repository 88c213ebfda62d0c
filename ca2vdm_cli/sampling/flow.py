"""Flow-matching few-step sampler of the causal Wan family: schedule, warped steps, x0, re-noise.

The model predicts the flow v ≈ ε − x0 at x_t = (1 − σ)·x0 + σ·ε, so x0 = x_t − σ·v. The training
schedule has 1000 steps, σ_k = shift·u_k / (1 + (shift − 1)·u_k) with u = linspace(1, 0, 1001) minus its
last point, and timestep_k = 1000·σ_k (float32 tables, as upstream). A checkpoint's few-step list is
either used as is (CausVid) or warped onto that table (Self-Forcing: t → table[1000 − t]); warped values
are floats and are never rounded. The per-block loop itself lives with the engine; `sample_block` is the
reference form of it for one block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError

NUM_TRAIN_STEPS = 1000


@dataclass(frozen=True)
class FlowSchedule:
    """A few-step list as data: the given steps, the schedule shift, and whether the steps are warped."""

    steps: tuple[int, ...]
    shift: float
    warp: bool

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("a flow schedule needs at least one step; e.g. steps=(1000, 750, 500, 250)")
        bad = [s for s in self.steps if not 0 < s <= NUM_TRAIN_STEPS]
        if bad:
            raise ConfigError(f"flow steps must lie in (0, {NUM_TRAIN_STEPS}], got {bad}; drop them")
        if self.shift <= 0:
            raise ConfigError(f"flow shift must be > 0, got {self.shift}; the released models use 5 or 8")

    def timesteps(self) -> list[float]:
        """The effective timesteps fed to the model, in order (float32 values as Python floats)."""
        if self.warp:
            return warp_steps(self.steps, self.shift).tolist()
        return [float(s) for s in self.steps]

    def sigmas(self) -> list[float]:
        """σ of each effective timestep (nearest grid point of the training schedule)."""
        t = torch.tensor(self.timesteps(), dtype=torch.float32)
        return sigma_at(t, self.shift).tolist()


SELF_FORCING = FlowSchedule(steps=(1000, 750, 500, 250), shift=5.0, warp=True)
CAUSVID = FlowSchedule(steps=(1000, 757, 522), shift=8.0, warp=False)


def shifted_sigmas(shift: float, num_steps: int = NUM_TRAIN_STEPS) -> Tensor:
    """σ_k for k = 0..num_steps−1, float32 (σ_0 = 1): (num_steps,)."""
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)[:-1]  # (num_steps,)
    return shift * u / (1 + (shift - 1) * u)


def schedule_timesteps(shift: float, num_steps: int = NUM_TRAIN_STEPS) -> Tensor:
    """timestep_k = num_steps·σ_k, float32: (num_steps,)."""
    return shifted_sigmas(shift, num_steps) * num_steps


def warp_steps(steps: Sequence[int], shift: float, num_steps: int = NUM_TRAIN_STEPS) -> Tensor:
    """Map each listed step t to table[num_steps − t] of [timesteps ; 0]: float32 (len(steps),)."""
    table = torch.cat([schedule_timesteps(shift, num_steps), torch.zeros(1)])  # (num_steps + 1,)
    index = torch.tensor([num_steps - int(s) for s in steps], dtype=torch.long)
    return table[index]


def sigma_at(t: Tensor, shift: float, num_steps: int = NUM_TRAIN_STEPS) -> Tensor:
    """σ at the grid point nearest each timestep (any shape; t = 0 maps to the last grid point)."""
    grid = schedule_timesteps(shift, num_steps).to(t.device)  # (num_steps,)
    index = (t.float().unsqueeze(-1) - grid).abs().argmin(dim=-1)  # t.shape
    return shifted_sigmas(shift, num_steps).to(t.device)[index]


def _per_frame(sigma: Tensor, like: Tensor) -> Tensor:
    """σ (B, F) or a scalar, shaped to broadcast over x (B, C, F, H, W)."""
    if sigma.dim() == 0:
        return sigma
    return sigma[:, None, :, None, None]  # (B, 1, F, 1, 1)


def flow_to_x0(x_t: Tensor, flow: Tensor, sigma: Tensor) -> Tensor:
    """x0 = x_t − σ·v in float64, cast back to x_t's dtype; x_t, flow (B, C, F, H, W), σ (B, F) or scalar."""
    s = _per_frame(sigma.double(), x_t)
    return (x_t.double() - s * flow.double()).to(x_t.dtype)  # (B, C, F, H, W)


def renoise(x0: Tensor, noise: Tensor, sigma_next: Tensor) -> Tensor:
    """x = (1 − σ')·x0 + σ'·ε in float32 with σ' a float32 value; x0, noise (B, C, F, H, W)."""
    s = _per_frame(sigma_next.float(), x0)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)  # (B, C, F, H, W)


def sample_block(
    predict: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    schedule: FlowSchedule,
    step_noise: Callable[[int], Tensor],
) -> Tensor:
    """Denoise one block: x ← noise; per step v = predict(x, t (B, F)) → x0; re-noise with step_noise(j + 1).

    noise (B, C, F, H, W); returns the final x0 (B, C, F, H, W). No CFG: one call per step.
    """
    B, _, F = noise.shape[:3]
    timesteps = schedule.timesteps()
    x = noise
    x0 = noise
    for j, t_j in enumerate(timesteps):
        t = torch.full((B, F), t_j, dtype=torch.float32, device=noise.device)  # (B, F)
        x0 = flow_to_x0(x, predict(x, t), sigma_at(t, schedule.shift))  # (B, C, F, H, W)
        if j + 1 < len(timesteps):
            t_next = torch.full((B, F), timesteps[j + 1], dtype=torch.float32, device=noise.device)
            x = renoise(x0, step_noise(j + 1), sigma_at(t_next, schedule.shift))  # (B, C, F, H, W)
    return x0
