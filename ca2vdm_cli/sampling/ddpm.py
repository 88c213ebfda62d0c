"""Gaussian diffusion at inference: the noise schedule, IDDPM respacing, ancestral sampling with
learned-range variance, DDIM, q_sample, and `DDPMSampler` (the loop's `Sampler` for CausalSTDiT). The
training loss lives in `train/losses.py`.

Schedules (`SCHEDULES`): "linear" (Open-Sora / Ca2-VDM: linear betas, ᾱ_999 = 4e-5), "linear_zsnr" (the
same rescaled so that √ᾱ falls linearly to 0 at t = 999: zero terminal SNR, Lin et al. 2024) and "cosine"
(Nichol & Dhariwal). Predictions (`PREDICTIONS`): "eps" (ε, the official models) or "v"
(v = √ᾱ·ε − √(1−ᾱ)·x0, Salimans & Ho), which stays well-conditioned where ᾱ → 0: x0 = √ᾱ·x_t − √(1−ᾱ)·v.

Coefficients are computed in float64 and applied as float32 scalars, as IDDPM does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError


def linear_betas(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    scale = 1000 / num_train_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_train_steps, dtype=torch.float64)


SCHEDULES = ("linear", "linear_zsnr", "cosine")
PREDICTIONS = ("eps", "v")


def alphas_cumprod(schedule: str, num_train_steps: int = 1000) -> Tensor:
    """ᾱ_t for t = 0..num_train_steps−1 of a named schedule, float64 (num_train_steps,)."""
    if schedule == "linear":
        return torch.cumprod(1 - linear_betas(num_train_steps), 0)
    if schedule == "linear_zsnr":
        s = torch.cumprod(1 - linear_betas(num_train_steps), 0).sqrt()  # (T,) √ᾱ
        s0, s_last = s[0].clone(), s[-1].clone()
        s = (s - s_last) * s0 / (s0 - s_last)  # same √ᾱ_0, √ᾱ_{T−1} = 0
        return s**2
    if schedule == "cosine":
        u = torch.arange(num_train_steps + 1, dtype=torch.float64) / num_train_steps
        f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # (T + 1,)
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return torch.cumprod(1 - betas, 0)
    raise ConfigError(f"noise schedule {schedule!r} is not one of {SCHEDULES}")


def space_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """IDDPM respacing: num_steps evenly strided original timesteps, rounded (0, 10, 20, …, 999)."""
    if not 1 <= num_steps <= num_train_steps:
        raise ConfigError(f"steps must be between 1 and {num_train_steps}, got {num_steps}")
    stride = (num_train_steps - 1) / (num_steps - 1) if num_steps > 1 else 1
    taken, cur = [], 0.0
    for _ in range(num_steps):
        taken.append(round(cur))
        cur += stride
    return taken


def _as_floats(x: Tensor) -> list[float]:
    """float64 coefficients -> Python floats of their float32 values."""
    return x.to(torch.float32).tolist()


class Diffusion:
    """A 1000-step DDPM respaced to `num_steps` (timestep_map[i] = original t of step i).

    `prediction` is what the model's first c output channels are ("eps" or "v"); `clip_x0` > 0 clamps
    the predicted x0 to ±clip_x0 before each step (0: off, as the official sampler)."""

    def __init__(
        self,
        num_steps: int = 100,
        num_train_steps: int = 1000,
        schedule: str = "linear",
        prediction: str = "eps",
        clip_x0: float = 0.0,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction {prediction!r} is not one of {PREDICTIONS}")
        if prediction == "eps" and schedule == "linear_zsnr":
            raise ConfigError(
                "ε-prediction cannot recover x0 where ᾱ = 0; use prediction = 'v' with linear_zsnr"
            )
        if clip_x0 < 0:
            raise ConfigError(f"clip_x0={clip_x0} must be >= 0 (0: off)")
        self.num_train_steps = num_train_steps
        self.schedule, self.prediction, self.clip_x0 = schedule, prediction, clip_x0
        self.base_alphas_cumprod = alphas_cumprod(schedule, num_train_steps)  # (1000,) float64
        self.timestep_map = space_timesteps(num_train_steps, num_steps)
        kept = self.base_alphas_cumprod[self.timestep_map]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), kept[:-1]])
        betas = 1 - kept / prev  # respaced betas
        self._set_coefficients(betas)

    def _set_coefficients(self, betas: Tensor) -> None:
        ac = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        # the t = 0 posterior variance is 0; IDDPM clips its log with the next value
        post_log_var = (
            torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(betas) > 1 else torch.log(betas)
        )
        self.num_steps = len(betas)
        self.betas = betas
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        self.posterior_variance = post_var
        self.posterior_log_variance_clipped = post_log_var
        self._f = {
            "sqrt_ac": _as_floats(torch.sqrt(ac)),
            "sqrt_1m_ac": _as_floats(torch.sqrt(1 - ac)),
            "sqrt_recip_ac": _as_floats(torch.sqrt(1 / ac)),
            "sqrt_recipm1_ac": _as_floats(torch.sqrt(1 / ac - 1)),
            "coef1": _as_floats(betas * torch.sqrt(ac_prev) / (1 - ac)),
            "coef2": _as_floats((1 - ac_prev) * torch.sqrt(1 - betas) / (1 - ac)),
            "min_log": _as_floats(post_log_var),
            "max_log": _as_floats(torch.log(betas)),
            "ac": _as_floats(ac),
            "ac_prev": _as_floats(ac_prev),
        }

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε on the original (1000-step) schedule; t int or (B,)."""
        ac = self.base_alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device)].float()
        ac = ac.reshape(-1, *([1] * (x0.dim() - 1))) if ac.dim() else ac
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The regression target of the first c output channels at original timesteps t (B,): ε or v."""
        if self.prediction == "eps":
            return noise
        ac = self.base_alphas_cumprod.to(x0.device)[t].float().reshape(-1, *([1] * (x0.dim() - 1)))
        return ac.sqrt() * noise - (1 - ac).sqrt() * x0  # v (B, c, T, H, W)

    def x0_at(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        """x0 from the prediction (ε̂ or v̂, as `prediction`) at per-sample respaced steps t (B,), no clamp:
        the training loss's form of `x0_and_eps`. x_t, pred (B, c, T, H, W)."""
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        ac = self.alphas_cumprod.to(x_t.device)[t]
        if self.prediction == "v":
            return ac.sqrt().float().view(shape) * x_t - (1 - ac).sqrt().float().view(shape) * pred
        return (1 / ac).sqrt().float().view(shape) * x_t - (1 / ac - 1).sqrt().float().view(shape) * pred

    # ------------------------------------------------------------------ reverse process
    def predict_x0(self, x: Tensor, eps: Tensor, i: int) -> Tensor:
        """x0 from ε̂ at respaced step i (ε-parameterisation only; no clamp)."""
        return self._f["sqrt_recip_ac"][i] * x - self._f["sqrt_recipm1_ac"][i] * eps

    def x0_and_eps(self, x: Tensor, pred: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x̂0, ε̂) at respaced step i from the model's prediction (ε or v), x̂0 clamped if clip_x0 > 0
        (then ε̂ is recomputed from the clamped x̂0 where ᾱ < 1). x, pred (B, c, T, H, W)."""
        a, b = self._f["sqrt_ac"][i], self._f["sqrt_1m_ac"][i]
        if self.prediction == "eps":
            x0, eps = self.predict_x0(x, pred, i), pred
        else:
            x0, eps = a * x - b * pred, a * pred + b * x
        if self.clip_x0 > 0:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (x - a * x0) / b if b > 0 else eps
        return x0, eps

    def p_mean_log_variance(self, model_out: Tensor, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(x_{i-1} | x_i); model_out (B, 2c, …) = [pred | r] (learned range r)
        or pred alone, pred = ε̂ or v̂."""
        c = x.shape[1]
        if model_out.shape[1] == 2 * c:
            frac = (model_out[:, c:] + 1) / 2
            log_var = frac * self._f["max_log"][i] + (1 - frac) * self._f["min_log"][i]
        else:  # fixed small variance
            log_var = torch.full_like(x, self._f["min_log"][i])
        x0, _ = self.x0_and_eps(x, model_out[:, :c], i)
        mean = self._f["coef1"][i] * x0 + self._f["coef2"][i] * x
        return mean, log_var

    def p_sample(self, model_out: Tensor, x: Tensor, i: int, noise: Tensor) -> Tensor:
        """One IDDPM ancestral step from respaced step i to i-1 (no noise at i = 0)."""
        mean, log_var = self.p_mean_log_variance(model_out, x, i)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * log_var) * noise

    def ddim_sample(
        self, model_out: Tensor, x: Tensor, i: int, noise: Tensor | None, eta: float = 0.0
    ) -> Tensor:
        """One DDIM step (eta = 0: deterministic)."""
        x0, eps = self.x0_and_eps(x, model_out[:, : x.shape[1]], i)
        ac, ac_prev = self._f["ac"][i], self._f["ac_prev"][i]
        sigma = eta * math.sqrt((1 - ac_prev) / (1 - ac)) * math.sqrt(1 - ac / ac_prev)
        mean = x0 * math.sqrt(ac_prev) + math.sqrt(max(1 - ac_prev - sigma**2, 0.0)) * eps
        if i == 0 or sigma == 0.0 or noise is None:
            return mean
        return mean + sigma * noise


class DDPMSampler:
    """The `Sampler` of the CausalSTDiT family: IDDPM ancestral steps (learned-range variance) or DDIM over
    a respaced schedule; the clean past is shown perturbed to `prefix_perturb_t` (of 1000)."""

    def __init__(
        self,
        steps: int,
        kind: str = "iddpm",
        eta: float = 0.0,
        prefix_perturb_t: int = 0,
        *,
        schedule: str = "linear",
        prediction: str = "eps",
        clip_x0: float = 0.0,
    ) -> None:
        if kind not in ("iddpm", "ddim"):
            raise ConfigError(f"sampler {kind!r} is not one of iddpm, ddim")
        self.diffusion = Diffusion(steps, schedule=schedule, prediction=prediction, clip_x0=clip_x0)
        self.kind, self.eta, self.prefix_perturb_t = kind, eta, prefix_perturb_t
        self.num_steps = self.diffusion.num_steps
        self.stochastic = kind == "iddpm" or eta > 0
        self.perturbs = prefix_perturb_t > 0
        # q_sample at prefix_perturb_t with host-side coefficients (indexing a device table would sync)
        ac = float(self.diffusion.base_alphas_cumprod[prefix_perturb_t])
        self._perturb = (math.sqrt(ac), math.sqrt(1 - ac))

    def timesteps(self) -> list[float]:
        return [float(self.diffusion.timestep_map[i]) for i in reversed(range(self.num_steps))]

    def step(self, out: Tensor, x: Tensor, n: int, noise: Tensor | None) -> Tensor:
        i = self.num_steps - 1 - n  # respaced index, counting down to 0
        if self.kind == "iddpm":
            assert noise is not None or i == 0
            return self.diffusion.p_sample(out, x, i, noise)  # type: ignore[arg-type]
        return self.diffusion.ddim_sample(out, x, i, noise, self.eta)

    def perturb(self, clean: Tensor, noise: Tensor) -> Tensor:
        a, b = self._perturb
        return a * clean + b * noise

    @classmethod
    def from_config(cls, config: Any) -> DDPMSampler:
        """From a `SamplingConfig` (steps, sampler, ddim_eta, prefix_perturb_t, schedule, prediction,
        clip_x0)."""
        return cls(
            config.steps,
            config.sampler,
            config.ddim_eta,
            config.prefix_perturb_t,
            schedule=config.schedule,
            prediction=config.prediction,
            clip_x0=config.clip_x0,
        )
