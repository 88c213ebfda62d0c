"""GPU-only checks of the fast paths (skipped without CUDA): the AR loop issues no host synchronisation,
a CUDA-graph replay and a compiled step agree with eager bf16, and the memory of the cache engine is flat."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.accel import Acceleration, GraphedStep, accelerate
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import make_denoiser as make_engine
from ca2vdm_cli.models.stdit.family import sample_video
from tests.conftest import caption, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CONFIG = SamplingConfig(steps=4, chunk=4, cache_frames=8, cfg_scale=2.0)


def inputs(model):
    """Prefix and caption already on the device (moving them there is a synchronising copy)."""
    y, mask = caption(1, model.config)
    prefix = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return dict(prefix=prefix.cuda(), y=y.cuda(), y_mask=mask.cuda())


def frames(model, engine, n=24, config=CONFIG, given=None):
    given = given or inputs(model)
    return list(sample_video(model, config, num_frames=n, seeds=[0], engine=engine, **given))


def test_the_loop_never_synchronises_with_the_host():
    model = tiny_model().cuda().to(torch.bfloat16)
    given = inputs(model)
    for name in ("cache", "recompute", "recompute-full"):
        frames(model, name, given=given)  # warm-up: lazy CUDA/cuBLAS initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            frames(model, name, given=given)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_replay_matches_eager_bf16():
    model = tiny_model().cuda().to(torch.bfloat16)
    eager = frames(model, "cache")
    graphed = make_engine("cache", model, 2, 8, chunk_frames=4, step=GraphedStep(model.run_denoise))
    replayed = frames(model, graphed)
    assert len(graphed.step.graphs) == 3  # queue sizes 1, 5, 8 (full)
    for a, b in zip(eager, replayed, strict=True):
        assert torch.allclose(a, b, atol=2e-2, rtol=0), (a - b).abs().max()


@pytest.mark.slow
def test_compiled_and_graphed_step_matches_eager():
    model = tiny_model().cuda().to(torch.bfloat16)
    eager = frames(model, "cache")
    step, forward = accelerate(model, Acceleration(compile=True, cuda_graphs=True), torch.device("cuda"))
    fast = frames(model, make_engine("cache", model, 2, 8, chunk_frames=4, step=step))
    for a, b in zip(eager, fast, strict=True):
        assert torch.allclose(a, b, atol=5e-2, rtol=0), (a - b).abs().max()
    slow = frames(model, make_engine("recompute", model, 2, 8, forward=forward), n=12)
    assert all(torch.isfinite(c).all() for c in slow)


def test_cache_engine_peak_memory_is_flat_once_the_queue_is_full():
    model = tiny_model().cuda().to(torch.bfloat16)
    engine = make_engine("cache", model, 2, 8, chunk_frames=4)
    peaks = []
    gen = sample_video(model, CONFIG, num_frames=48, seeds=[0], engine=engine, **inputs(model))
    torch.cuda.reset_peak_memory_stats()
    for _ in gen:
        peaks.append(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    assert max(peaks[3:]) <= min(peaks[3:]) * 1.05
