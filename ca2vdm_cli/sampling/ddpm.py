"""Gaussian diffusion math: the linear-beta schedule, IDDPM respacing, ancestral sampling with learned-range
variance, DDIM, q_sample, and the hybrid (masked MSE + VB) training loss. Pure tensor functions; no model.

Coefficients are computed in float64 and applied as float32 scalars, as IDDPM does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ca2vdm_cli.errors import ConfigError


def linear_betas(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    scale = 1000 / num_train_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_train_steps, dtype=torch.float64)


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
    """A 1000-step linear-beta DDPM respaced to `num_steps` (timestep_map[i] = original t of step i)."""

    def __init__(
        self,
        num_steps: int = 100,
        num_train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        self.num_train_steps = num_train_steps
        base_betas = linear_betas(num_train_steps, beta_start, beta_end)
        self.base_alphas_cumprod = torch.cumprod(1 - base_betas, 0)  # (1000,) float64
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

    # ------------------------------------------------------------------ reverse process
    def predict_x0(self, x: Tensor, eps: Tensor, i: int) -> Tensor:
        return self._f["sqrt_recip_ac"][i] * x - self._f["sqrt_recipm1_ac"][i] * eps

    def p_mean_log_variance(self, model_out: Tensor, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p(x_{i-1} | x_i); model_out (B, 2c, …) = [ε̂ | v] (learned range) or ε̂."""
        c = x.shape[1]
        eps = model_out[:, :c]
        if model_out.shape[1] == 2 * c:
            frac = (model_out[:, c:] + 1) / 2
            log_var = frac * self._f["max_log"][i] + (1 - frac) * self._f["min_log"][i]
        else:  # fixed small variance
            log_var = torch.full_like(x, self._f["min_log"][i])
        x0 = self.predict_x0(x, eps, i)
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
        eps = model_out[:, : x.shape[1]]
        x0 = self.predict_x0(x, eps, i)
        ac, ac_prev = self._f["ac"][i], self._f["ac_prev"][i]
        sigma = eta * math.sqrt((1 - ac_prev) / (1 - ac)) * math.sqrt(1 - ac / ac_prev)
        mean = x0 * math.sqrt(ac_prev) + math.sqrt(max(1 - ac_prev - sigma**2, 0.0)) * eps
        if i == 0 or sigma == 0.0 or noise is None:
            return mean
        return mean + sigma * noise

    # ------------------------------------------------------------------ training loss
    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0) for per-sample respaced steps t (B,)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        ac = self.alphas_cumprod.to(x0.device)[t]
        ac_prev = self.alphas_cumprod_prev.to(x0.device)[t]
        betas = self.betas.to(x0.device)[t]
        coef1 = (betas * ac_prev.sqrt() / (1 - ac)).float().view(shape)
        coef2 = ((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)).float().view(shape)
        log_var = self.posterior_log_variance_clipped.to(x0.device)[t].float().view(shape)
        return coef1 * x0 + coef2 * x_t, log_var.expand_as(x0)

    def model_mean_log_variance(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample-t version of `p_mean_log_variance` (training)."""
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        c = x_t.shape[1]
        eps, v = model_out[:, :c], model_out[:, c:]
        min_log = self.posterior_log_variance_clipped.to(x_t.device)[t].float().view(shape)
        max_log = torch.log(self.betas.to(x_t.device)[t]).float().view(shape)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        ac = self.alphas_cumprod.to(x_t.device)[t]
        x0 = (1 / ac).sqrt().float().view(shape) * x_t - (1 / ac - 1).sqrt().float().view(shape) * eps
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var

    def training_losses(
        self, model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor, frame_mask: Tensor
    ) -> dict[str, Tensor]:
        """Hybrid loss per sample: masked MSE on ε plus the masked VB term (λ = 1, spec §5.1).

        model_out (B, 2c, T, H, W); x0, x_t, noise (B, c, T, H, W); t (B,) training timesteps;
        frame_mask (B, T) 1 on frames that carry loss (the noisy ones). Returns per-sample tensors (B,).
        """
        c = x0.shape[1]
        m = frame_mask.to(x0.dtype)[:, None, :, None, None].expand_as(x0)  # (B, c, T, H, W)
        denom = m.sum(dim=(1, 2, 3, 4)).clamp(min=1)
        mse = ((noise - model_out[:, :c]) ** 2 * m).sum(dim=(1, 2, 3, 4)) / denom
        out = {"mse": mse, "loss": mse}
        if model_out.shape[1] == 2 * c:
            frozen = torch.cat([model_out[:, :c].detach(), model_out[:, c:]], dim=1)  # VB trains only v
            true_mean, true_log_var = self.q_posterior(x0, x_t, t)
            mean, log_var = self.model_mean_log_variance(frozen, x_t, t)
            kl = normal_kl(true_mean, true_log_var, mean, log_var) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var) / math.log(2.0)
            first = (t == 0).view(-1, 1, 1, 1, 1)
            vb = (torch.where(first, nll, kl) * m).sum(dim=(1, 2, 3, 4)) / denom
            out["vb"] = vb
            out["loss"] = mse + vb
        return out


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of x in [-1, 1] discretised to 256 bins (IDDPM's decoder NLL at t = 0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def guide(model_out: Tensor, scale: float, channels: int) -> Tensor:
    """Classifier-free guidance on rows [uncond; cond]: ε = ε_u + s(ε_c − ε_u); the variance comes from cond.
    `channels` is the latent channel count c (model_out has c or 2c channels)."""
    uncond, cond = model_out.chunk(2)
    c = channels
    eps = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([eps, cond[:, c:]], dim=1)
