"""Noise-augmented context (issue 12): `train.prefix_noise_max` noises each clip's prefix to its own level
and labels the prefix frames with it; `sampling.prefix_timestep = "perturb"` runs the written (cached)
frames at `prefix_perturb_t`, so inference matches training. The defaults keep today's behaviour."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit import family
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import CacheDenoiser, RecomputeDenoiser
from ca2vdm_cli.sampling.ddpm import Diffusion
from ca2vdm_cli.train import objective as obj
from ca2vdm_cli.train.recipe import TrainSettings
from tests.conftest import caption, tiny_model


def _batch(seed: int, **kw) -> obj.PrefixBatch:
    x0 = torch.randn(6, 4, 9, 8, 8, generator=torch.Generator().manual_seed(99))
    diffusion = Diffusion(1000, schedule="linear_zsnr", prediction="v")
    return obj.make_prefix_batch(x0, 5, torch.Generator().manual_seed(seed), diffusion, **kw)


def test_default_prefix_batch_is_unchanged():
    old = _batch(3, perturb_t=50, tpe_start=1)
    new = _batch(3, perturb_t=50, tpe_start=1, prefix_noise_max=0)
    for name in ("x_in", "frame_t", "prefix_mask", "x_t", "noise", "t"):
        assert torch.equal(getattr(old, name), getattr(new, name)), name
    assert (new.frame_t[:, :5] == 0).all()
    # the reference: the objective as it was before the option (same draws from the same generator)
    x0 = torch.randn(6, 4, 9, 8, 8, generator=torch.Generator().manual_seed(99))
    diffusion = Diffusion(1000, schedule="linear_zsnr", prediction="v")
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = diffusion.q_sample(x0, t, noise)
    prefix = diffusion.q_sample(x0[:, :, :5], 50, torch.randn(x0[:, :, :5].shape, generator=gen))
    assert torch.equal(new.x_in, torch.cat([prefix, x_t[:, :, 5:]], dim=2))
    assert torch.equal(new.frame_t, torch.cat([torch.zeros(6, 5), t[:, None].float().expand(-1, 4)], dim=1))


def test_prefix_noise_levels_are_drawn_in_range_and_given_as_the_prefix_timestep():
    levels = []
    for seed in range(60):
        b = _batch(seed, perturb_t=50, tpe_start=0, prefix_noise_max=300)
        tp = b.frame_t[:, :5]
        assert (tp == tp[:, :1]).all()  # one level per clip, on every prefix frame
        assert torch.equal(b.frame_t[:, 5:], b.t[:, None].float().expand(-1, 4))  # noisy frames unchanged
        assert torch.equal(b.x_in[:, :, 5:], b.x_t[:, :, 5:])
        levels += tp[:, 0].tolist()
    levels_t = torch.tensor(levels)
    assert levels_t.min() >= 0 and levels_t.max() <= 300
    assert torch.equal(levels_t, levels_t.round())  # integer timesteps
    assert levels_t.min() < 30 and levels_t.max() > 270  # the whole range is used
    assert len(set(levels)) > 150


def test_prefix_noise_matches_the_level_it_is_labelled_with():
    diffusion = Diffusion(1000, schedule="linear_zsnr", prediction="v")
    x0 = torch.randn(64, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    b = obj.make_prefix_batch(x0, 2, torch.Generator().manual_seed(5), diffusion, 50, 0, prefix_noise_max=999)
    tp = b.frame_t[:, 0].long()
    ac = diffusion.base_alphas_cumprod[tp].float()
    prefix = b.x_in[:, :, :2]
    # x = √ᾱ x0 + √(1−ᾱ) ε: the residual after removing √ᾱ x0 has std √(1−ᾱ) per clip
    resid = (prefix - ac.sqrt()[:, None, None, None, None] * x0[:, :, :2]).flatten(1).std(dim=1)
    assert torch.allclose(resid, (1 - ac).sqrt(), atol=0.08)


def test_prefix_noise_max_is_validated():
    with pytest.raises(ConfigError):
        TrainSettings(prefix_noise_max=1000)
    with pytest.raises(ConfigError):
        _batch(0, perturb_t=0, tpe_start=0, prefix_noise_max=1000)
    with pytest.raises(ConfigError):
        SamplingConfig(prefix_timestep="half").validate(tiny_model().config)


def test_prefix_write_t_follows_the_card():
    assert family.prefix_write_t(SamplingConfig()) == 0  # default: every existing card
    assert family.prefix_write_t(SamplingConfig(prefix_perturb_t=150)) == 0
    assert family.prefix_write_t(SamplingConfig(prefix_perturb_t=150, prefix_timestep="perturb")) == 150
    model = tiny_model()
    sampling = SamplingConfig(chunk=2, cache_frames=4, prefix_perturb_t=150, prefix_timestep="perturb")
    for engine in ("cache", "recompute", "recompute-full"):
        assert family.make_denoiser(engine, model, 2, sampling).write_t == 150
        assert family.make_denoiser(engine, model, 2, SamplingConfig(chunk=2, cache_frames=4)).write_t == 0


def _cached_vs_training_forward(write_t: float):
    model = tiny_model()
    cfg = model.config
    y, mask = caption(2, cfg)
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 4, 3, *cfg.latent_size, generator=g)
    x = torch.randn(2, 4, 2, *cfg.latent_size, generator=g)
    t = torch.full((2,), 400.0)
    text = model.prepare_text(y, mask, 2)
    with torch.no_grad():
        cache = CacheDenoiser(model, 2, 8, 2, write_t=write_t)
        cache.reset(text)
        cache.write(clean)
        cached = cache.predict(x, t)
        recompute = RecomputeDenoiser(model, 8, write_t=write_t)
        recompute.reset(text)
        recompute.write(clean)
        recomputed = recompute.predict(x, t)
        frame_t = torch.cat([torch.full((2, 3), float(write_t)), t[:, None].expand(-1, 2)], dim=1)
        prefix = torch.cat([torch.ones(2, 3), torch.zeros(2, 2)], dim=1)
        full = model(torch.cat([clean, x], 2), frame_t, y, mask, prefix_mask=prefix)[:, :, 3:]
    return cached, recomputed, full


def test_written_frames_run_at_the_perturbation_timestep():
    cached, recomputed, full = _cached_vs_training_forward(150.0)
    assert (cached - full).abs().max() < 1e-4  # the cache holds what the training forward saw at t_p
    assert (recomputed - full).abs().max() < 1e-4
    zero, _, _ = _cached_vs_training_forward(0.0)
    assert (zero - cached).abs().max() > 1e-3  # the label matters


def test_default_write_is_bit_identical_to_a_t0_write():
    model = tiny_model()
    cfg = model.config
    y, mask = caption(2, cfg)
    clean = torch.randn(2, 4, 3, *cfg.latent_size, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 4, 2, *cfg.latent_size, generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 700.0)
    with torch.no_grad():
        a, b = model.new_cache(2, 8), model.new_cache(2, 8)
        model.write_cache(a, clean, y, mask)  # the default
        model.write_cache(b, clean, y, mask, t=0.0)
        assert torch.equal(model.denoise(a, x, t, y, mask), model.denoise(b, x, t, y, mask))


def test_sample_video_writes_at_prefix_perturb_t(monkeypatch):
    model = tiny_model()
    seen: list[float] = []
    original = model.write_cache

    def spy(cache, clean, y=None, y_mask=None, t=0.0):
        seen.append(float(t))
        return original(cache, clean, y, y_mask, t=t)

    monkeypatch.setattr(model, "write_cache", spy)
    prefix = torch.randn(1, 4, 1, *model.config.latent_size)
    for timestep, expected in (("zero", 0.0), ("perturb", 150.0)):
        seen.clear()
        sampling = SamplingConfig(
            steps=2, chunk=2, cache_frames=4, prefix_perturb_t=150, prefix_timestep=timestep
        )
        list(family.sample_video(model, sampling, num_frames=6, seeds=[0], prefix=prefix))
        assert seen and all(s == expected for s in seen)
