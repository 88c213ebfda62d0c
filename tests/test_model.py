"""The cached path against its oracles: the full causal forward before eviction, the block-sliding-window
forward after it, causality, and a read-only cache during denoising."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import caption, tiny_model

L_MAX, CHUNK = 25, 8

CONFIGS = {
    "text+pe+mask+cyclic": {},
    "no-text+no-pe+cyclic": dict(caption_channels=0, pe_mode="off", pe_frames=0, mask_channel=False),
    "text+rope": dict(tpe_mode="rope", pe_frames=2),
    "first_frame+mask": dict(pe_mode="first_frame", pe_frames=1, caption_channels=0),
    "fixed+large-cache": dict(tpe_mode="fixed", max_tpe_len=64),
    "text+pooled-caption": dict(pooled_caption=True),
}


def block_window_mask(chunk_starts: list[int], total: int, max_frames: int) -> torch.Tensor:
    """Frame i (in the chunk starting at s) sees frames j <= i with j >= s - max_frames."""
    start_of = torch.zeros(total, dtype=torch.long)
    for s in chunk_starts:
        start_of[s:] = s
    i, j = torch.arange(total)[:, None], torch.arange(total)[None]
    return (j <= i) & (j >= (start_of[:, None] - max_frames).clamp(min=0))


def full_reference(model, clean, x, t, y, mask, temporal_mask=None):
    """Training-style forward on [clean ; noisy chunk] with per-frame t; returns the chunk's outputs."""
    B, P, T = clean.shape[0], clean.shape[2], clean.shape[2] + x.shape[2]
    frame_t = torch.zeros(B, T, dtype=torch.float64)
    frame_t[:, P:] = t[:, None]
    prefix = torch.zeros(B, T)
    prefix[:, :P] = 1
    out = model(torch.cat([clean, x], 2), frame_t, y, mask, prefix_mask=prefix, temporal_mask=temporal_mask)
    return out[:, :, P:]


def run_ar(
    model, steps, max_frames, timesteps=(999.0, 500.0, 1.0, 0.0), first=1, seed=0, window_oracle=False
):
    """Write `first` frames, then per AR step compare denoise() with the reference at several t."""
    cfg = model.config
    B = 2
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    shape = (cfg.in_channels, *cfg.latent_size)
    y, mask = caption(B, cfg, dtype=dtype)
    cache = model.new_cache(B, max_frames)
    clean = torch.randn(B, shape[0], first, *shape[1:], generator=g)
    starts = [0]
    worst = 0.0
    with torch.no_grad():
        model.write_cache(cache, clean, y, mask)
        for _ in range(steps):
            x = torch.randn(B, shape[0], CHUNK, *shape[1:], generator=g)
            for tv in timesteps:
                t = torch.full((B,), tv)
                out = model.denoise(cache, x, t, y, mask)
                P = clean.shape[2]
                tm = block_window_mask(starts + [P], P + CHUNK, max_frames) if window_oracle else None
                ref = full_reference(model, clean, x, t, y, mask, tm)
                worst = max(worst, (out - ref).abs().max().item())
            new = torch.randn(B, shape[0], CHUNK, *shape[1:], generator=g)
            starts.append(clean.shape[2])
            model.write_cache(cache, new, y, mask)
            clean = torch.cat([clean, new], 2)
    return worst, cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_equals_full_causal_forward_before_eviction(name):
    model = tiny_model(**CONFIGS[name])
    worst, cache = run_ar(model, steps=3, max_frames=L_MAX)
    assert cache.frames_written == 1 + 3 * CHUNK <= L_MAX
    assert worst <= 1e-5, f"{name}: max |cached - full| = {worst}"


@pytest.mark.parametrize(
    "name", ["text+pe+mask+cyclic", "no-text+no-pe+cyclic", "text+rope", "first_frame+mask"]
)
def test_cached_equals_block_sliding_window_forward_after_eviction(name):
    model = tiny_model(**CONFIGS[name])
    worst, cache = run_ar(model, steps=6, max_frames=L_MAX, timesteps=(700.0, 3.0), window_oracle=True)
    assert cache.frames_written == 1 + 6 * CHUNK > L_MAX  # evictions happened
    assert worst <= 1e-5, f"{name}: max |cached - window oracle| = {worst}"


def test_after_eviction_plain_recompute_is_not_the_reference():
    """Teeth for the oracle above: the plain causal forward differs once frames are evicted."""
    model = tiny_model()
    worst_before, _ = run_ar(model, steps=3, max_frames=L_MAX, timesteps=(500.0,))
    worst_after, _ = run_ar(model, steps=5, max_frames=L_MAX, timesteps=(500.0,))
    assert worst_before <= 1e-5
    assert worst_after > 1e-3


def test_written_chunk_longer_than_the_cache_keeps_its_newest_frames():
    model = tiny_model()
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(1, 4, 3, 8, 8))
        model.write_cache(cache, torch.randn(1, 4, 6, 8, 8))
    assert cache.frames_written == 9
    assert cache.frame_indices() == [5, 6, 7, 8]
    assert sorted(cache.slot_frames()) == [5, 6, 7, 8]


def test_full_forward_is_causal():
    model = tiny_model()
    B, T, j = 2, 12, 7
    x = torch.randn(B, 4, T, 8, 8)
    t = torch.randint(0, 1000, (B, T)).float()
    prefix = torch.zeros(B, T)
    prefix[:, :3] = 1
    y, mask = caption(B, model.config)
    with torch.no_grad():
        a = model(x, t, y, mask, prefix_mask=prefix)
        x2 = x.clone()
        x2[:, :, j] += torch.randn_like(x2[:, :, j])
        b = model(x2, t, y, mask, prefix_mask=prefix)
    assert torch.equal(a[:, :, :j], b[:, :, :j])
    assert (a[:, :, j:] - b[:, :, j:]).abs().max() > 1e-3


def test_cached_keys_values_are_causal():
    """Perturbing frame j of a written chunk leaves the cached K|V of every earlier frame unchanged."""
    model = tiny_model()
    first, chunk = torch.randn(1, 4, 1, 8, 8), torch.randn(1, 4, 8, 8, 8)
    caches = []
    for perturb in (False, True):
        c = chunk.clone()
        if perturb:
            c[:, :, 5] += 1.0
        cache = model.new_cache(1, L_MAX)
        with torch.no_grad():
            model.write_cache(cache, first)
            model.write_cache(cache, c)
        caches.append(cache)
    a, b = caches
    # absolute frames 0..5 (the given frame + chunk frames 0..4) are unchanged in every block
    assert torch.equal(a.k[:, :, :, :6], b.k[:, :, :, :6]) and torch.equal(a.v[:, :, :, :6], b.v[:, :, :, :6])
    assert not torch.equal(a.k[:, :, :, 6:9], b.k[:, :, :, 6:9])


def test_denoising_never_writes_the_cache():
    model = tiny_model()
    y, mask = caption(2, model.config)
    cache = model.new_cache(2, L_MAX)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(2, 4, 9, 8, 8), y, mask)
        before = [t.clone() for t in (cache.k, cache.v, cache.ctx_k, cache.ctx_v)]
        written = cache.frames_written
        x = torch.randn(2, 4, CHUNK, 8, 8)
        for tv in range(999, 0, -111):
            model.denoise(cache, x, torch.full((2,), float(tv)), y, mask)
    after = (cache.k, cache.v, cache.ctx_k, cache.ctx_v)
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))
    assert cache.frames_written == written


def test_official_bug_first_frame_mode_keeps_growing_the_temporal_cache():
    """The official first_frame mode stops writing temporal K|V after the first call."""
    model = tiny_model(pe_mode="first_frame", pe_frames=1)
    cache = model.new_cache(1, L_MAX)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(1, 4, 1, 8, 8))
        before = cache.k[:, :, :, 1:9].clone()
        model.write_cache(cache, torch.randn(1, 4, 8, 8, 8))
    assert cache.frames_written == 9
    assert not torch.equal(before, cache.k[:, :, :, 1:9])


def test_output_shapes_and_dtype():
    model = tiny_model(dtype=torch.float64)
    x = torch.randn(3, 4, 5, 8, 8)
    with torch.no_grad():
        out = model(x, torch.zeros(3))
    assert out.shape == (3, 8, 5, 8, 8) and out.dtype == torch.float32


def test_bad_latent_size_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="latent size"):
        model(torch.randn(1, 4, 2, 10, 8), torch.zeros(1))


def test_fixed_positions_refuse_to_run_past_the_table():
    model = tiny_model(tpe_mode="fixed", max_tpe_len=16)
    cache = model.new_cache(1, 25)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(1, 4, 9, 8, 8))
        with pytest.raises(ValueError, match="cyclic"):
            model.denoise(cache, torch.randn(1, 4, 8, 8, 8), torch.zeros(1))
