"""KVCache bookkeeping: the frame counter, the cyclic temporal rows of spec §2's worked example, the ring
buffer, reset, and the memory formula (spec §3.1 / §7.4)."""

from __future__ import annotations

import torch

from ca2vdm_cli.models.stdit.cache import KVCache
from ca2vdm_cli.models.stdit.config import SamplingConfig
from ca2vdm_cli.models.stdit.denoisers import make_denoiser as make_engine
from ca2vdm_cli.models.stdit.family import sample_video
from tests.conftest import tiny_model

M, L_MAX, CHUNK = 33, 25, 8

# Spec §2 worked example: AR step -> (cached absolute frames, their TPE rows, the chunk's TPE rows)
WORKED_EXAMPLE = {
    1: (range(0, 1), [0], list(range(1, 9))),
    2: (range(0, 9), list(range(0, 9)), list(range(9, 17))),
    3: (range(0, 17), list(range(0, 17)), list(range(17, 25))),
    4: (range(0, 25), list(range(0, 25)), list(range(25, 33))),
    5: (range(8, 33), list(range(8, 33)), list(range(0, 8))),
    6: (range(16, 41), list(range(16, 33)) + list(range(0, 8)), list(range(8, 16))),
    7: (range(24, 49), list(range(24, 33)) + list(range(0, 16)), list(range(16, 24))),
    8: (range(32, 57), [32] + list(range(0, 24)), list(range(24, 32))),
    9: (range(40, 65), list(range(7, 32)), [32] + list(range(0, 7))),
    10: (range(48, 73), list(range(15, 33)) + list(range(0, 7)), list(range(7, 15))),
}


def test_counter_and_cyclic_rows_follow_the_worked_example():
    model = tiny_model(max_tpe_len=M)
    table = model.pos_embed_temporal[0]
    cache = model.new_cache(1, L_MAX)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(1, 4, 1, 8, 8))
        for step in range(1, 11):
            frames, cached_rows, chunk_rows = WORKED_EXAMPLE[step]
            assert cache.frames_written == frames.stop  # absolute index of the chunk's first frame
            assert cache.frame_indices() == list(frames)
            assert [f % M for f in cache.frame_indices()] == cached_rows
            assert sorted(cache.slot_frames()) == list(frames)  # the ring holds exactly these frames
            assert torch.equal(model._tpe(cache.frames_written, CHUNK), table[chunk_rows])
            model.write_cache(cache, torch.randn(1, 4, CHUNK, 8, 8))
    # every window is a cyclic shift of 0..M-1 once the cache is full
    rows = cached_rows + chunk_rows
    assert sorted(rows) == list(range(M))


def test_ring_buffer_never_moves_retained_frames():
    cache = KVCache(
        depth=1,
        batch_size=1,
        max_frames=5,
        tokens_per_frame=1,
        num_heads=1,
        head_dim=1,
        pe_frames=0,
        pe_mode="off",
        device="cpu",
        dtype=torch.float32,
    )
    for start, n in [(0, 3), (3, 3), (6, 2), (8, 4)]:
        values = torch.arange(start, start + n, dtype=torch.float32).view(1, 1, n, 1)
        cache.store(0, values, values)
        cache.advance(n)
        held = cache.k[0, 0, 0, : cache.num_cached, 0].tolist()
        assert [int(v) for v in held] == cache.slot_frames()
        assert sorted(cache.slot_frames()) == cache.frame_indices()
        assert [int(v) % 5 for v in held] == list(range(cache.num_cached))  # frame f lives in slot f mod 5
    assert cache.frame_indices() == [7, 8, 9, 10, 11]


def test_reset_starts_a_new_video():
    model = tiny_model()
    cache = model.new_cache(1, L_MAX)
    with torch.no_grad():
        model.write_cache(cache, torch.randn(1, 4, 9, 8, 8))
    cache.reset()
    assert cache.frames_written == 0 and cache.num_cached == 0 and not cache.has_context


def test_memory_formula_matches_the_paper_table():
    """XL/2, 256², B = 1, L_max = 25, fp16: 0.77 GiB temporal, 0.86 GiB with prev_frames_3 (poster §7.4)."""
    D, S, C = 28, 256, 1152

    def make(pe_frames: int) -> KVCache:
        return KVCache(
            depth=D,
            batch_size=1,
            max_frames=25,
            tokens_per_frame=S,
            num_heads=16,
            head_dim=72,
            pe_frames=pe_frames,
            pe_mode="prev_frames" if pe_frames else "off",
            device="meta",
            dtype=torch.float16,
        )

    assert make(0).nbytes == D * 1 * 25 * S * 2 * C * 2
    assert make(3).nbytes == D * 1 * 25 * S * 2 * C * 2 + D * 1 * 3 * S * 2 * C * 2
    assert round(make(0).nbytes / 2**30, 2) == 0.77
    assert round(make(3).nbytes / 2**30, 2) == 0.86


def test_cache_memory_does_not_depend_on_denoising_steps():
    model = tiny_model()
    sizes = []
    for steps in (2, 6):
        engine = make_engine("cache", model, 1, 9)
        pointer = engine.cache.k.data_ptr()
        config = SamplingConfig(steps=steps, chunk=4, cache_frames=9, prefix_perturb_t=0)
        seen = []
        list(
            sample_video(
                model,
                config,
                num_frames=16,
                seeds=[0],
                prefix=torch.randn(1, 4, 1, 8, 8),
                engine=engine,
                on_step=lambda *_, e=engine, s=seen: s.append(e.cache.nbytes),
            )
        )
        assert engine.cache.k.data_ptr() == pointer  # never reallocated
        assert len(set(seen)) == 1
        sizes.append(engine.cache.nbytes)
    assert sizes[0] == sizes[1]
