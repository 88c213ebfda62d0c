"""The fast paths of the engines compute exactly what the plain paths compute: a prepared caption, a
per-AR-step plan, the chunk scratch slots next to the queue, the sync-free `num_prefix` forward, and a
captured-graph step (with a stand-in for CUDA graphs that replays from the captured buffers). And the hot
loop never reads a tensor back to the host: it runs on the meta device, where any such read raises."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.accel import GraphedStep
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import make_denoiser as make_engine
from tests.conftest import caption, sample_chunks, tiny_model


def run(model, config, engine, frames=20):
    return sample_chunks(model, config, engine, frames=frames, seeds=(1,))


@pytest.mark.parametrize("engine", ["cache", "recompute", "recompute-full"])
@pytest.mark.parametrize(
    "overrides", [{}, dict(tpe_mode="rope", pe_frames=2), dict(temporal_attention="partial")]
)
def test_the_whole_loop_runs_without_host_synchronisation(engine, overrides):
    """On the meta device `.item()`, `bool(tensor)`, `torch.equal` and `.tolist()` raise: the loop —
    caption, cache writes with prefix perturbation, denoising steps with CFG, sampler — has none."""
    model = tiny_model(**overrides).to("meta")
    config = SamplingConfig(steps=2, chunk=4, cache_frames=4, cfg_scale=2.0)
    out = run(model, config, engine, frames=12)
    assert [c.shape for c in out] == [(1, 4, 4, 8, 8)] * 3 and out[0].device.type == "meta"


def test_prepared_caption_gives_the_same_outputs():
    model = tiny_model()
    y, mask = caption(2, model.config)
    text = model.prepare_text(y, mask, 2)
    assert text is not None and text.kv is not None and len(text.kv) == model.config.depth
    x, t = torch.randn(2, 4, 8, 8, 8), torch.full((2,), 400.0)
    raw, cached_raw = model.new_cache(2, 25), model.new_cache(2, 25)
    with torch.no_grad():
        model.write_cache(
            raw, torch.randn(2, 4, 9, 8, 8, generator=torch.Generator().manual_seed(0)), y, mask
        )
        model.write_cache(
            cached_raw, torch.randn(2, 4, 9, 8, 8, generator=torch.Generator().manual_seed(0)), text
        )
        assert torch.equal(raw.k, cached_raw.k)
        assert torch.allclose(
            model.denoise(raw, x, t, y, mask), model.denoise(cached_raw, x, t, text), atol=1e-6
        )
        assert torch.allclose(model(x, t, y, mask), model(x, t, text), atol=1e-6)
    with pytest.raises(ValueError, match="carries its own mask"):
        model.denoise(raw, x, t, text, mask)


def test_num_prefix_forward_equals_the_prefix_mask_forward():
    model = tiny_model()
    B, T, P = 2, 10, 3
    x = torch.randn(B, 4, T, 8, 8)
    t = torch.cat([torch.zeros(B, P), torch.full((B, T - P), 300.0)], dim=1)
    prefix = torch.zeros(B, T)
    prefix[:, :P] = 1
    y, mask = caption(B, model.config)
    with torch.no_grad():
        a = model(x, t, y, mask, prefix_mask=prefix, tpe_start=5)
        b = model(x, t, y, mask, num_prefix=P, tpe_start=5)
        c = model(x, t, y, mask, num_prefix=0)
        d = model(x, t, y, mask)
    assert torch.equal(a, b) and torch.equal(c, d)
    with pytest.raises(ValueError, match="num_prefix"):
        model(x, t, num_prefix=T + 1)


def test_scratch_slots_give_identical_outputs_and_leave_the_queue_alone():
    model = tiny_model(dtype=torch.float64)
    y, mask = caption(1, model.config, dtype=torch.float64)
    plain, scratch = model.new_cache(1, 9), model.new_cache(1, 9, chunk_frames=4)
    D, S, C = model.config.depth, model.config.tokens_per_frame, model.config.hidden_size
    assert scratch.nbytes == plain.nbytes and scratch.scratch_nbytes == 2 * D * S * C * 4 * 8  # K|V, fp64
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in (1, 4, 4, 4, 4):  # the queue fills at 9 frames and then evicts
            clean = torch.randn(1, 4, n, 8, 8, generator=g, dtype=torch.float64)
            model.write_cache(plain, clean, y, mask)
            model.write_cache(scratch, clean, y, mask)
            x, t = torch.randn(1, 4, 4, 8, 8, generator=g, dtype=torch.float64), torch.full((1,), 250.0)
            queue = scratch.k.clone()
            assert torch.equal(model.denoise(plain, x, t, y, mask), model.denoise(scratch, x, t, y, mask))
            assert torch.equal(scratch.k, queue) and torch.equal(scratch.k, plain.k)
    assert scratch.num_cached == 9


class ReplayFromBuffers:
    """A stand-in for CUDA graphs: `replay` re-runs the captured function, which reads only the buffers
    bound at capture time, and writes into the captured output — so a missed input copy shows up."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, fn):
        self.captures += 1
        out = fn()
        capture = self

        class Graph:
            def replay(self) -> None:
                out.copy_(fn())
                capture.replays += 1

        return Graph(), out

    replays = 0


@pytest.mark.parametrize("overrides", [{}, dict(tpe_mode="rope", pe_frames=2)])
def test_graphed_step_replays_exactly_what_eager_computes(overrides):
    model = tiny_model(**overrides)
    config = SamplingConfig(steps=3, chunk=4, cache_frames=5, cfg_scale=2.0)
    eager = run(model, config, make_engine("cache", model, 2, 5, chunk_frames=4), frames=12)
    backend = ReplayFromBuffers()
    graphed = make_engine(
        "cache", model, 2, 5, chunk_frames=4, step=GraphedStep(model.run_denoise, capture=backend)
    )
    first = run(model, config, graphed, frames=12)
    graphed.reset()
    second = run(model, config, graphed, frames=12)  # a new video replays the same graphs
    # queue sizes 1, 5 (full), 5 (full, ring rotated: new RoPE order) → two plan keys, captured once each
    assert backend.captures == 2 and backend.replays == 2 * 3 * 3
    for a, b, c in zip(eager, first, second, strict=True):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(b, c)


@pytest.mark.slow
def test_the_cached_step_compiles_to_one_graph_per_plan_key():
    """Dynamo traces `run_denoise` without graph breaks (no host reads) and reuses the graph for every AR step
    and video with the same shapes: queue sizes 1, 5, 5 (full) → two graphs, however many steps."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model()
    step = torch.compile(model.run_denoise, backend="eager", dynamic=False, fullgraph=True)
    engine = make_engine("cache", model, 2, 5, chunk_frames=4, step=step)
    config = SamplingConfig(steps=2, chunk=4, cache_frames=5, cfg_scale=2.0)
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = run(model, config, make_engine("cache", model, 2, 5, chunk_frames=4), frames=16)
    for _ in range(2):
        engine.reset()
        compiled = run(model, config, engine, frames=16)
    assert counters["stats"]["unique_graphs"] == 2
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, compiled, strict=True))


@pytest.mark.slow
def test_the_compiled_full_forward_serves_the_recompute_engines():
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model()
    forward = torch.compile(model.forward, backend="eager")
    config = SamplingConfig(steps=2, chunk=4, cache_frames=5)
    for name in ("recompute", "recompute-full"):
        eager = run(model, config, name, frames=16)
        compiled = run(model, config, make_engine(name, model, 1, 5, forward=forward), frames=16)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, compiled, strict=True))
