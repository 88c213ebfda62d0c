"""The ablation attention modes of spec §1.4: partial causality (noisy rows see the whole chunk) and full
bidirectional attention (the OS-Ext baseline trained with the same code)."""

from __future__ import annotations

import torch

from tests.conftest import caption, tiny_model
from tests.test_model import run_ar


def test_partial_mode_cache_equals_full_forward_before_eviction():
    model = tiny_model(temporal_attention="partial")
    worst, cache = run_ar(model, steps=3, max_frames=25, timesteps=(900.0, 10.0))
    assert cache.frames_written == 25
    assert worst <= 1e-5


def test_partial_mode_noisy_frames_see_later_noisy_frames_but_prefix_frames_do_not():
    model = tiny_model(temporal_attention="partial")
    B, T, P = 1, 10, 4
    x = torch.randn(B, 4, T, 8, 8)
    t = torch.zeros(B, T)
    t[:, P:] = 500
    prefix = torch.zeros(B, T)
    prefix[:, :P] = 1
    y, mask = caption(B, model.config)
    with torch.no_grad():
        a = model(x, t, y, mask, prefix_mask=prefix)
        x2 = x.clone()
        x2[:, :, T - 1] += 1.0  # the last noisy frame
        b = model(x2, t, y, mask, prefix_mask=prefix)
    assert torch.equal(a[:, :, :P], b[:, :, :P])  # clean prefix stays causal
    assert (a[:, :, P] - b[:, :, P]).abs().max() > 1e-4  # the first noisy frame sees the last one


def test_full_mode_is_bidirectional():
    model = tiny_model(temporal_attention="full")
    x = torch.randn(1, 4, 6, 8, 8)
    with torch.no_grad():
        a = model(x, torch.zeros(1))
        x2 = x.clone()
        x2[:, :, 5] += 1.0
        b = model(x2, torch.zeros(1))
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4
