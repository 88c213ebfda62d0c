"""The hybrid diffusion training loss (IDDPM): masked MSE on the prediction (ε, or v with
`Diffusion.prediction = "v"`) plus the variational bound that trains the learned variance. Written against
the schedule of `sampling.ddpm.Diffusion`; inference never imports it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ca2vdm_cli.sampling.ddpm import Diffusion


def q_posterior(d: Diffusion, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x0) for per-sample respaced steps t (B,)."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    ac = d.alphas_cumprod.to(x0.device)[t]
    ac_prev = d.alphas_cumprod_prev.to(x0.device)[t]
    betas = d.betas.to(x0.device)[t]
    coef1 = (betas * ac_prev.sqrt() / (1 - ac)).float().view(shape)
    coef2 = ((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)).float().view(shape)
    log_var = d.posterior_log_variance_clipped.to(x0.device)[t].float().view(shape)
    return coef1 * x0 + coef2 * x_t, log_var.expand_as(x0)


def model_mean_log_variance(d: Diffusion, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance of p(x_{t-1} | x_t) for per-sample respaced steps t (B,); model_out = [pred | r]
    with pred = ε̂ or v̂ (as `d.prediction`) and r the learned variance range."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    c = x_t.shape[1]
    pred, v = model_out[:, :c], model_out[:, c:]
    min_log = d.posterior_log_variance_clipped.to(x_t.device)[t].float().view(shape)
    max_log = torch.log(d.betas.to(x_t.device)[t]).float().view(shape)
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    mean, _ = q_posterior(d, d.x0_at(x_t, pred, t), x_t, t)
    return mean, log_var


def training_losses(
    d: Diffusion,
    model_out: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    frame_mask: Tensor,
    weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """Hybrid loss per sample: masked MSE on the prediction target (ε or v, `d.target`) plus the masked VB
    term (λ = 1, as IDDPM).

    model_out (B, 2c, T, H, W); x0, x_t, noise (B, c, T, H, W); t (B,) training timesteps (d has 1000 steps);
    frame_mask (B, T) 1 on frames that carry loss (the noisy ones); `weight` (B, 1, T, H, W) optional
    per-pixel weights of the MSE term (a weighted mean: the loss scale does not change; the VB term stays
    unweighted). Returns per-sample tensors (B,).
    """
    c = x0.shape[1]
    m = frame_mask.to(x0.dtype)[:, None, :, None, None].expand_as(x0)  # (B, c, T, H, W)
    denom = m.sum(dim=(1, 2, 3, 4)).clamp(min=1)
    target = d.target(x0, t, noise)  # (B, c, T, H, W)
    wm, w_denom = m, denom
    if weight is not None:
        wm = m * weight.to(x0.dtype)  # (B, c, T, H, W)
        w_denom = wm.sum(dim=(1, 2, 3, 4)).clamp(min=1e-12)
    mse = ((target - model_out[:, :c]) ** 2 * wm).sum(dim=(1, 2, 3, 4)) / w_denom
    out = {"mse": mse, "loss": mse}
    if model_out.shape[1] == 2 * c:
        frozen = torch.cat([model_out[:, :c].detach(), model_out[:, c:]], dim=1)  # VB trains only v
        true_mean, true_log_var = q_posterior(d, x0, x_t, t)
        mean, log_var = model_mean_log_variance(d, frozen, x_t, t)
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
