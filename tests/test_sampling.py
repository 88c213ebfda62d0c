"""The autoregressive loop: cached vs no-cache baseline, determinism, replay (resume), guidance, T2V start."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.loop import chunk_lengths
from ca2vdm_cli.errors import ConfigError
from ca2vdm_cli.models.stdit.config import SamplingConfig
from tests.conftest import sample_chunks, tiny_model


def run(model, config, frames=24, seeds=(1, 2), engine="cache", prefix_frames=1, **kw):
    return sample_chunks(model, config, engine, frames=frames, seeds=seeds, prefix_frames=prefix_frames, **kw)


@pytest.mark.parametrize("perturb", [0, 50])
def test_no_cache_baseline_equals_cached_loop_until_the_cache_is_full(perturb):
    model = tiny_model(dtype=torch.float64)
    config = SamplingConfig(steps=6, chunk=8, cache_frames=25, prefix_perturb_t=perturb)
    cached = run(model, config, frames=40)
    baseline = run(model, config, frames=40, engine="recompute")
    # chunks 0-3 are denoised with 1, 9, 17, 25 clean frames: the cache is not yet evicting
    for a, b in zip(cached[:4], baseline[:4], strict=True):
        assert (a - b).abs().max() <= 1e-4
    assert (cached[4] - baseline[4]).abs().max() > 1e-3  # after eviction the two engines differ


def test_same_seed_same_frames_and_independent_of_batch_company():
    model = tiny_model(dtype=torch.float64)
    config = SamplingConfig(steps=4, chunk=4, cache_frames=8)
    a = run(model, config, frames=8, seeds=(5, 6))
    b = run(model, config, frames=8, seeds=(5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = run(model, config, frames=8, seeds=(5, 7))
    assert torch.allclose(a[0][0], c[0][0], atol=1e-9) and not torch.allclose(a[0][1], c[0][1])


def test_replayed_chunks_resume_to_the_same_video():
    model = tiny_model()
    config = SamplingConfig(steps=4, chunk=4, cache_frames=9)
    full = run(model, config, frames=20, seeds=(3,))
    resumed = run(model, config, frames=20, seeds=(3,), replay=full[:3])
    assert len(resumed) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[3:], resumed, strict=True))


def test_chunk_lengths_and_short_last_chunk():
    assert chunk_lengths(20, 8) == [8, 8, 4]
    assert chunk_lengths(16, 8) == [8, 8]
    model = tiny_model()
    out = run(model, SamplingConfig(steps=3, chunk=8, cache_frames=16), frames=11, seeds=(0,))
    assert [c.shape[2] for c in out] == [8, 3]


def test_ddim_and_guidance_and_text_to_video_start():
    model = tiny_model()
    steps = []
    config = SamplingConfig(steps=3, sampler="ddim", chunk=4, cache_frames=8, cfg_scale=3.0)
    out = run(
        model, config, frames=8, seeds=(0,), prefix_frames=0, on_step=lambda k, i, n: steps.append((k, i, n))
    )
    assert [c.shape for c in out] == [(1, 4, 4, 8, 8)] * 2
    assert steps == [(k, i, 3) for k in range(2) for i in range(1, 4)]
    assert all(torch.isfinite(c).all() for c in out)
    unguided = run(
        model,
        SamplingConfig(steps=3, sampler="ddim", chunk=4, cache_frames=8),
        frames=8,
        seeds=(0,),
        prefix_frames=0,
    )
    assert not torch.allclose(out[0], unguided[0])


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(cache_frames=30), "exceeds the model's 33 temporal positions"),
        (dict(steps=1), "iddpm sampler needs"),
        (dict(sampler="euler"), "not one of"),
        (dict(prefix_perturb_t=1000), "0..999"),
    ],
)
def test_bad_sampling_config_is_refused(changes, pattern):
    model = tiny_model()
    with pytest.raises(ConfigError, match=pattern):
        run(
            model,
            SamplingConfig(**{**dict(steps=3, chunk=8, cache_frames=25), **changes}),
            frames=8,
            seeds=(0,),
        )


def test_guidance_needs_a_text_model():
    model = tiny_model(caption_channels=0)
    with pytest.raises(ConfigError, match="needs a text-conditioned model"):
        run(model, SamplingConfig(steps=3, cfg_scale=2.0), frames=8, seeds=(0,))
