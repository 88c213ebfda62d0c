"""The sampler math against closed forms (§5.1)."""

from __future__ import annotations

import math

import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.sampling.ddpm import Diffusion, space_timesteps
from ca2vdm_cli.sampling.guidance import guide
from ca2vdm_cli.train.losses import training_losses


def base_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_respacing_matches_iddpm():
    steps = space_timesteps(1000, 100)
    assert steps[:8] == [0, 10, 20, 30, 40, 50, 61, 71]
    assert steps[-1] == 999 and len(steps) == 100 == len(set(steps))
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ConfigError):
        space_timesteps(1000, 0)


@pytest.mark.parametrize("i", [99, 57, 5, 1, 0])
def test_iddpm_step_is_the_closed_form_posterior_with_learned_range_variance(i):
    diffusion = Diffusion(100)
    g = torch.Generator().manual_seed(i)
    x, eps, noise = (torch.randn(2, 4, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.rand(2, 4, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    got = diffusion.p_sample(torch.cat([eps, v], 1).float(), x.float(), i, noise.float())

    ac = base_alphas_cumprod()
    t, t_prev = diffusion.timestep_map[i], diffusion.timestep_map[i - 1] if i > 0 else None
    ab, ab_prev = ac[t], ac[t_prev] if t_prev is not None else torch.tensor(1.0, dtype=torch.float64)
    beta = 1 - ab / ab_prev
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
    if i == 0:
        expected = mean
    else:
        post_var = beta * (1 - ab_prev) / (1 - ab)
        frac = (v + 1) / 2
        log_var = frac * torch.log(beta) + (1 - frac) * torch.log(post_var)
        expected = mean + torch.exp(0.5 * log_var) * noise
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_ddim_eta0_is_deterministic_and_recovers_x0_with_an_exact_predictor():
    diffusion = Diffusion(20)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 2, 4, 4, generator=g)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    ac = base_alphas_cumprod()
    for i in reversed(range(20)):
        ab = ac[diffusion.timestep_map[i]].float()
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the ε that exactly explains x given x0
        a = diffusion.ddim_sample(eps, x, i, torch.randn(x.shape, generator=g), eta=0.0)
        b = diffusion.ddim_sample(eps, x, i, torch.randn(x.shape, generator=g), eta=0.0)
        assert torch.equal(a, b)
        x = a
    torch.testing.assert_close(x, x0, atol=1e-4, rtol=1e-4)


def test_q_sample_on_the_original_schedule():
    diffusion = Diffusion(100)
    x0, noise = torch.randn(2, 4, 1, 4, 4), torch.randn(2, 4, 1, 4, 4)
    ab = base_alphas_cumprod()[50].float()
    torch.testing.assert_close(diffusion.q_sample(x0, 50, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    per_sample = diffusion.q_sample(x0, torch.tensor([0, 999]), noise)
    ac = base_alphas_cumprod()
    torch.testing.assert_close(
        per_sample[1], ac[999].sqrt().float() * x0[1] + (1 - ac[999]).sqrt().float() * noise[1]
    )


def test_guidance_combines_epsilon_and_keeps_the_conditional_variance():
    uncond, cond = torch.randn(2, 8, 1, 2, 2), torch.randn(2, 8, 1, 2, 2)
    out = guide(torch.cat([uncond, cond]), 4.0, channels=4)
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    assert torch.equal(out[:, 4:], cond[:, 4:])
    torch.testing.assert_close(guide(torch.cat([uncond, cond]), 1.0, channels=4)[:, :4], cond[:, :4])


def test_training_loss_ignores_masked_frames():
    diffusion = Diffusion(1000)
    x0, noise = torch.randn(2, 4, 5, 4, 4), torch.randn(2, 4, 5, 4, 4)
    t = torch.tensor([10, 700])
    x_t = diffusion.q_sample(x0, t, noise)
    out = torch.randn(2, 8, 5, 4, 4).clamp(-1, 1)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    a = training_losses(diffusion, out, x0, x_t, t, noise, mask)
    out2 = out.clone()
    out2[0, :, :2] += 5.0  # prefix frames of sample 0
    out2[1, :, :1] -= 3.0
    b = training_losses(diffusion, out2, x0, x_t, t, noise, mask)
    assert torch.equal(a["loss"], b["loss"])
    expected_mse = ((noise - out[:, :4]) ** 2)[0, :, 2:].mean()
    torch.testing.assert_close(a["mse"][0], expected_mse)
    assert torch.all(torch.isfinite(a["vb"])) and torch.all(a["vb"] >= 0)
    assert math.isclose(float(a["loss"][1]), float(a["mse"][1] + a["vb"][1]), rel_tol=1e-6)
