"""v-prediction and the zero-terminal-SNR / cosine schedules (sprites model, issue 12): the v target, x0
recovery from v, both samplers with an exact predictor, the loss, and the card's defaults."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.config import ModelConfig, SamplingConfig
from ca2vdm_cli.sampling.ddpm import DDPMSampler, Diffusion, alphas_cumprod
from ca2vdm_cli.train.losses import training_losses


def test_default_schedule_is_the_official_linear_one():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(alphas_cumprod("linear"), torch.cumprod(1 - betas, 0))
    d = Diffusion(20)
    assert (d.schedule, d.prediction, d.clip_x0) == ("linear", "eps", 0.0)
    s = SamplingConfig()
    assert (s.prediction, s.schedule, s.clip_x0) == ("eps", "linear", 0.0)


@pytest.mark.parametrize("schedule", ["linear_zsnr", "cosine"])
def test_schedules_are_decreasing_and_zsnr_ends_at_zero(schedule):
    ac = alphas_cumprod(schedule)
    assert ac.shape == (1000,) and torch.all(ac[1:] < ac[:-1])
    assert 0.99 < float(ac[0]) <= 1.0
    if schedule == "linear_zsnr":
        assert float(ac[-1]) == 0.0
        torch.testing.assert_close(ac[0], alphas_cumprod("linear")[0])  # same first step
    else:
        assert float(ac[-1]) < 1e-4


def test_v_target_formula_and_exact_x0_recovery_at_random_t():
    d = Diffusion(1000, schedule="linear_zsnr", prediction="v")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 3, 4, 4, generator=g), torch.randn(6, 4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 17, 400, 731, 998, 999])
    v = d.target(x0, t, noise)
    ac = alphas_cumprod("linear_zsnr")[t].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, ac.sqrt() * noise - (1 - ac).sqrt() * x0)
    x_t = d.q_sample(x0, t, noise)
    for b, tb in enumerate(t.tolist()):  # 1000 steps: respaced index == original t
        x0_hat, eps_hat = d.x0_and_eps(x_t[b : b + 1], v[b : b + 1], tb)
        torch.testing.assert_close(x0_hat, x0[b : b + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eps_hat, noise[b : b + 1], atol=1e-5, rtol=1e-5)
    assert torch.equal(x_t[-1], noise[-1])  # zero terminal SNR: x_999 is pure noise
    torch.testing.assert_close(v[-1], -x0[-1])  # … and v = −x0 there


def exact_v(d: Diffusion, x: torch.Tensor, x0: torch.Tensor, i: int) -> torch.Tensor:
    """The v that exactly explains x at respaced step i given x0."""
    a, b = d.alphas_cumprod[i].sqrt().float(), (1 - d.alphas_cumprod[i]).sqrt().float()
    eps = (x - a * x0) / b
    return a * eps - b * x0


@pytest.mark.parametrize("kind", ["ddim", "iddpm"])
@pytest.mark.parametrize("schedule", ["linear_zsnr", "cosine", "linear"])
def test_sampler_with_a_perfect_oracle_returns_the_clean_sample(kind, schedule):
    sampler = DDPMSampler(12, kind, schedule=schedule, prediction="v")
    d = sampler.diffusion
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 2, 4, 4, generator=g)
    x = torch.randn(2, 4, 2, 4, 4, generator=g)
    for n in range(sampler.num_steps):
        i = sampler.num_steps - 1 - n
        out = torch.cat([exact_v(d, x, x0, i), torch.zeros_like(x)], 1)  # learned-range r = 0
        x = sampler.step(out, x, n, torch.randn(x.shape, generator=g))
    # the last IDDPM step is the posterior mean at t = 0 (no noise), so both end on x0
    torch.testing.assert_close(x, x0, atol=2e-3, rtol=1e-3)


def test_clip_x0_clamps_the_prediction_and_keeps_eps_consistent():
    d = Diffusion(10, schedule="linear_zsnr", prediction="v", clip_x0=1.0)
    x, v = torch.randn(1, 4, 1, 2, 2) * 3, torch.randn(1, 4, 1, 2, 2) * 3
    for i in (9, 5, 0):
        x0, eps = d.x0_and_eps(x, v, i)
        assert float(x0.abs().max()) <= 1.0
        if i < 9:  # ᾱ > 0: x = √ᾱ x0 + √(1−ᾱ) ε still holds
            a = d.alphas_cumprod[i].sqrt().float()
            torch.testing.assert_close(a * x0 + (1 - a**2).sqrt() * eps, x, atol=1e-4, rtol=1e-4)
    unclipped = Diffusion(10, schedule="linear_zsnr", prediction="v")
    assert float(unclipped.x0_and_eps(x, v, 9)[0].abs().max()) > 1.0


def test_v_loss_is_the_v_mse_and_the_vb_term_stays_finite_at_zero_snr():
    d = Diffusion(1000, schedule="linear_zsnr", prediction="v")
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 4, 5, 4, 4, generator=g), torch.randn(3, 4, 5, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    out = torch.cat(
        [torch.randn(3, 4, 5, 4, 4, generator=g), torch.rand(3, 4, 5, 4, 4, generator=g) * 2 - 1], 1
    )
    mask = torch.ones(3, 5)
    losses = training_losses(d, out, x0, x_t, t, noise, mask)
    expected = ((d.target(x0, t, noise) - out[:, :4]) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(losses["mse"], expected)
    assert torch.all(torch.isfinite(losses["vb"])) and torch.all(losses["vb"] >= 0)
    perfect = torch.cat([d.target(x0, t, noise), out[:, 4:]], 1)
    assert torch.all(training_losses(d, perfect, x0, x_t, t, noise, mask)["mse"] < 1e-10)


def test_eps_with_zero_terminal_snr_is_refused():
    with pytest.raises(ConfigError, match="prediction"):
        Diffusion(10, schedule="linear_zsnr", prediction="eps")
    with pytest.raises(ConfigError, match="linear_zsnr"):
        SamplingConfig(schedule="linear_zsnr").validate(ModelConfig())
    with pytest.raises(ConfigError, match="prediction"):
        SamplingConfig(prediction="x").validate(ModelConfig())
    with pytest.raises(ConfigError, match="schedule"):
        SamplingConfig(schedule="sigmoid", prediction="v").validate(ModelConfig())
    SamplingConfig(schedule="linear_zsnr", prediction="v", clip_x0=3.0).validate(ModelConfig())


def test_training_reads_the_prediction_and_schedule_from_the_card():
    from types import SimpleNamespace

    from ca2vdm_cli.train.run import training_diffusion

    card = SimpleNamespace(sampling=SamplingConfig(prediction="v", schedule="linear_zsnr"))
    d = training_diffusion(card)
    assert (d.num_steps, d.prediction, d.schedule) == (1000, "v", "linear_zsnr")
    sampler = DDPMSampler.from_config(card.sampling)
    assert sampler.diffusion.prediction == "v"
    torch.testing.assert_close(sampler.diffusion.base_alphas_cumprod, d.base_alphas_cumprod)
    # the prefix perturbation at inference uses the same schedule as training's q_sample
    a = float(d.base_alphas_cumprod[card.sampling.prefix_perturb_t])
    assert sampler._perturb == pytest.approx((a**0.5, (1 - a) ** 0.5))
