"""The causal Wan family through the shared AR loop (`engine.loop`): the cached denoiser equals the
no-cache baseline over several blocks (global attention, and a window with a sink after evictions), one
block equals the sampler's own reference `sample_block`, and bad settings are one clear error."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.noise import seeded_noise
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from ca2vdm_cli.models.wan.family import FlowSampler, WanSampling, sample_video
from ca2vdm_cli.sampling.flow import CAUSVID, SELF_FORCING, FlowSchedule, sample_block

FRAME = (2, 2)  # latent 2x2 -> one token per frame with the 2x2 patch: cheap


def tiny(**overrides):
    torch.manual_seed(0)
    cfg = WanConfig.tiny(num_layers=2, dim=96, ffn_dim=128, num_heads=2, num_frame_per_block=2, **overrides)
    model = CausalWan(cfg).eval()
    with torch.no_grad():  # the official init zeroes some projections; random values exercise every path
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def context(model, batch=1):
    return torch.randn(batch, 5, model.cfg.text_dim, generator=torch.Generator().manual_seed(1))


def sampling(model, schedule: FlowSchedule = SELF_FORCING, **changes):
    """The run settings of `model`: its own block, window and sink, and the schedule as card data."""
    cfg = model.cfg
    return WanSampling(
        timesteps=schedule.steps,
        shift=schedule.shift,
        warp=schedule.warp,
        chunk=cfg.num_frame_per_block,
        window=cfg.local_attn_size,
        sink_frames=cfg.sink_size,
        **changes,
    )


def video(model, engine, frames=6, seeds=(0,), schedule=SELF_FORCING, max_frames=8):
    chunks = sample_video(
        model,
        sampling(model, schedule, max_frames=max_frames),
        num_frames=frames,
        seeds=list(seeds),
        latent_size=FRAME,
        y=context(model, len(seeds)),
        engine=engine,
    )
    return torch.cat(list(chunks), dim=2)


@pytest.mark.parametrize("overrides", [{}, dict(local_attn_size=5, sink_size=1)])
def test_cached_loop_equals_recomputing_the_past_at_every_step(overrides):
    model = tiny(**overrides)
    cached = video(model, "cache", frames=10)  # 5 blocks: the window rolls, the sink stays
    recomputed = video(model, "recompute", frames=10)
    assert cached.shape == (1, 16, 10, *FRAME)
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)


def test_one_block_equals_the_reference_flow_sampler():
    model = tiny()
    ctx = context(model)
    out = video(model, "cache", frames=2, schedule=CAUSVID)
    cache = model.new_cache(batch_size=1, max_frames=8, frame_shape=FRAME)
    noise = seeded_noise([0], "init", 0, (16, 2, *FRAME))
    steps = seeded_noise([0], "step", 0, (3, 16, 2, *FRAME))  # the loop's per-step noise of chunk 0
    N = FlowSampler(CAUSVID).num_steps
    ref = sample_block(
        lambda x, t: model.denoise(cache, x, t, ctx, 0), noise, CAUSVID, lambda j: steps[:, N - j]
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_seeds_are_independent_of_the_batch():
    model = tiny()
    torch.manual_seed(0)
    alone = video(model, "cache", frames=4, seeds=(3,))
    # the same context row for both videos, so only the seed differs
    both = torch.cat(
        list(
            sample_video(
                model,
                sampling(model, max_frames=8),
                num_frames=4,
                seeds=[5, 3],
                latent_size=FRAME,
                y=context(model).expand(2, -1, -1).contiguous(),
            )
        ),
        dim=2,
    )
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_bad_settings_are_one_clear_error():
    model = tiny()
    with pytest.raises(ConfigError, match="blocks of 2 latent frames; use 4"):
        video(model, "cache", frames=3)
    with pytest.raises(ConfigError, match="without classifier-free guidance"):
        sampling(model, cfg_scale=5.0).validate(model.cfg)
    with pytest.raises(ConfigError, match="trained with blocks of 2 latent frames"):
        WanSampling(chunk=3).validate(model.cfg)
    with pytest.raises(ConfigError, match="engine 'fast'"):
        video(model, "fast")
