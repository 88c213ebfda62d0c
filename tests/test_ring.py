"""FrameRing: slots, eviction order, sinks, oversize writes, reset, and agreement with KVCache."""

from __future__ import annotations

import pytest
import torch

from ca2vdm_cli.engine.ring import FrameRing
from ca2vdm_cli.models.stdit.cache import KVCache


def test_rejects_bad_sizes() -> None:
    for cap, sink in [(0, 0), (3, 3), (3, -1)]:
        with pytest.raises(ValueError):
            FrameRing(cap, sink)


def test_no_sink_matches_kvcache_ring() -> None:
    ring = FrameRing(4)
    cache = KVCache(depth=1, batch_size=1, max_frames=4, tokens_per_frame=1, num_heads=1, head_dim=1,
                    pe_frames=0, pe_mode="none", device="cpu", dtype=torch.float32)  # fmt: skip
    for n in [1, 2, 3, 1, 5, 2]:
        ring.advance(n)
        cache.advance(n)
        assert ring.num_held == cache.num_cached
        assert ring.slot_frames() == cache.slot_frames()
        assert ring.window_positions() == cache.window_positions().tolist()
        assert ring.held_frames() == cache.frame_indices()
        assert all(ring.slot(f) == f % 4 for f in range(20))


def test_worked_example_past_ring() -> None:
    """Spec §4.7 (W 4, K 1, n 2): the past ring holds W − n = 2 frames, sink included."""
    ring = FrameRing(2, sink=1)
    seen = []
    for _ in range(5):  # context 0–1, then blocks A–D
        seen.append(ring.held_frames())
        ring.advance(2)
    assert seen == [[], [0, 1], [0, 3], [0, 5], [0, 7]]


def test_eviction_order_and_sinks_pinned() -> None:
    ring = FrameRing(5, sink=2)
    ring.advance(5)
    assert ring.held_frames() == [0, 1, 2, 3, 4]
    assert ring.evicted_by(2) == [2, 3]
    assert ring.write_plan(2) == [(0, 5, 2), (1, 6, 3)]
    ring.advance(2)
    assert ring.held_frames() == [0, 1, 4, 5, 6]
    assert ring.slot_frames() == [0, 1, 5, 6, 4]
    assert ring.window_positions() == [0, 1, 3, 4, 2]
    ring.advance(100)
    assert ring.held_frames()[:2] == [0, 1] and ring.slot_frames()[:2] == [0, 1]


def test_oversize_write_keeps_newest() -> None:
    ring = FrameRing(4, sink=1)
    plan = ring.write_plan(7)  # frames 0..6: sink 0 survives, then the newest 3
    assert [(i, f) for i, f, _ in plan] == [(0, 0), (4, 4), (5, 5), (6, 6)]
    assert len({slot for _, _, slot in plan}) == 4
    assert ring.evicted_by(7) == []
    ring.advance(7)
    assert ring.evicted_by(2) == [4, 5]
    assert [f for _, f, _ in FrameRing(3).write_plan(5)] == [2, 3, 4]


def test_reset() -> None:
    ring = FrameRing(3, sink=1)
    ring.advance(10)
    ring.reset()
    assert ring.written == 0 and ring.num_held == 0 and ring.held_frames() == []
