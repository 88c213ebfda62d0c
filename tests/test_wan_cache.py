"""Causal Wan cache loop against the masked whole-sequence oracle: global, window + sink, positions."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.errors import ConfigError, InputError
from ca2vdm_cli.models.wan import CausalWan, WanConfig
from tests.wan_reference import masked_forward

HW = (4, 4)  # latent frame: 2×2 = 4 tokens


def _tiny(**kw: object) -> CausalWan:
    torch.manual_seed(0)
    return CausalWan(WanConfig.tiny(**kw)).eval()


def _data(model: CausalWan, blocks: int, B: int = 2, seed: int = 1):
    n = model.cfg.num_frame_per_block
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(B, 16, blocks * n, *HW, generator=g)
    noisy = torch.randn(B, 16, blocks * n, *HW, generator=g)
    t = torch.rand(B, blocks * n, generator=g) * 1000  # distinct per frame
    ctx = torch.randn(B, 5, model.cfg.text_dim, generator=g)
    return clean, noisy, t, ctx


def _loop(
    model: CausalWan, clean, noisy, t, ctx, mode: str = "absolute", max_frames: int = 64
) -> list[torch.Tensor]:
    """Per block: denoise its noisy latents at their t, then write its clean latents."""
    n, T = model.cfg.num_frame_per_block, clean.shape[2]
    cache = model.new_cache(
        batch_size=clean.shape[0], max_frames=max_frames, frame_shape=HW, position_mode=mode
    )
    outs = []
    for s in range(0, T, n):
        outs.append(model.denoise(cache, noisy[:, :, s : s + n], t[:, s : s + n], ctx, s))
        model.write_cache(cache, clean[:, :, s : s + n], ctx, s)
    return outs


def _oracle(model: CausalWan, clean, noisy, t, ctx, s: int, window: int = -1, sink: int = 0) -> torch.Tensor:
    n = model.cfg.num_frame_per_block
    x = torch.cat([clean[:, :, :s], noisy[:, :, s : s + n]], dim=2)
    tt = torch.cat([torch.zeros_like(t[:, :s]), t[:, s : s + n]], dim=1)
    return masked_forward(model, x, tt, ctx, window, sink)[:, :, s : s + n]


def test_global_loop_equals_block_causal_forward() -> None:
    model = _tiny()
    data = _data(model, blocks=4)
    outs = _loop(model, *data, max_frames=12)
    for b, out in enumerate(outs):
        torch.testing.assert_close(out, _oracle(model, *data, s=3 * b), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("window", "sink", "n"), [(5, 1, 2), (7, 2, 2), (4, 2, 2), (6, 0, 3)])
def test_window_sink_loop_equals_sliding_oracle(window: int, sink: int, n: int) -> None:
    model = _tiny(local_attn_size=window, sink_size=sink, num_frame_per_block=n)
    data = _data(model, blocks=6, B=1)
    outs = _loop(model, *data)
    for b, out in enumerate(outs):
        torch.testing.assert_close(
            out, _oracle(model, *data, s=n * b, window=window, sink=sink), atol=1e-5, rtol=0
        )


def test_worked_example_visible_frames() -> None:
    """Spec §4.7 (W 4, K 1, n 2): blocks see 0 1 | …, then 0 | 3, 0 | 5, 0 | 7."""
    model = _tiny(local_attn_size=4, sink_size=1, num_frame_per_block=2)
    clean, *_, ctx = _data(model, blocks=5, B=1)
    cache = model.new_cache(batch_size=1, max_frames=0, frame_shape=HW)
    seen = []
    for s in range(0, 10, 2):
        seen.append(sorted(cache.visible_frames()))
        model.write_cache(cache, clean[:, :, s : s + 2], ctx, s)
    assert seen == [[], [0, 1], [0, 3], [0, 5], [0, 7]]


def test_causal_and_bidirectional_within_block() -> None:
    model = _tiny()
    clean, noisy, t, ctx = _data(model, blocks=3)
    changed = clean.clone()
    changed[:, :, 6:] += 1.0  # the last block's clean latents
    a, b = _loop(model, clean, noisy, t, ctx), _loop(model, changed, noisy, t, ctx)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    cache = model.new_cache(batch_size=2, max_frames=6, frame_shape=HW)
    x = noisy[:, :, :3]
    y = x.clone()
    y[:, :, 2] += 1.0
    out_x, out_y = model.denoise(cache, x, t[:, :3], ctx, 0), model.denoise(cache, y, t[:, :3], ctx, 0)
    assert not torch.allclose(out_x[:, :, 0], out_y[:, :, 0])  # frame 0 sees frame 2 of its own block


def test_per_frame_timesteps_matter() -> None:
    model = _tiny()
    _, noisy, _, ctx = _data(model, blocks=1)
    cache = model.new_cache(batch_size=2, max_frames=3, frame_shape=HW)
    x = noisy[:, :, :3]
    uniform = model.denoise(cache, x, torch.full((2, 3), 500.0), ctx, 0)
    varied = model.denoise(cache, x, torch.tensor([[500.0, 900.0, 500.0]] * 2), ctx, 0)
    torch.testing.assert_close(model.denoise(cache, x, torch.full((2,), 500.0), ctx, 0), uniform)
    assert not torch.allclose(uniform, varied)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_denoise_leaves_cache_unchanged(mode: str) -> None:
    model = _tiny(local_attn_size=5, sink_size=1, num_frame_per_block=2)
    clean, noisy, t, ctx = _data(model, blocks=4)
    cache = model.new_cache(batch_size=2, max_frames=0, frame_shape=HW, position_mode=mode)
    for s in range(0, 6, 2):
        model.write_cache(cache, clean[:, :, s : s + 2], ctx, s)
    valid = cache.num_visible * cache.tokens_per_frame
    k, v, state = cache.k[..., :valid, :].clone(), cache.v[..., :valid, :].clone(), cache.ring.written
    first = model.denoise(cache, noisy[:, :, 6:8], t[:, 6:8], ctx, 6)
    model.denoise(cache, noisy[:, :, 6:8] * 2, t[:, 6:8] / 2, ctx, 6)  # a different step in between
    assert torch.equal(cache.k[..., :valid, :], k) and torch.equal(cache.v[..., :valid, :], v)
    assert cache.ring.written == state
    assert torch.equal(model.denoise(cache, noisy[:, :, 6:8], t[:, 6:8], ctx, 6), first)


def test_relative_equals_absolute_until_roll() -> None:
    model = _tiny()
    data = _data(model, blocks=3)
    for a, r in zip(_loop(model, *data), _loop(model, *data, mode="relative"), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)
    windowed = _tiny(local_attn_size=5, sink_size=1, num_frame_per_block=2)
    data = _data(windowed, blocks=4, B=1)
    a, r = _loop(windowed, *data), _loop(windowed, *data, mode="relative")
    torch.testing.assert_close(a[:2], r[:2], atol=1e-5, rtol=0)  # frames 0–3: the past has not rolled
    assert not torch.allclose(a[3], r[3], atol=1e-4)  # after evictions the sink sits at another distance


def test_relative_without_sink_is_shift_invariant() -> None:
    """K = 0: every visible position shifts by the same amount, so RoPE's relative scores agree."""
    model = _tiny(local_attn_size=6, sink_size=0, num_frame_per_block=2)
    data = _data(model, blocks=6, B=1)
    for a, r in zip(_loop(model, *data), _loop(model, *data, mode="relative"), strict=True):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=0)


def test_rollout_past_rope_table() -> None:
    model = _tiny(num_layers=1, local_attn_size=6, sink_size=1, num_frame_per_block=3)
    ctx = torch.randn(1, 3, 64)
    x = torch.randn(1, 16, 3, 2, 2)  # one token per frame: cheap
    absolute = model.new_cache(batch_size=1, max_frames=0, frame_shape=(2, 2))
    relative = model.new_cache(batch_size=1, max_frames=0, frame_shape=(2, 2), position_mode="relative")
    for s in range(0, 1023, 3):
        for cache in (absolute, relative):
            model.write_cache(cache, x, ctx, s)
    with pytest.raises(ConfigError, match="relative"):
        model.denoise(absolute, x, torch.full((1, 3), 500.0), ctx, 1023)
    for s in range(1023, 1050, 3):
        out = model.denoise(relative, x, torch.full((1, 3), 500.0), ctx, s)
        assert torch.isfinite(out).all()
        model.write_cache(relative, out, ctx, s)
    assert relative.written == 1050 and max(relative.visible_positions()) < 6


def test_call_errors() -> None:
    model = _tiny()
    clean, _, _, ctx = _data(model, blocks=2)
    cache = model.new_cache(batch_size=2, max_frames=3, frame_shape=HW)
    with pytest.raises(InputError, match="start_frame 3"):
        model.write_cache(cache, clean[:, :, :3], ctx, 3)
    model.write_cache(cache, clean[:, :, :3], ctx, 0)
    with pytest.raises(InputError, match="max_frames >= 6"):
        model.write_cache(cache, clean[:, :, 3:], ctx, 3)
    with pytest.raises(InputError, match="multiple"):
        model.new_cache(batch_size=1, max_frames=3, frame_shape=(3, 4))


def test_context_kv_computed_once_per_tensor() -> None:
    model = _tiny()
    _, noisy, t, ctx = _data(model, blocks=1)
    cache = model.new_cache(batch_size=2, max_frames=3, frame_shape=HW)
    model.prepare_context(cache, ctx)
    k = cache.context_k
    model.denoise(cache, noisy[:, :, :3], t[:, :3], ctx, 0)
    assert cache.context_k is k
    ctx.add_(1.0)  # an in-place change is a new prompt
    model.denoise(cache, noisy[:, :, :3], t[:, :3], ctx, 0)
    assert cache.context_k is not k and cache.context_k.shape == (4, 2, 3, 16, 64)
